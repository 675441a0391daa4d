"""Reading task data and candidate pools in the dialects users bring.

Inputs: JSONL, JSON, CSV, Parquet, a local dataset saved by ``datasets`` or a Hugging
Face dataset id (``hf:NAME[:SPLIT]``), read by :mod:`igds.readers`. Dialects:

* ``alpaca``   - ``instruction`` [+ ``input``] -> ``output``; LLaMA-Factory's ``system``
  (system message) and ``history`` (``[[user, assistant], ...]`` earlier turns) are kept
* ``sharegpt`` - ``conversations: [{from, value}]``, last ``gpt`` turn is the response
  (LLaMA-Factory ``function_call`` turns are assistant turns, ``observation`` turns tool turns)
* ``messages`` - ``messages: [{role, content}]``, last ``assistant`` turn is the response
  (OpenAI content-part lists and ``tool_calls`` are read as text, see :func:`_content`)
* ``prompt_completion`` - ``prompt`` -> ``completion``, strings or (TRL conversational)
  lists of messages
* ``text``     - ``text`` only: no prompt, the whole text is the response, tokenised as
  plain text (no chat template, no terminator); chosen when no other dialect fits
* ``fields``   - any record, with ``prompt_field`` / ``response_field`` or a
  ``prompt_template`` such as ``"Summarize:\\n{dialogue}"`` naming its fields

A record's own ``system`` message wins over ``DataSpec.system_prompt``, which is used
only for conversations without one; a record's ``tools`` are appended to the system
message as ``Tools:`` plus their JSON. Records are written back with their original
values and types (see :func:`igds.artifacts.json_default` for Parquet's non-JSON types).

Every problem is reported as ``FILE:LINE: field 'X': what is wrong``; with
``skip_bad`` the record goes to a rejects file with that reason instead.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .artifacts import atomic_write_jsonl, atomic_write_text, json_default
from .content import SPANS_FIELD, Span, locate, render_template, spans_from_row, spans_to_row, token_flags
from .readers import DataError, iter_records, iter_records_after

DIALECTS = ("alpaca", "sharegpt", "messages", "prompt_completion", "text", "fields")


@dataclass
class DataSpec:
    """How to turn records into (prompt, response) pairs."""

    dialect: str = "auto"
    prompt_field: str | None = None
    response_field: str | None = None
    prompt_template: str | None = None
    id_field: str = "id"
    system_prompt: str | None = None


@dataclass
class Example:
    """One (prompt, response) pair with the record it came from."""

    id: str
    messages: list[dict[str, str]]  # the conversation up to (not including) the response
    response: str
    record: dict[str, Any] = field(repr=False)
    dialect: str
    source: str
    line: int
    # message text -> the character spans of it that are the record's own (a prompt_template's fields).
    # Keyed by text, so a message that is replaced (Task.prompt_fn) loses them: other messages are the
    # record's text as a whole, system messages never are (igds.content)
    content_spans: dict[str, list[Span]] = field(default_factory=dict, repr=False)

    @property
    def prompt(self) -> str:
        return "\n\n".join(m["content"] for m in self.messages if m["role"] != "system")


# --------------------------------------------------------------------- dialects
def detect_dialect(record: dict[str, Any], spec: DataSpec) -> str | None:
    if spec.prompt_template or spec.prompt_field:
        return "fields"
    if "conversations" in record:
        return "sharegpt"
    if "messages" in record:
        return "messages"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    return None


def _text(record: dict[str, Any], key: str, src: str, line: int, allow_empty: bool = False) -> str:
    if key not in record or record[key] is None:
        raise DataError(src, line, "missing", key)
    value = record[key]
    if not isinstance(value, str):
        raise DataError(src, line, f"expected a string, got {type(value).__name__}", key)
    if not allow_empty and not value.strip():
        raise DataError(src, line, "empty or whitespace-only text", key)
    return value


# LLaMA-Factory's function_call / observation and OpenAI's tool / function / developer roles included
_ROLE = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "model": "assistant", "system": "system", "chatgpt": "assistant", "bing": "assistant",
         "developer": "system", "function_call": "assistant", "observation": "tool", "tool": "tool",
         "function": "tool", "ipython": "tool"}


def _content(turn: dict[str, Any], text_key: str, src: str, line: int, where: str) -> str:
    """A turn's text. OpenAI content-part lists are joined (text parts only, blank line between);
    ``tool_calls`` are appended as one JSON line per call: ``{"name": ..., "arguments": ...}``."""
    value = turn.get(text_key)
    if isinstance(value, list):
        parts = []
        for j, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise DataError(src, line, f"content part of type {kind!r}: igds reads text parts only",
                                f"{where}.{text_key}[{j}]")
            parts.append(part["text"])
        value = "\n\n".join(parts)
    calls = turn.get("tool_calls")
    if calls:
        if not isinstance(calls, list):
            raise DataError(src, line, f"expected a list, got {type(calls).__name__}", f"{where}.tool_calls")
        lines = []
        for j, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise DataError(src, line, "expected {function: {name, arguments}}", f"{where}.tool_calls[{j}]")
            args = fn.get("arguments")
            if isinstance(args, str):  # OpenAI sends arguments as a JSON string
                try:
                    args = json.loads(args)
                except json.JSONDecodeError:
                    pass
            lines.append(json.dumps({"name": fn["name"], "arguments": args}, ensure_ascii=False))
        value = "\n".join(([value] if isinstance(value, str) and value.strip() else []) + lines)
    return _text({f"{where}.{text_key}": value}, f"{where}.{text_key}", src, line)


def _turns(turns: Any, key: str, role_key: str, text_key: str, src: str, line: int) -> list[dict[str, str]]:
    if not isinstance(turns, list) or not turns:
        raise DataError(src, line, "expected a non-empty list of turns", key)
    msgs = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise DataError(src, line, f"expected an object, got {type(turn).__name__}", where)
        role = _ROLE.get(str(turn.get(role_key, "")).lower())
        if role is None:
            raise DataError(src, line, f"unknown role {turn.get(role_key)!r}", f"{where}.{role_key}")
        msgs.append({"role": role, "content": _content(turn, text_key, src, line, where)})
    return msgs


def _split_response(msgs: list[dict[str, str]], first: int, key: str, src: str, line: int
                    ) -> tuple[list[dict[str, str]], str]:
    """The context before the last assistant turn (at index >= ``first``) and that turn's text."""
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant" and i >= first), default=None)
    if last is None:
        raise DataError(src, line, "no assistant turn to use as the response", key)
    if not any(m["role"] == "user" for m in msgs[:last]):
        raise DataError(src, line, "no user turn before the last assistant turn", key)
    return msgs[:last], msgs[last]["content"]


