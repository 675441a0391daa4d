"""``loss``: mean cross-entropy of the response tokens (and the EOS that ends them) given
the prompt under the base model, chat template applied as in fine-tuning.

Option ``keep="high"`` (default) ranks hard, high-loss examples first, ``keep="low"``
easy ones (score = -loss). Column ``loss`` keeps the raw value. ``max_length`` is the
context's. Rows whose loss cannot be computed (the response was truncated away) get a
NaN score, which selection puts last. ``n_tokens`` is the number of response tokens
scored.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from ..data import Example, TokenizedExample, tokenize_example
from ..evaluate import token_losses
from ..model import LoadedModel
from ..selection import make_score_table
from .base import SelectionContext, Selector, pool_ids, register


def response_counts(tokenized: Sequence[TokenizedExample]) -> np.ndarray:
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
    return make_score_table(pool_ids(examples), scores, response_counts(tokenized), extra={"loss": losses},
                            meta=meta)


@register("loss")
class LossSelector(Selector):
    """Loss baseline. Options: ``keep`` (high | low), ``max_tokens``, ``max_batch``."""

    needs = ("model",)

    def score(self, pool: Sequence[Example], ctx: SelectionContext) -> pa.Table:
        o = self.options(ctx, keep="high", max_tokens=8192, max_batch=16)
        return loss_scores(self.model(ctx), pool, o["keep"], ctx.max_length, ctx.use_chat_template, o["max_tokens"],
                           o["max_batch"], ctx.progress)
