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

The selector checks that the table lists ``pool``'s ids in order. Variants:
``igds_filtered`` turns the causal filter on (off by default at this scale: only the
recalled candidates whose edit measurably helps score); ``igds_recall_only`` turns it off
whatever the config says (every recalled candidate scores); ``igds_random_candidates``
draws random features instead of recalling them (through the filter when it is on). ``igds_paper`` is IGDS with the ``paper`` preset (:data:`igds.config.PRESETS`)
on its config: the paper's method as far as it is known, to compare our defaults against;
``igds_content`` puts the ``content`` preset on it (every stage reads the record's own text only).

Derived arms (:class:`IGDSDerived`) re-read igds's own score table (same features, same
scores; give igds's ``run_dir`` and its stages are reused, not re-run) and turn it into a
table whose top rows are the arm's selection:

* ``igds_low``: the lowest Feature-Resonant Scores first (score and ``f:`` columns
  negated; NaN rows stay last), to check the direction: the authors' earlier translation
  paper selected the rows that activate the task features least;
* ``igds_zscore``: igds's features combined by ``score.combine=zscore`` (z-score over the pool,
  weighted by causal effect), to measure the combination against igds's plain mean;
* ``igds_quota`` / ``igds_coverage``: :func:`igds.selection.select_rows` in mode
  ``quota`` / ``coverage`` (``config.select.gate``). Both pick orders do not depend on
  the budget, so the table's score is the pick order (first pick highest) and any budget
  takes a prefix of it; for coverage, the rows the gate keeps out follow, in score
  order, after every eligible row (a ratio above the gate would reach them: keep it below).
"""

from __future__ import annotations

import copy
import json
from abc import abstractmethod
from dataclasses import replace
from typing import Any, ClassVar, Sequence

import numpy as np
import pyarrow as pa

from ..config import RunConfig, SelectConfig, with_preset
from ..data import Example
from ..feature_set import FeatureSet
from ..pipeline import igds_scores
from ..scoring import pool_combination
from ..selection import FEATURE_PREFIX, budget_for, select_rows, table_meta, top_order
from .base import SelectionContext, Selector, check_table, get_selector, register


class IGDSSelector(Selector):
    """IGDS with the filter settings ``filter_overrides`` (none: IGDS itself)."""

    needs = ("model",)
    filter_overrides: ClassVar[dict[str, Any]] = {}
    preset: ClassVar[str | None] = None  # igds.config.PRESETS entry put on the config first

    def score(self, pool: Sequence[Example], ctx: SelectionContext) -> pa.Table:
        table, _features = self.scores(ctx)
        return check_table(self.name, table, pool)

    def scores(self, ctx: SelectionContext) -> tuple[pa.Table, FeatureSet]:
        """(score table, validated features) of this arm's stages, run or resumed in ``run_dir``."""
        o = self.options(ctx, config=None, run_dir=None)
        if o["config"] is None or o["run_dir"] is None:
            raise ValueError(f"selector {self.name!r} needs options config (a RunConfig whose pool section is "
                             f"this pool) and run_dir (where its stages write and resume)")
        return igds_scores(self.model(ctx), self.configure(o["config"]), o["run_dir"])

    @classmethod
    def configure(cls, cfg: RunConfig) -> RunConfig:
        """A copy of ``cfg`` with this arm's preset and filter settings: the one place they are
        applied, for this selector and for ``igds experiment`` (:func:`igds.experiment.run_config`)."""
        cfg = with_preset(cfg, cls.preset) if cls.preset else copy.deepcopy(cfg)
        return replace(cfg, filter=replace(cfg.filter, **cls.filter_overrides))


@register("igds")
class IGDS(IGDSSelector):
    """IGDS: recall, causal filter, Feature-Resonant Score."""


@register("igds_filtered")
class IGDSFiltered(IGDSSelector):
    """IGDS with the causal filter on (off by default at this scale, ``FilterConfig.enabled``):
    only the recalled candidates whose edit measurably lowers the task loss score."""

    filter_overrides = {"enabled": True}


@register("igds_recall_only")
class IGDSRecallOnly(IGDSSelector):
    """Ablation: no causal filter; every recalled candidate feature scores."""

    filter_overrides = {"enabled": False}


@register("igds_random_candidates")
class IGDSRandomCandidates(IGDSSelector):
    """Ablation: random features go through the causal filter instead of the recalled ones."""

    # random features rarely pass BH: then score with them unfiltered (features.json says so), not stop
    filter_overrides = {"random_candidates": True, "on_empty": "recall_only"}


@register("igds_paper")
class IGDSPaper(IGDSSelector):
    """The paper's method as far as it is known (``igds.config.PRESETS["paper"]``): all positions,
    frequency recall, the amplification filter, top-k by mean resonance. Give it its own run_dir."""

    preset = "paper"


