"""``igds`` and its two ablations as selectors: the Feature-Resonant Score of
:func:`igds.pipeline.igds_scores` (Stage 1 features, then Stage 2 scores, both cached
in a run directory).

IGDS does not fit the pool-in-memory protocol fully: its pipeline streams the pool
from a file and caches by config, so these selectors need, besides the context's
model, two options:

* ``config``: an :class:`igds.config.RunConfig` whose ``pool`` section is the file
  ``pool`` was read from (its task / validation / reference / SAE / recall / filter /
  score sections are IGDS's settings); the ablation is applied to a copy of it;
* ``run_dir``: where the stages write (and resume) their artifacts, ``features.json``
  among them (:meth:`igds.feature_set.FeatureSet.load` reads the validated features back).

The selector checks that the table lists ``pool``'s ids in order. Ablations:
``igds_recall_only`` turns the causal filter off (every recalled candidate scores);
``igds_random_candidates`` sends random features through the filter instead of the
recalled ones.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Sequence

import pyarrow as pa

from ..data import Example
from ..pipeline import igds_scores
from .base import SelectionContext, Selector, check_table, register


class IGDSSelector(Selector):
    """IGDS with the filter settings ``filter_overrides`` (none: IGDS itself)."""

    needs = ("model",)
    filter_overrides: ClassVar[dict[str, Any]] = {}

    def score(self, pool: Sequence[Example], ctx: SelectionContext) -> pa.Table:
        o = self.options(ctx, config=None, run_dir=None)
        if o["config"] is None or o["run_dir"] is None:
            raise ValueError(f"selector {self.name!r} needs options config (a RunConfig whose pool section is "
                             f"this pool) and run_dir (where its stages write and resume)")
        cfg = copy.deepcopy(o["config"])
        for key, value in self.filter_overrides.items():
            setattr(cfg.filter, key, value)
        table, _features = igds_scores(self.model(ctx), cfg, o["run_dir"])
        return check_table(self.name, table, pool)


@register("igds")
class IGDS(IGDSSelector):
    """IGDS: recall, causal filter, Feature-Resonant Score."""


@register("igds_recall_only")
class IGDSRecallOnly(IGDSSelector):
    """Ablation: no causal filter; every recalled candidate feature scores."""

    filter_overrides = {"enabled": False}


@register("igds_random_candidates")
class IGDSRandomCandidates(IGDSSelector):
    """Ablation: random features go through the causal filter instead of the recalled ones."""

    filter_overrides = {"random_candidates": True}