def _alpaca(record: dict[str, Any], src: str, line: int, require_response: bool
            ) -> tuple[list[dict[str, str]], str]:
    instr = _text(record, "instruction", src, line)
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise DataError(src, line, f"expected a string, got {type(extra).__name__}", "input")
    history = record.get("history") or []
    if not isinstance(history, list):
        raise DataError(src, line, f"expected a list of [user, assistant] pairs, got {type(history).__name__}",
                        "history")
    messages = []
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise DataError(src, line, "expected a [user, assistant] pair", f"history[{i}]")
        for j, role in enumerate(("user", "assistant")):
            name = f"history[{i}][{j}]"
            messages.append({"role": role, "content": _text({name: pair[j]}, name, src, line)})
    messages.append({"role": "user", "content": instr + ("\n\n" + extra if extra.strip() else "")})
    return messages, _text(record, "output", src, line, allow_empty=not require_response)


def _prompt_completion(record: dict[str, Any], src: str, line: int, require_response: bool
                       ) -> tuple[list[dict[str, str]], str]:
    if not isinstance(record.get("prompt"), list):
        return ([{"role": "user", "content": _text(record, "prompt", src, line)}],
                _text(record, "completion", src, line, allow_empty=not require_response))
    # TRL conversational: prompt and completion are lists of messages; the response is the
    # completion's last assistant turn
    prompt = _turns(record["prompt"], "prompt", "role", "content", src, line)
    completion = _turns(record.get("completion"), "completion", "role", "content", src, line)
    return _split_response(prompt + completion, len(prompt), "completion", src, line)


