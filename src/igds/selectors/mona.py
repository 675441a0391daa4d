"""``mona`` (MoNA, Ma et al., arXiv 2503.15573): the mean SAE code of each pool row (all
latents, over its counted tokens), scored by generalised Jaccard
``sum(min(c, p)) / sum(max(c, p))`` to the task prototype ``p`` (the mean of the task
examples' mean codes). Means over tokens, not sums, so length does not win by itself.
Computed with ``embed`` in one forward pass (:mod:`igds.selectors.sae_means`, which
names the options). Column ``jaccard``; ``n_tokens`` is the number of counted tokens."""

from __future__ import annotations

from typing import Sequence

import pyarrow as pa

from ..data import Example
from .base import SelectionContext, Selector, register
from .sae_means import DEFAULTS, similarity_tables


@register("mona")
class MonaSelector(Selector):
    """Generalised Jaccard to the task prototype. Options as ``embed``."""

    needs = ("model", "task", "sae")

    def score(self, pool: Sequence[Example], ctx: SelectionContext) -> pa.Table:
        return similarity_tables(pool, ctx, self.options(ctx, **DEFAULTS))["mona"]
