"""``longest``: the response length, in tokens of the context model's tokenizer when there
is a model, in characters otherwise.

One definition for every entrance: with a model the score and ``n_tokens`` are the
response's token count (no special tokens); without one the score is its character
count and ``n_tokens`` is 0. The unit is recorded in the table's metadata."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ..data import Example
from ..selection import make_score_table
from .base import SelectionContext, Selector, pool_ids, register


def longest_scores(examples: Sequence[Example], tokenizer: Any = None) -> pa.Table:
    """Response length: tokens with ``tokenizer``, characters without."""
    texts = [ex.response for ex in examples]
    if tokenizer is not None and texts:
        n_tok = np.array([len(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]], dtype=np.int64)
        scores, unit = n_tok.astype(np.float64), "tokens"
    else:
        n_tok = np.zeros(len(texts), dtype=np.int64)
        scores, unit = np.array([len(t) for t in texts], dtype=np.float64), "chars"
    return make_score_table(pool_ids(examples), scores, n_tok, meta={"method": "longest", "unit": unit})


@register("longest")
class LongestSelector(Selector):
    """Longest-response baseline; uses the context model's tokenizer when there is one."""

    def score(self, pool: Sequence[Example], ctx: SelectionContext) -> pa.Table:
        self.options(ctx)
        return longest_scores(pool, ctx.model.tokenizer if ctx.model is not None else None)