def _fields(record: dict[str, Any], spec: DataSpec, src: str, line: int, require_response: bool
            ) -> tuple[list[dict[str, str]], str, list[Span] | None]:
    """The prompt, the response and, for a ``prompt_template``, where its fields' values are in the prompt."""
    spans = None
    if spec.prompt_template:
        names = [f for _, f, _, _ in string.Formatter().parse(spec.prompt_template) if f]
        values = {n: _text(record, n, src, line) if not isinstance(record.get(n), (int, float)) else record[n]
                  for n in names}
        prompt, spans = render_template(spec.prompt_template, values)
    elif spec.prompt_field:
        prompt = _text(record, spec.prompt_field, src, line)
    else:
        raise DataError(src, line, "dialect 'fields' needs prompt_field or prompt_template")
    if not spec.response_field:
        raise DataError(src, line, "dialect 'fields' needs response_field")
    value = record.get(spec.response_field)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # the text trained on; the record keeps the number
    response = _text({spec.response_field: value}, spec.response_field, src, line, allow_empty=not require_response)
    return [{"role": "user", "content": prompt}], response, spans


def _system(record: dict[str, Any], messages: list[dict[str, str]], spec: DataSpec, src: str, line: int
            ) -> list[dict[str, str]]:
    """The record's ``system`` (else ``spec.system_prompt``) first, with the record's ``tools`` appended."""
    own = record.get("system")
    if own is not None and not isinstance(own, str):
        raise DataError(src, line, f"expected a string, got {type(own).__name__}", "system")
    tools = record.get("tools")
    if tools is not None and not isinstance(tools, (str, list, dict)):
        raise DataError(src, line, f"expected a string or a list, got {type(tools).__name__}", "tools")
    has_system = bool(messages) and messages[0]["role"] == "system"
    system = messages[0]["content"] if has_system else (own if own and own.strip() else spec.system_prompt)
    if tools:
        text = tools if isinstance(tools, str) else json.dumps(tools, ensure_ascii=False)
        system = (system + "\n\n" if system else "") + "Tools:\n" + text
    rest = messages[1:] if has_system else messages
    return ([{"role": "system", "content": system}] if system else []) + rest


def parse_record(record: dict[str, Any], spec: DataSpec, src: str, line: int, dialect: str | None = None,
                 require_response: bool = True) -> Example:
    """Turn one record into an :class:`Example` (raises :class:`DataError`).

    The record is kept as read (numbers stay numbers); only the Example's text is derived."""
    if dialect is None and spec.dialect == "auto":
        # plain text is the fallback, not a detected dialect: callers of detect_dialect
        # (train-sae) read text rows their own way
        dialect = detect_dialect(record, spec) or ("text" if "text" in record else None)
    dialect = dialect or (spec.dialect if spec.dialect != "auto" else None)
    if dialect is None:
        raise DataError(src, line, f"unknown dialect: record has fields {sorted(record)}; expected one of "
                        f"{DIALECTS} or set prompt_field/response_field/prompt_template")
    if dialect not in DIALECTS:
        raise DataError(src, line, f"unknown dialect {dialect!r}; expected one of {DIALECTS}")
    spans = None
    if dialect == "alpaca":
        messages, response = _alpaca(record, src, line, require_response)
    elif dialect == "sharegpt":
        msgs = _turns(record.get("conversations"), "conversations", "from", "value", src, line)
        messages, response = _split_response(msgs, 0, "conversations", src, line)
    elif dialect == "messages":
        msgs = _turns(record.get("messages"), "messages", "role", "content", src, line)
        messages, response = _split_response(msgs, 0, "messages", src, line)
    elif dialect == "prompt_completion":
        messages, response = _prompt_completion(record, src, line, require_response)
    elif dialect == "text":
        messages, response = [], _text(record, "text", src, line)
    else:
        messages, response, spans = _fields(record, spec, src, line, require_response)
    if dialect != "text":
        messages = _system(record, messages, spec, src, line)
    # the templated user prompt's fields; a messages row igds wrote says where they are itself
    content_spans = _read_spans(record, msgs, src, line) if dialect == "messages" else \
        {} if spans is None else {messages[-1]["content"]: spans}
    raw_id = record.get(spec.id_field)
    if raw_id is not None and not isinstance(raw_id, (str, int)):
        raise DataError(src, line, f"expected a string or integer id, got {type(raw_id).__name__}", spec.id_field)
    ex_id = str(raw_id) if raw_id is not None else f"{Path(src).stem}-{line}"
    return Example(id=ex_id, messages=messages, response=response, record=record,
                   dialect=dialect, source=src, line=line, content_spans=content_spans)


