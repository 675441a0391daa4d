"""Score tables and selection: any ratio or budget from one table, no recomputation.

Every selector in igds (IGDS and all baselines) writes the same table shape
(see ``docs/design.md``): ``index``, ``id``, ``score``, ``n_tokens`` and optional
extra columns, in pool order. Selection sorts by score (descending), breaking ties
by pool index, so the same table always gives the same subset.
"""

from __future__ import annotations

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


def select_indices(table: pa.Table, ratio: float | None = None, budget: int | None = None) -> list[int]:
    """Pool indices of the top ``ratio``/``budget`` rows, best first (NaN scores last)."""
    scores = table.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
    index = table.column("index").to_numpy(zero_copy_only=False)
    k = budget_for(len(scores), ratio, budget)
    key = np.where(np.isnan(scores), -np.inf, scores)
    order = np.lexsort((index, -key))  # score descending, then index ascending
    return [int(index[i]) for i in order[:k]]


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
