"""``random``: i.i.d. uniform scores from ``numpy.random.default_rng(seed)``, so the top-k
of the table is a uniform random subset; ``n_tokens`` is 0 (no model is run)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ..data import Example
from ..selection import make_score_table
from .base import SelectionContext, Selector, pool_ids, register


def random_scores(pool: Sequence[Any] | int, seed: int = 0) -> pa.Table:
    """Uniform random scores for a pool (examples, texts, or just its size ``n``)."""
    ids = [str(i) for i in range(pool)] if isinstance(pool, int) else pool_ids(pool)
    scores = np.random.default_rng(seed).random(len(ids))
    return make_score_table(ids, scores, np.zeros(len(ids), dtype=np.int64), meta={"method": "random", "seed": seed})


@register("random")
class RandomSelector(Selector):
    """Random baseline; the seed is the context's."""

    def score(self, pool: Sequence[Example], ctx: SelectionContext) -> pa.Table:
        self.options(ctx)
        return random_scores(pool, seed=ctx.seed)