@dataclass
class Rejects:
    """Where bad records go under ``skip_bad`` (kept in memory until written)."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, err: DataError, record: Any = None) -> None:
        self.rows.append({"source": err.source, "line": err.line, "field": err.field_name,
                          "reason": err.reason, "record": record})


def iter_examples(source: str | Path, spec: DataSpec | None = None, *, split: str | None = None,
                  skip_bad: bool = False, rejects: Rejects | None = None,
                  require_response: bool = True) -> Iterator[Example]:
    """Stream examples; duplicate ids and bad records raise unless ``skip_bad``."""
    spec = spec or DataSpec()
    src = str(source)
    seen: dict[str, int] = {}
    dialect: str | None = None if spec.dialect == "auto" else spec.dialect
    records = iter_records(source, split)
    while True:
        try:
            line, record = next(records)
        except StopIteration:
            return
        except DataError as err:
            if not skip_bad or err.line is None:
                raise
            if rejects is not None:
                rejects.add(err)
            # a JSONL reader can go on after a bad line; rebuild the iterator past it
            records = iter_records_after(source, split, err.line)
            continue
        try:
            ex = parse_record(record, spec, src, line, dialect, require_response)
            if dialect is None:
                dialect = ex.dialect  # one dialect per file: the first record decides
            if ex.id in seen:
                raise DataError(src, line, f"duplicate id {ex.id!r} (first seen on line {seen[ex.id]})", spec.id_field)
            seen[ex.id] = line
        except DataError as err:
            if not skip_bad:
                raise
            if rejects is not None:
                rejects.add(err, record)
            continue
        yield ex


def load_examples(source: str | Path, spec: DataSpec | None = None, *, limit: int | None = None,
                  **kw: Any) -> list[Example]:
    out = []
    for ex in iter_examples(source, spec, **kw):
        out.append(ex)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataError(str(source), None, "no usable examples")
    return out


def write_records(path: str | Path, examples: Iterable[Example], extra: dict[str, dict[str, Any]] | None = None) -> int:
    """Write examples back as their original records (plus per-id extra fields), atomically.

    Values keep their types; Parquet's non-JSON types follow :func:`igds.artifacts.json_default`."""

    extra = extra or {}
    return atomic_write_jsonl(path, ({**ex.record, **extra.get(ex.id, {})} for ex in examples))


def _as_messages(ex: Example) -> dict[str, Any]:
    if ex.dialect == "text":  # a text row has no conversation to write
        return {"text": ex.response}
    row: dict[str, Any] = {"messages": [*ex.messages, {"role": "assistant", "content": ex.response}]}
    spans = spans_to_row(ex.messages, ex.content_spans)  # template words stay non-content when read back
    return {**row, SPANS_FIELD: spans} if spans else row


def _read_spans(record: dict[str, Any], messages: list[dict[str, str]], src: str, line: int) -> dict[str, list[Span]]:
    try:
        return spans_from_row(record.get(SPANS_FIELD), messages)
    except ValueError as e:
        raise DataError(src, line, str(e), SPANS_FIELD) from None


def write_messages(path: str | Path, examples: Iterable[Example], extra: dict[str, dict[str, Any]] | None = None
                   ) -> bool:
    """Write examples in the ``messages`` dialect (the response as the last assistant turn,
    plus per-id extra fields), atomically and only when the content changes, so that caches
    keyed on the file stay valid. Returns whether the file was (re)written."""
    extra = extra or {}
    path = Path(path)
    text = "".join(json.dumps({"id": ex.id, **extra.get(ex.id, {}), **_as_messages(ex)}, ensure_ascii=False,
                              default=json_default) + "\n" for ex in examples)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    atomic_write_text(path, text)
    return True


# --------------------------------------------------------------------- tokens
@dataclass
class TokenizedExample:
    ids: list[int]
    prompt_len: int  # tokens before the response starts
    truncated: bool
    # per token: the record's text (question fields, response), not system prompt, template or special
    # tokens (igds.content); None when the chat template rewrote a message so that it cannot be found
    content: list[bool] | None = None