@register("igds_content")
class IGDSContent(IGDSSelector):
    """IGDS on content positions only (``igds.config.PRESETS["content"]``): recall, filter and score
    read the record's own text, never the system prompt, chat template or instruction words."""

    preset = "content"


class IGDSDerived(IGDSSelector):
    """An arm computed from igds's own score table (:meth:`derive`), not from a run of its own."""

    reads_features: ClassVar[bool] = False  # derive needs igds's validated features, not only its table

    def score(self, pool: Sequence[Example], ctx: SelectionContext) -> pa.Table:
        table, features = self.scores(ctx)
        check_table(self.name, table, pool)
        return check_table(self.name, self.derive(table, features, ctx.options["config"].select), pool)

    @abstractmethod
    def derive(self, table: pa.Table, features: FeatureSet | None, select: SelectConfig) -> pa.Table:
        """This arm's table from igds's ``table`` and validated ``features`` (``select``: the run's
        selection settings)."""

    def _with_score(self, table: pa.Table, score: np.ndarray, **meta: Any) -> pa.Table:
        out = table.set_column(table.column_names.index("score"), "score", pa.array(score, type=pa.float64()))
        note = {**table_meta(table), "method": self.name, "derived_from": "igds", **meta}
        return out.replace_schema_metadata({**(table.schema.metadata or {}), b"igds": json.dumps(note).encode()})


def _pick_order_scores(n: int, picks: Sequence[int], index: np.ndarray) -> np.ndarray:
    """Scores whose top-k are the first k of ``picks`` (pool indices): n, n-1, ... in pick order."""
    position = {int(i): p for p, i in enumerate(index.tolist())}
    score = np.full(n, np.nan)
    score[[position[i] for i in picks]] = n - np.arange(len(picks), dtype=np.float64)
    return score


@register("igds_low")
class IGDSLow(IGDSDerived):
    """The direction check: igds's rows, lowest Feature-Resonant Score first."""

    def derive(self, table: pa.Table, features: FeatureSet | None, select: SelectConfig) -> pa.Table:
        out = table
        for i, name in enumerate(table.column_names):
            if name.startswith(FEATURE_PREFIX):
                negated = -table.column(name).to_numpy(zero_copy_only=False)
                out = out.set_column(i, name, pa.array(negated, type=table.schema.field(name).type))
        score = -table.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
        return self._with_score(out, score, order="lowest FRS first")


@register("igds_quota")
class IGDSQuota(IGDSDerived):
    """igds's table in select mode ``quota``: per-feature round-robin."""

    def derive(self, table: pa.Table, features: FeatureSet | None, select: SelectConfig) -> pa.Table:
        picks = select_rows(table, budget=table.num_rows, mode="quota")
        index = table.column("index").to_numpy(zero_copy_only=False)
        return self._with_score(table, _pick_order_scores(table.num_rows, picks, index), mode="quota")


@register("igds_coverage")
class IGDSCoverage(IGDSDerived):
    """igds's table in select mode ``coverage`` (gate ``select.gate``), then the gated-out rows."""

    def derive(self, table: pa.Table, features: FeatureSet | None, select: SelectConfig) -> pa.Table:
        n = table.num_rows
        index = table.column("index").to_numpy(zero_copy_only=False)
        eligible = budget_for(n, ratio=select.gate)
        picks = select_rows(table, budget=eligible, mode="coverage", gate=select.gate)
        rest = [int(index[i]) for i in top_order(table)[eligible:]]  # below the gate, in score order
        return self._with_score(table, _pick_order_scores(n, [*picks, *rest], index), mode="coverage",
                                gate=select.gate)


@register("igds_zscore")
class IGDSZscore(IGDSDerived):
    """igds's validated features combined as ``score.combine=zscore`` would: each ``f:`` column
    standardised over the pool, weighted by the feature's causal effect clipped at 0 (equal weights
    when the filter measured none; :func:`igds.scoring.effect_weights`). Same features, same
    per-feature scores: only the combination differs from igds's."""

    reads_features = True

    def derive(self, table: pa.Table, features: FeatureSet | None, select: SelectConfig) -> pa.Table:
        if features is None:
            raise ValueError("igds_zscore needs igds's validated features (their effects weigh the z-scores)")
        score, weights = pool_combination(table, features.validated_features, "zscore")
        return self._with_score(table, score, combine="zscore", weights=weights)


def derive_table(method: str, igds_table: pa.Table, select: SelectConfig,
                 features: FeatureSet | None = None) -> pa.Table:
    """The table of the derived arm ``method`` (:data:`igds.config.IGDS_DERIVED`) from igds's own table
    and validated ``features`` (needed by the arms that weigh features: ``igds_zscore``)."""
    arm = get_selector(method)
    if not isinstance(arm, IGDSDerived):
        raise ValueError(f"{method!r} is not an arm derived from igds's table")
    return arm.derive(igds_table, features, select)
