"""``embed``: cosine of each pool row's mean-pooled residual at the SAE's layer to the task
centroid (the mean of the task examples' mean residuals). Computed with ``mona`` in one
forward pass (:mod:`igds.selectors.sae_means`, which names the options). Column
``cosine``; ``n_tokens`` is the number of counted tokens."""

from __future__ import annotations

from typing import Sequence

import pyarrow as pa

from ..data import Example
from .base import SelectionContext, Selector, register
from .sae_means import DEFAULTS, similarity_tables


@register("embed")
class EmbedSelector(Selector):
    """Cosine to the task centroid. Options: ``positions``, ``batch_tokens``, ``batch_size``, ``chunk_tokens``."""

    needs = ("model", "task", "sae")

    def score(self, pool: Sequence[Example], ctx: SelectionContext) -> pa.Table:
        return similarity_tables(pool, ctx, self.options(ctx, **DEFAULTS))["embed"]
