"""Score tables and selection: any ratio or budget from one table, no recomputation.

Every selector in igds (IGDS and all baselines) writes the same table shape
(see ``docs/design.md``): ``index``, ``id``, ``score``, ``n_tokens`` and optional
extra columns, in pool order. :func:`select_rows` takes a budget from it in one of
three modes (``select.mode``); each is deterministic, so the same table always gives
the same subset:

* ``top`` (the paper's): the highest scores, ties broken by pool index, NaN last
  (:func:`select_indices`).
* ``quota`` (ours): round-robin over the table's per-feature columns (``f:<key>``, one
  per validated feature, :data:`FEATURE_PREFIX`): each feature in turn takes its best
  row not yet taken, by its own column (NaN last; ties by the ``top`` order), until the
  budget is filled. Features weigh equally (one row per turn each), so one dominant
  feature cannot fill the budget by itself.
* ``coverage`` (ours): a relevance gate, then diversity. Only the top ``gate`` share of
  the pool by score is eligible; from it a greedy maximises the feature-based
  submodular function ``f(S) = sum_j sqrt(sum_{i in S} a_ij / tau_j)`` (a concave
  function of each feature's covered mass: Wei, Iyer & Bilmes, ICML 2015), where
  ``a_ij`` is row i's ``f:`` column j and ``tau_j`` the column's mean over eligible rows
  (features weigh equally). Each step takes the row adding the most not-yet-covered
  feature mass, ties by the ``top`` order; rows with no active feature come last. The
  idea of selecting for SAE-feature coverage rather than density: Yang et al., arXiv
  2502.14050. Lazy greedy (Minoux 1978): gains only shrink as coverage grows, so a
  stale gain bounds the true one and most rows are never re-evaluated.

Quota and coverage need the ``f:`` columns of an IGDS score table; with a single
validated feature both reduce to that feature's order.
"""

from __future__ import annotations

import heapq
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .artifacts import atomic_write_parquet


def make_score_table(ids: Sequence[str], scores: Sequence[float], n_tokens: Sequence[int],
                     extra: dict[str, Sequence[float]] | None = None,
                     meta: dict[str, Any] | None = None, start_index: int = 0) -> pa.Table:
    """Build a score table in pool order (``index`` counts from ``start_index``)."""
    n = len(ids)
    if not (len(scores) == len(n_tokens) == n):
        raise ValueError(f"ids ({n}), scores ({len(scores)}) and n_tokens ({len(n_tokens)}) differ in length")
    cols: dict[str, pa.Array] = {
        "index": pa.array(np.arange(start_index, start_index + n, dtype=np.int64)),
        "id": pa.array([str(i) for i in ids], type=pa.string()),
        "score": pa.array(np.asarray(scores, dtype=np.float64)),
        "n_tokens": pa.array(np.asarray(n_tokens, dtype=np.int64)),
    }
    for name, values in (extra or {}).items():
        cols[name] = pa.array(np.asarray(values, dtype=np.float32))
    table = pa.table(cols)
    if meta is not None:
        table = table.replace_schema_metadata({"igds": json.dumps(meta)})
    return table


def write_score_table(path: str | Path, table: pa.Table) -> None:
    atomic_write_parquet(path, table)


def read_score_table(path: str | Path) -> pa.Table:
    table = pq.read_table(path)
    missing = {"index", "id", "score"} - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: not a score table (missing columns {sorted(missing)})")
    return table


def table_meta(table: pa.Table) -> dict[str, Any]:
    raw = (table.schema.metadata or {}).get(b"igds")
    return json.loads(raw) if raw else {}


def budget_for(n: int, ratio: float | None = None, budget: int | None = None) -> int:
    if (ratio is None) == (budget is None):
        raise ValueError("give exactly one of ratio or budget")
    if budget is not None:
        if not 0 < budget <= n:
            raise ValueError(f"budget must be in 1..{n} (the pool size), got {budget}")
        return int(budget)
    if not 0 < ratio <= 1:  # type: ignore[operator]
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    return max(1, int(math.floor(ratio * n + 0.5)))  # type: ignore[operator]


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def _descending(values: np.ndarray, *then: np.ndarray) -> np.ndarray:
    """Row positions by ``values`` descending, NaN last, ties by ``then`` (ascending, first key first)."""
    key = np.where(np.isnan(values), -np.inf, values)
    return np.lexsort((*reversed(then), -key))


def top_order(table: pa.Table) -> np.ndarray:
    """Row positions of ``table`` by score descending, then pool index (NaN scores last)."""
    return _descending(_column(table, "score"), table.column("index").to_numpy(zero_copy_only=False))


def select_indices(table: pa.Table, ratio: float | None = None, budget: int | None = None) -> list[int]:
    """Pool indices of the top ``ratio``/``budget`` rows, best first (NaN scores last)."""
    index = table.column("index").to_numpy(zero_copy_only=False)
    k = budget_for(table.num_rows, ratio, budget)
    return [int(index[i]) for i in top_order(table)[:k]]


MODES = ("top", "quota", "coverage")
FEATURE_PREFIX = "f:"  # the per-feature columns of an IGDS score table (igds.scoring.FeatureScorer.score)


def feature_columns(table: pa.Table) -> list[str]:
    """The table's per-feature columns, in table order (the validated features' order)."""
    return [c for c in table.column_names if c.startswith(FEATURE_PREFIX)]


