"""``ifd`` (Cherry LLM): ``IFD = loss(A | Q) / loss(A)``.

``loss(A)`` scores the same response tokens with no prompt: the tokenizer's own special
prefix (BOS, if it adds one) and then the response, as the reference code does, so
without a BOS the first response token has no context and is not scored. Reference
practice drops ``IFD > 1`` (the instruction does not help); here such rows get
``score = -IFD``, which is below every kept row (kept scores are in ``(0, 1]``), so they
are selected only after all kept rows, least-bad first. Option ``drop_above=None``
keeps raw IFD. Columns ``ifd``, ``loss_cond``, ``loss_uncond``; NaN rows go last;
``n_tokens`` is the number of response tokens scored.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ..data import Example, TokenizedExample, tokenize_example
from ..evaluate import token_losses
from ..model import LoadedModel
from ..selection import make_score_table
from .base import SelectionContext, Selector, pool_ids, register
from .loss import response_counts


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
    return make_score_table(pool_ids(examples), scores, response_counts(cond_t),
                            extra={"ifd": ifd, "loss_cond": cond, "loss_uncond": alone}, meta=meta)


@register("ifd")
class IFDSelector(Selector):
    """IFD baseline. Options: ``drop_above`` (float or None), ``max_tokens``, ``max_batch``."""

    needs = ("model",)

    def score(self, pool: Sequence[Example], ctx: SelectionContext) -> pa.Table:
        o = self.options(ctx, drop_above=1.0, max_tokens=8192, max_batch=16)
        return ifd_scores(self.model(ctx), pool, ctx.max_length, ctx.use_chat_template, o["drop_above"],
                          o["max_tokens"], o["max_batch"], ctx.progress)
