"""Which tokens are content: the record's own text, not the scaffolding around it.

``positions: content`` (:func:`igds.activations.count_mask`) counts the tokens of the
question text and the response and drops the rest: the system prompt, the chat
template's role markers and turn tokens, and the fixed words a task's
``prompt_template`` adds around its fields. Template words are the same in every row,
so a feature that fires on them adds a constant per row and a score that ranks by
inverse length (method audit §3.1-3.2).

The record's text is followed as character spans:

* :func:`render_template` renders a ``prompt_template`` field by field and returns
  where each substituted value landed in the prompt;
* :func:`locate` finds each message in the chat template's output, in order, and maps
  that message's spans into the rendered prompt (system messages are never content);
* :func:`token_flags` maps character spans to tokens. A token is content when any of
  its characters lies in a span (a token that joins a template's space with the
  question's first word carries the word) and it is not a special token (never
  content). A fast tokenizer gives each token's characters (its offset mapping, from
  the same call that gives the ids); a slow one has none, so the text is tokenised up
  to each span boundary and aligned with the full tokenisation (the longest common
  prefix of the two says which tokens end before the boundary).
"""

from __future__ import annotations

import string
from typing import Any, Mapping, Sequence

Span = tuple[int, int]  # [start, end) character offsets


def render_template(template: str, values: Mapping[str, Any]) -> tuple[str, list[Span]]:
    """``template.format(**values)`` and the spans the substituted values occupy in it."""
    fmt = string.Formatter()
    parts: list[str] = []
    spans: list[Span] = []
    at = 0
    for literal, name, spec, conversion in fmt.parse(template):
        parts.append(literal)
        at += len(literal)
        if name is None:
            continue
        obj, _ = fmt.get_field(name, (), values)
        text = fmt.format_field(fmt.convert_field(obj, conversion), fmt.vformat(spec or "", (), values))
        parts.append(text)
        spans.append((at, at + len(text)))
        at += len(text)
    return "".join(parts), spans


def locate(text: str, messages: Sequence[Mapping[str, str]], own: Mapping[str, Sequence[Span]]) -> list[Span] | None:
    """The content spans of ``messages`` in their rendering ``text``.

    ``own`` maps a message's text to its spans that are the record's text (a templated
    prompt); any other non-system message is content as a whole. Messages are
    found in order; a template that trims a message's whitespace (Llama-3) is allowed for.
    None when a message cannot be found (a template that rewrites the text)."""
    out: list[Span] = []
    cursor = 0
    for m in messages:
        content = m["content"]
        at, base, lo, hi = text.find(content, cursor), 0, 0, len(content)
        if at < 0:
            core = content.strip()
            at = text.find(core, cursor) if core else -1
            lo = len(content) - len(content.lstrip())
            hi = lo + len(core)
        if at < 0:
            if m["role"] == "system":  # never content: where it went does not matter
                continue
            return None
        base = at - lo  # position p of the message is at base + p in the text
        cursor = base + hi
        if m["role"] == "system":
            continue
        for s, e in own.get(content, [(0, len(content))]):
            s, e = max(s, lo), min(e, hi)
            if s < e:
                out.append((base + s, base + e))
    return out


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _flags_by_prefixes(tokenizer: Any, text: str, spans: Sequence[Span], ids: Sequence[int]) -> list[bool]:
    """Slow tokenizers: flags aligned with ``ids`` by tokenising prefixes of ``text``."""
    base = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    # tokens the call added before the text (a BOS): the smallest shift that lines the text's tokens up
    lead = next((k for k in range(len(ids) + 1) if list(ids[k:]) == base[:len(ids) - k]), 0)

    def cut(b: int) -> tuple[int, bool]:  # (tokens that end by b, whether the next one straddles b)
        if b >= len(text):
            return len(base), False
        pre = list(tokenizer(text[:b], add_special_tokens=False)["input_ids"])
        k = _common_prefix(pre, base)
        return k, k < len(pre)

    flags = [False] * len(base)
    for s, e in spans:
        first, _ = cut(s) if s > 0 else (0, False)
        last, straddles = cut(e)
        for t in range(first, min(len(base), last + straddles)):
            flags[t] = True
    return ([False] * lead + flags)[:len(ids)]


def token_flags(tokenizer: Any, text: str, spans: Sequence[Span], ids: Sequence[int],
                offsets: Sequence[Sequence[int]] | None) -> list[bool]:
    """Per token of ``ids`` (``tokenizer(text)``'s ids, maybe truncated), whether it is content.

    ``offsets`` is that call's offset mapping (fast tokenizers), or None (slow ones)."""
    if offsets is not None:
        flags = [any(s < e_t and s_t < e for s, e in spans) for s_t, e_t in offsets]
    else:
        flags = _flags_by_prefixes(tokenizer, text, spans, ids)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    return [f and t not in special for f, t in zip(flags, ids)]


# ---------------------------------------------------------------- spans in a messages file
SPANS_FIELD = "igds_content_spans"  # messages rows igds writes: where a templated prompt's own text is


def spans_to_row(messages: Sequence[Mapping[str, str]], spans: Mapping[str, Sequence[Span]]) -> list[Any]:
    """``[[message index, [[start, end], ...]], ...]`` for the messages that have content spans."""
    return [[i, [list(s) for s in spans[m["content"]]]] for i, m in enumerate(messages) if m["content"] in spans]


def spans_from_row(value: Any, messages: Sequence[Mapping[str, str]]) -> dict[str, list[Span]]:
    """:func:`spans_to_row`'s value back as message text -> spans; ValueError when malformed."""
    out: dict[str, list[Span]] = {}
    if value is None:
        return out
    try:
        for index, spans in value:
            text = messages[index]["content"]
            pairs = [(int(a), int(b)) for a, b in spans]
            if any(not 0 <= a <= b <= len(text) for a, b in pairs):
                raise ValueError("a span lies outside its message")
            out[text] = pairs
    except (TypeError, ValueError, IndexError, KeyError) as e:
        raise ValueError(f"expected [[message index, [[start, end], ...]], ...] ({e})") from None
    return out