def select_rows(table: pa.Table, ratio: float | None = None, budget: int | None = None, mode: str = "top",
                gate: float = 0.75) -> list[int]:
    """Pool indices of ``ratio``/``budget`` rows chosen by ``mode`` (module docstring), in pick
    order; ``gate`` is the eligible share of the pool in ``coverage`` mode."""
    if mode not in MODES:
        raise ValueError(f"select mode must be one of {MODES}, got {mode!r}")
    if not 0 < gate <= 1:
        raise ValueError(f"select gate must be in (0, 1], got {gate}")
    k = budget_for(table.num_rows, ratio, budget)
    if mode == "top":
        return select_indices(table, budget=k)
    columns = feature_columns(table)
    if not columns:
        raise ValueError(f"select mode {mode!r} needs the per-feature columns ({FEATURE_PREFIX}<key>) of an IGDS "
                         "score table; this table has none (a baseline's?): use mode top")
    index = table.column("index").to_numpy(zero_copy_only=False)
    order = top_order(table)
    values = np.stack([_column(table, c) for c in columns], axis=1)
    if mode == "quota":
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        picks = quota_order(values, rank, k)
    else:
        eligible = budget_for(table.num_rows, ratio=gate)
        if k > eligible:
            raise ValueError(f"select mode coverage: the budget ({k} rows) is larger than the {eligible} rows the "
                             f"gate lets through (select.gate={gate} of {table.num_rows}); raise select.gate above "
                             "the ratio or select fewer rows")
        picks = order[coverage_order(values[order[:eligible]], k)]
    return [int(index[i]) for i in picks]


def quota_order(values: np.ndarray, rank: np.ndarray, k: int) -> list[int]:
    """``k`` row positions, round-robin over the columns of ``values`` (n, F): each column in
    turn takes its highest row not yet taken (NaN last, ties by ``rank``, lower first)."""
    n, n_features = values.shape
    by_feature = [_descending(values[:, j], rank).tolist() for j in range(n_features)]
    taken = bytearray(n)
    next_pos = [0] * n_features
    picks: list[int] = []
    while len(picks) < k:  # k <= n, so every turn finds a row
        for j in range(n_features):
            ranked, p = by_feature[j], next_pos[j]
            while taken[ranked[p]]:
                p += 1
            taken[ranked[p]] = 1
            picks.append(ranked[p])
            next_pos[j] = p + 1
            if len(picks) == k:
                break
    return picks


def coverage_order(values: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` greedy picks (row positions) maximising ``sum_j sqrt(covered_j)`` over the
    rows of ``values`` (m, F), which come in tie-break order (module docstring)."""
    acts = np.nan_to_num(values, nan=0.0)
    if (acts < 0).any():
        raise ValueError("select mode coverage needs non-negative feature columns (SAE activations); "
                         "this table has negative ones (a reversed table such as igds_low?)")
    tau = acts.mean(axis=0)
    acts = acts[:, tau > 0] / tau[tau > 0]  # features that never fire among the eligible rows add nothing
    m = acts.shape[0]
    covered = np.zeros(acts.shape[1])
    root = np.sqrt(covered)
    # heap of (-gain bound, row): ties go to the lower row, i.e. the higher score
    heap = [(-g, r) for r, g in enumerate(np.sqrt(acts).sum(axis=1).tolist())]
    heapq.heapify(heap)
    fresh_at = [0] * m  # the step at which each row's bound was computed (exact at that step)
    picks: list[int] = []
    while len(picks) < k:
        batch = 4
        while fresh_at[heap[0][1]] != len(picks):  # stale bound on top: re-evaluate the top rows
            popped = [heapq.heappop(heap) for _ in range(min(batch, len(heap)))]
            stale = [r for _, r in popped if fresh_at[r] != len(picks)]
            gains = (np.sqrt(covered + acts[stale]) - root).sum(axis=1).tolist()
            exact = dict(zip(stale, gains))
            for bound, r in popped:
                heapq.heappush(heap, (-exact[r], r) if r in exact else (bound, r))
                fresh_at[r] = len(picks)
            batch = min(2 * batch, 4096)
        r = heapq.heappop(heap)[1]
        picks.append(r)
        covered += acts[r]
        root = np.sqrt(covered)
    return np.asarray(picks, dtype=np.int64)


def check_pool_ids(table: pa.Table, pool_ids: Iterable[str], table_path: str | Path, pool_source: str) -> None:
    """Refuse a score table that is not the pool's, row by row: row ``index`` = i must carry the
    id of the pool's i-th record, and the table must cover every record (and no more)."""
    expected = dict(zip(table.column("index").to_pylist(), (str(i) for i in table.column("id").to_pylist())))
    fix = "re-score the pool (`igds score` / `igds run`) or give the score table made from this pool"
    n = 0
    for i, pool_id in enumerate(pool_ids):
        if i not in expected:
            raise ValueError(f"{table_path}: has no row for index {i} (id {pool_id!r} in {pool_source}): "
                             f"the pool has more records than the table; {fix}")
        if expected[i] != pool_id:
            raise ValueError(f"{table_path}: row index {i} has id {expected[i]!r} but record {i} of {pool_source} "
                             f"has id {pool_id!r}: the table does not match the pool; {fix}")
        n = i + 1
    if n != len(expected):
        raise ValueError(f"{table_path}: has {len(expected)} rows but {pool_source} has {n} records; {fix}")
