"""The paper's baselines, each as a score table of the same shape as IGDS's.

Every function returns :func:`igds.selection.make_score_table` output (``index``,
``id``, ``score``, ``n_tokens`` in pool order, plus method-specific float columns and
an ``igds`` metadata blob); a higher score is selected first, so any ratio or budget
is taken from one table. Full data is simply ratio 1.0. Choices that are ours:

* ``random_scores``: i.i.d. uniform scores from ``numpy.random.default_rng(seed)``,
  so the top-k of the table is a uniform random subset.
* ``loss_scores``: mean cross-entropy of the response tokens (and the EOS that ends
  them) given the prompt under the base model, chat template applied as in
  fine-tuning. ``keep="high"`` (default) ranks hard, high-loss examples first,
  ``keep="low"`` easy ones (score = -loss). Column ``loss`` keeps the raw value.
* ``ifd_scores`` (Cherry LLM): ``IFD = loss(A | Q) / loss(A)``. ``loss(A)`` scores the
  same response tokens with no prompt: the tokenizer's own special prefix (BOS, if it
  adds one) and then the response, as the reference code does, so without a BOS the
  first response token has no context and is not scored. Reference practice drops
  ``IFD > 1`` (the instruction does not help); here such rows get ``score = -IFD``,
  which is below every kept row (kept scores are in ``(0, 1]``), so they are selected
  only after all kept rows, least-bad first. ``drop_above=None`` keeps raw IFD.
  Columns ``ifd``, ``loss_cond``, ``loss_uncond``.
* ``zip_scores`` (Entropy Law): see :func:`zip_order`. Score = ``n - pick rank``, so the
  top-k of the table is exactly ZIP's first k picks.
* ``longest_scores``: response length in tokens (with a tokenizer) or characters.

Rows whose loss cannot be computed (the response was truncated away) get a NaN
score, which selection puts last. ``n_tokens`` is the number of response tokens scored
(loss, IFD, longest with a tokenizer) and 0 for the model-free Random and ZIP.
"""

from __future__ import annotations

import math
import sys
import zlib
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from .data import Example, TokenizedExample, tokenize_example
from .evaluate import token_losses
from .model import LoadedModel
from .selection import budget_for, make_score_table

ZIP_LEVEL = 9
ZIP_SEPARATOR = b"\n"  # every text enters the concatenation as ``text + "\n"``


def _ids(pool: Sequence[Any]) -> list[str]:
    return [e.id if isinstance(e, Example) else str(i) for i, e in enumerate(pool)]


# ====================================================================== random
def random_scores(pool: Sequence[Any] | int, seed: int = 0) -> pa.Table:
    """Uniform random scores for a pool (examples, texts, or just its size ``n``)."""
    ids = [str(i) for i in range(pool)] if isinstance(pool, int) else _ids(pool)
    scores = np.random.default_rng(seed).random(len(ids))
    return make_score_table(ids, scores, np.zeros(len(ids), dtype=np.int64), meta={"method": "random", "seed": seed})


# ====================================================================== loss / IFD
def _response_counts(tokenized: Sequence[TokenizedExample]) -> np.ndarray:
    """Targets :func:`igds.losses.target_mask` counts: positions ``[max(prompt_len - 1, 0), len - 1)``."""
    return np.array([max(len(t.ids) - 1 - max(t.prompt_len - 1, 0), 0) for t in tokenized], dtype=np.int64)


def loss_scores(lm: LoadedModel, examples: Sequence[Example], keep: str = "high", max_length: int = 1024,
                use_chat_template: bool = True, max_tokens: int = 8192, max_batch: int = 16,
                progress: bool = True) -> pa.Table:
    """Loss baseline: mean response-token CE under the base model; ``keep`` high (hard) or low."""
    if keep not in ("high", "low"):
        raise ValueError(f"keep must be 'high' or 'low', got {keep!r}")
    tokenized = [tokenize_example(lm.tokenizer, ex, max_length, use_chat_template) for ex in examples]
    losses = token_losses(lm, tokenized, max_tokens, max_batch, progress, desc="loss baseline")
    scores = losses if keep == "high" else -losses
    meta = {"method": "loss", "keep": keep, "model": lm.name, "max_length": max_length,
            "n_truncated": sum(t.truncated for t in tokenized), "n_nan": int(np.isnan(losses).sum())}
    return make_score_table(_ids(examples), scores, _response_counts(tokenized), extra={"loss": losses}, meta=meta)


