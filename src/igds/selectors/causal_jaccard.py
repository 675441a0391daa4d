"""``igds_jaccard``: MoNA's relevance and IGDS's causality in one score (ours).

The score of a pool row is the **weighted generalised Jaccard** between its mean SAE code
``x`` (all latents, mean over its counted tokens, as ``mona`` reads it) and the task
prototype ``p`` (the mean of the task examples' mean codes):

    score = sum_j w_j min(x_j, p_j) / sum_j w_j max(x_j, p_j)

so it keeps the whole code, as MoNA does, instead of a few validated features. Each
feature's weight comes from a gradient-attribution screen of the whole dictionary on
the task examples (:func:`igds.attribution.attribution_screen`: the first-order drop of
the task's reference loss when the feature is amplified, per example):

    w_j = 1 + causal_weight * max(0, t_j),   t_j = mean_j / se_j over the task examples

A feature whose amplification reliably helps the task weighs more, in proportion to
the evidence (its t-statistic); every other feature keeps weight 1, so with
``causal_weight = 0`` the score is ``mona``'s exactly. Harmful features are not pushed
below 1: the score stays a similarity to the whole task, and a negative weight would
break the [0, 1] range of the Jaccard. A feature that never fires on the task has
``t = 0`` (no evidence either way).

Options: ``positions``, ``batch_tokens``, ``batch_size``, ``chunk_tokens`` as ``embed``
/ ``mona`` (:mod:`igds.selectors.sae_means`; ``positions`` is also where the screen's
edit acts, so a feature is weighed where it is read), and ``causal_weight`` (the
``lambda`` above, >= 0; default 1, ours). The pool pass is the one ``embed`` and
``mona`` share (run ``igds_jaccard`` first and they reuse it); the screen on the task
examples is cached in ``ctx.shared`` too. Columns: ``weighted_jaccard`` (the score) and
``jaccard`` (``mona``'s unweighted score, for comparison); ``n_tokens`` is the number of
counted tokens. Metadata: the screen's size and how many features it up-weighted.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ..attribution import Screen, attribution_screen
from ..data import Example, tokenize_example
from ..selection import make_score_table
from .base import SelectionContext, Selector, check_context, pool_ids, register
from .sae_means import DEFAULTS, similarities


def causal_weights(screen: Screen, causal_weight: float) -> np.ndarray:
    """``1 + causal_weight * max(0, t)`` per feature of ``screen``."""
    return 1.0 + causal_weight * np.maximum(0.0, screen.t)


def task_screen(ctx: SelectionContext, options: dict[str, Any]) -> Screen:
    """The attribution screen of ``ctx.sae`` on the task examples (cached in ``ctx.shared``)."""
    assert ctx.model is not None and ctx.sae is not None and ctx.sae.layer is not None
    key = ("attribution", id(ctx.model), id(ctx.sae), tuple(pool_ids(ctx.task)), ctx.max_length,
           ctx.use_chat_template, tuple(sorted(options.items())))
    if key not in ctx.shared:
        toks = [tokenize_example(ctx.model.tokenizer, e, ctx.max_length, ctx.use_chat_template) for e in ctx.task]
        ctx.shared[key] = attribution_screen(ctx.model, ctx.sae, ctx.sae.layer, toks, **options)
    return ctx.shared[key]


@register("igds_jaccard")
class CausalJaccardSelector(Selector):
    """Generalised Jaccard to the task prototype, features weighted by their causal attribution."""

    needs = ("model", "task", "sae")

    def score(self, pool: Sequence[Example], ctx: SelectionContext) -> pa.Table:
        options = self.options(ctx, **DEFAULTS, causal_weight=1.0)
        causal_weight = options.pop("causal_weight")
        if isinstance(causal_weight, bool) or not isinstance(causal_weight, (int, float)) or not causal_weight >= 0:
            raise ValueError(f"selector {self.name!r}: causal_weight must be a number >= 0, got {causal_weight!r}")
        check_context(self, ctx)
        if ctx.sae is None or ctx.sae.layer is None:
            raise ValueError(f"selector {self.name!r}: the SAE records no layer (metadata 'layer' or a hook name)")
        screen = task_screen(ctx, options)
        weights = causal_weights(screen, float(causal_weight))
        sim, meta = similarities(pool, ctx, options, weights)
        return make_score_table(
            pool_ids(pool), sim["weighted_jaccard"], sim["n_tokens"],
            extra={"weighted_jaccard": sim["weighted_jaccard"], "jaccard": sim["jaccard"]},
            meta={"method": self.name, "similarity": "causally weighted generalised Jaccard to the task prototype",
                  **meta, "causal_weight": causal_weight, "screen_n": screen.n,
                  "upweighted_features": int((weights > 1).sum()), "max_weight": float(weights.max())})