def prompt_text(tokenizer: Any, messages: list[dict[str, str]], use_chat_template: bool = True) -> str:
    """The text the model sees before its answer (chat template when it has one)."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages) + "\n"


_SENTINEL = "\x00igds-response\x00"


def response_terminator(tokenizer: Any, use_chat_template: bool = True) -> str:
    """The text that ends an assistant turn, as the chat template writes it.

    A conversation is rendered with a sentinel answer; the first non-blank line after
    it is the terminator (ChatML ``<|im_end|>``, Gemma ``<end_of_turn>``, Llama-3
    ``<|eot_id|>``, Llama-2 ``</s>``); the newline between turns is not part of it.
    Without a chat template, or when the template writes nothing after the answer,
    it is ``eos_token``."""
    eos = tokenizer.eos_token or ""
    if not (use_chat_template and getattr(tokenizer, "chat_template", None)):
        return eos
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": _SENTINEL}], tokenize=False)
    except Exception:  # a template that cannot render a plain exchange: its prompts fail loudly elsewhere
        return eos
    tail = text.split(_SENTINEL, 1)[1] if _SENTINEL in text else ""
    return next((line.strip() for line in tail.splitlines() if line.strip()), eos)


def _added_prefix(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before any text (a BOS, usually none)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    n = len(plain)
    starts = [i for i in range(len(full) - n + 1) if full[i:i + n] == plain]
    return list(full[:starts[0]]) if starts else []


def tokenize_example(tokenizer: Any, ex: Example, max_length: int = 1024, use_chat_template: bool = True,
                     with_response: bool = True) -> TokenizedExample:
    """Prompt and response token ids, joined at a known boundary.

    With a chat template the template decides the special tokens: the tokenizer's own
    BOS is added only when the rendered prompt does not already start with it (no
    double BOS), and the response ends with the template's turn terminator
    (:func:`response_terminator`). Over-long examples are truncated from the end to
    ``max_length`` tokens while tokenising and flagged, so that callers can count them
    (documented behaviour, never silent).

    ``content`` marks the tokens of the record's own text (:mod:`igds.content`: offset
    mapping on fast tokenizers, prefix alignment on slow ones); the ids do not depend on it."""
    if ex.dialect == "text":  # plain text: the tokenizer's own special tokens, no template, no terminator
        ids, content = _encode(tokenizer, ex.response, [(0, len(ex.response))], True, max_length + 1)
        return TokenizedExample(ids=ids[:max_length], prompt_len=0, truncated=len(ids) > max_length,
                                content=content[:max_length])
    templated = use_chat_template and bool(getattr(tokenizer, "chat_template", None))
    text = prompt_text(tokenizer, ex.messages, use_chat_template)
    spans = locate(text, ex.messages, ex.content_spans)
    # one token past the limit tells a truncated example from one that fits exactly
    p, content = _encode(tokenizer, text, spans or [], not templated, max_length + 1)
    if templated:
        prefix = _added_prefix(tokenizer)
        if prefix and p[:len(prefix)] != prefix:
            p = (prefix + p)[:max_length + 1]
            content = ([False] * len(prefix) + content)[:max_length + 1]
    ids = list(p)
    if with_response and len(ids) <= max_length:
        reply = ex.response + response_terminator(tokenizer, use_chat_template)
        more, more_content = _encode(tokenizer, reply, [(0, len(ex.response))], False, max_length + 1 - len(ids))
        ids += more
        content += more_content
    truncated = len(ids) > max_length
    return TokenizedExample(ids=ids[:max_length], prompt_len=min(len(p), max_length), truncated=truncated,
                            content=content[:max_length] if spans is not None else None)


def _encode(tokenizer: Any, text: str, spans: list[Span], add_special_tokens: bool, max_length: int
            ) -> tuple[list[int], list[bool]]:
    """``text``'s token ids (truncated to ``max_length``) and which of them are content."""
    fast = bool(getattr(tokenizer, "is_fast", False))
    enc = tokenizer(text, add_special_tokens=add_special_tokens, truncation=True, max_length=max_length,
                    return_offsets_mapping=fast)
    ids = list(enc["input_ids"])
    return ids, token_flags(tokenizer, text, spans, ids, enc["offset_mapping"] if fast else None)