def _special_prefix(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text (BOS for Llama-style ones, else none)."""
    with_sp = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    for k in range(len(with_sp) - len(plain) + 1):
        if with_sp[k:k + len(plain)] == plain:
            return list(with_sp[:k])
    return []


def answer_only(tokenizer: Any, ex: Example, max_length: int = 1024) -> TokenizedExample:
    """The response alone (special prefix + response + EOS), for IFD's ``loss(A)``."""
    prefix = _special_prefix(tokenizer)
    resp = tokenizer(ex.response + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
    ids = prefix + list(resp)
    return TokenizedExample(ids=ids[:max_length], prompt_len=min(len(prefix), max_length),
                            truncated=len(ids) > max_length)


def ifd_scores(lm: LoadedModel, examples: Sequence[Example], max_length: int = 1024, use_chat_template: bool = True,
               drop_above: float | None = 1.0, max_tokens: int = 8192, max_batch: int = 16,
               progress: bool = True) -> pa.Table:
    """IFD baseline (Cherry LLM): ``loss(A|Q) / loss(A)``, highest first, ``IFD > drop_above`` last."""
    tok = lm.tokenizer
    cond_t = [tokenize_example(tok, ex, max_length, use_chat_template) for ex in examples]
    alone_t = [answer_only(tok, ex, max_length) for ex in examples]
    cond = token_losses(lm, cond_t, max_tokens, max_batch, progress, desc="IFD: loss(A|Q)")
    alone = token_losses(lm, alone_t, max_tokens, max_batch, progress, desc="IFD: loss(A)")
    with np.errstate(divide="ignore", invalid="ignore"):
        ifd = np.where(alone > 0, cond / alone, np.nan)
    dropped = np.zeros(len(ifd), dtype=bool) if drop_above is None else np.nan_to_num(ifd, nan=-1.0) > drop_above
    scores = np.where(dropped, -ifd, ifd)
    meta = {"method": "ifd", "model": lm.name, "drop_above": drop_above, "n_dropped": int(dropped.sum()),
            "n_nan": int(np.isnan(ifd).sum()), "max_length": max_length,
            "n_truncated": sum(t.truncated for t in cond_t),
            "dropped_rule": "IFD > drop_above scored -IFD: ranked after every kept row"}
    return make_score_table(_ids(examples), scores, _response_counts(cond_t),
                            extra={"ifd": ifd, "loss_cond": cond, "loss_uncond": alone}, meta=meta)


# ====================================================================== ZIP
def example_text(item: Example | str | bytes) -> bytes:
    """What ZIP compresses: the prompt and the response of an example (or a text as is)."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, Example):
        return (item.prompt + "\n" + item.response).encode("utf-8")
    return str(item).encode("utf-8")


def compression_ratio(data: bytes) -> float:
    """``len(data) / len(zlib.compress(data, 9))``: higher = more redundant."""
    return len(data) / len(zlib.compress(data, ZIP_LEVEL))


def zip_stage_sizes(n: int, k1: int = 10000, k2: int = 200, k3: int = 100, scale: bool = True
                    ) -> tuple[int, int, int]:
    """Effective (k1, k2, k3) for a pool of ``n``.

    ``scale`` (ours) shrinks the reference sizes for pools far smaller than the
    reference's (~300k): k2 = min(k2, max(16, n/100)), k3 = min(k3, max(1, k2/2)),
    k1 = min(k1, max(4 k2, n/30)); the cost of ZIP is about ``n * (k1 / k3 + k2)``
    compressions of one text."""
    if min(k1, k2, k3) < 1:
        raise ValueError(f"k1, k2, k3 must be >= 1, got {(k1, k2, k3)}")
    if scale:
        k2 = min(k2, max(16, math.ceil(n / 100)))
        k3 = min(k3, max(1, k2 // 2))
        k1 = min(k1, max(4 * k2, math.ceil(n / 30)))
    k1 = max(1, min(k1, n))
    k2 = min(k2, k1)
    k3 = min(k3, k2)
    return k1, k2, k3


class _Stream:
    """A running level-9 deflate of a concatenation; sizes ``concat + x`` without redoing it.

    ``zlib.compressobj.copy`` clones the compressor after the concatenation, so each
    candidate costs one compression of ``x`` plus a flush, and the size equals
    ``len(zlib.compress(concat + x, 9))`` (checked in the tests)."""

    def __init__(self) -> None:
        self.comp = zlib.compressobj(ZIP_LEVEL)
        self.n_in = 0
        self.n_out = 0

    def ratio_with(self, x: bytes) -> float:
        c = self.comp.copy()
        out = self.n_out + len(c.compress(x)) + len(c.flush())
        return (self.n_in + len(x)) / out

    def add(self, x: bytes) -> None:
        self.n_out += len(self.comp.compress(x))
        self.n_in += len(x)


def zip_order(items: Sequence[Example | str | bytes], k1: int = 10000, k2: int = 200, k3: int = 100,
              budget: int | None = None, scale: bool = True, progress: bool = False) -> list[int]:
    """ZIP's greedy pick order (indices into ``items``), the first ``budget`` (all by default).

    Each round (reference: Yin et al. 2024, USTC-StarTeam/ZIP):
    1. take the ``k1`` remaining items with the lowest state (initially each item's own
       compression ratio);
    2. set their state to the ratio of ``selected + item`` and keep the ``k2`` lowest;
    3. from those, add ``k3`` one by one, each time the one that keeps the ratio of the
       round's own picks lowest; append them to the selection.
    Ties go to the lower index. Deviation (ours): the reference retires the ``k2 - k3``
    candidates that step 3 did not pick; here they stay eligible, because a score table
    must rank the whole pool."""
    data = [example_text(x) + ZIP_SEPARATOR for x in items]
    n = len(data)
    budget = n if budget is None else int(budget)
    if not 0 <= budget <= n:
        raise ValueError(f"budget must be in 0..{n}, got {budget}")
    k1, k2, k3 = zip_stage_sizes(n, k1, k2, k3, scale)
    state = np.array([compression_ratio(x) for x in data], dtype=np.float64)
    remaining = np.ones(n, dtype=bool)
    selected = _Stream()
    order: list[int] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=budget, desc="ZIP", unit="ex", disable=not progress, leave=False, file=sys.stderr)
    try:
        while len(order) < budget:
            left = np.flatnonzero(remaining)
            cand1 = left[np.lexsort((left, state[left]))[:k1]]
            for i in cand1:
                state[i] = selected.ratio_with(data[i])
            cand2 = list(cand1[np.lexsort((cand1, state[cand1]))[:k2]])
            local = _Stream()
            for _ in range(min(k3, budget - len(order), len(cand2))):
                best = min(cand2, key=lambda i: (local.ratio_with(data[i]), i))
                cand2.remove(best)
                local.add(data[best])
                selected.add(data[best])
                remaining[best] = False
                order.append(int(best))
                bar.update(1)
    finally:
        bar.close()
    return order


def zip_scores(items: Sequence[Example | str | bytes], k1: int = 10000, k2: int = 200, k3: int = 100,
               ratio: float | None = None, budget: int | None = None, scale: bool = True,
               progress: bool = True) -> pa.Table:
    """ZIP baseline as a score table: score = ``n - pick rank``.

    With ``ratio`` or ``budget`` the greedy stops there (a large saving); the rows it did
    not pick follow, ordered by their last ZIP state (lowest compression ratio first)."""
    n = len(items)
    if ratio is not None and budget is not None:
        raise ValueError("give ratio or budget, not both")
    if ratio is not None:
        budget = budget_for(n, ratio=ratio)
    order = zip_order(items, k1, k2, k3, budget, scale, progress)
    if len(order) < n:
        picked = set(order)
        rest = [i for i in range(n) if i not in picked]
        own = {i: compression_ratio(example_text(items[i]) + ZIP_SEPARATOR) for i in rest}
        order += sorted(rest, key=lambda i: (own[i], i))
    scores = np.empty(n, dtype=np.float64)
    scores[order] = np.arange(n, 0, -1, dtype=np.float64)
    e1, e2, e3 = zip_stage_sizes(n, k1, k2, k3, scale) if n else (0, 0, 0)
    meta = {"method": "zip", "k1": e1, "k2": e2, "k3": e3, "requested": [k1, k2, k3], "scale": scale,
            "greedy_budget": budget if budget is not None else n, "level": ZIP_LEVEL}
    return make_score_table(_ids(items), scores, np.zeros(n, dtype=np.int64), meta=meta)


# ====================================================================== longest
def longest_scores(examples: Sequence[Example], tokenizer: Any = None, unit: str = "tokens") -> pa.Table:
    """Longest-response baseline: response length in ``unit`` (tokens needs ``tokenizer``; or chars)."""
    if unit not in ("tokens", "chars"):
        raise ValueError(f"unit must be 'tokens' or 'chars', got {unit!r}")
    if unit == "tokens" and tokenizer is None:
        raise ValueError("unit='tokens' needs a tokenizer (or use unit='chars')")
    texts = [ex.response for ex in examples]
    n_tok = (np.array([len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]], dtype=np.int64)
             if tokenizer is not None and texts else np.zeros(len(texts), dtype=np.int64))
    scores = n_tok.astype(np.float64) if unit == "tokens" else np.array([len(t) for t in texts], dtype=np.float64)
    return make_score_table(_ids(examples), scores, n_tok, meta={"method": "longest", "unit": unit})
