"""``zip`` (Entropy Law, Yin et al. 2024): ZIP's greedy pick order as a score table.

Score = ``n - pick rank``, so the top-k of the table is exactly ZIP's first k picks (see
:func:`zip_order` for the algorithm and our one deviation). With option ``ratio`` or
``budget`` the greedy stops there (a large saving) and the rows it did not pick follow
by their own compression ratio. ``n_tokens`` is 0 (no model is run).
"""

from __future__ import annotations

import math
import sys
import zlib
from typing import Sequence

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from ..data import Example
from ..selection import budget_for, make_score_table
from .base import SelectionContext, Selector, example_text, pool_ids, register

ZIP_LEVEL = 9
ZIP_SEPARATOR = b"\n"  # every text enters the concatenation as ``text + "\n"``


def zip_bytes(item: Example | str | bytes) -> bytes:
    """What ZIP compresses: the prompt and the response of an example (or a text as is)."""
    return item if isinstance(item, bytes) else example_text(item).encode("utf-8")


def compression_ratio(data: bytes) -> float:
    """``len(data) / len(zlib.compress(data, 9))``: higher = more redundant."""
    return len(data) / len(zlib.compress(data, ZIP_LEVEL))


def zip_stage_sizes(n: int, k1: int = 10000, k2: int = 200, k3: int = 100, scale: bool = True
                    ) -> tuple[int, int, int]:
    """Effective (k1, k2, k3) for a pool of ``n``.

    ``scale`` (ours) shrinks the reference sizes for pools far smaller than the
    reference's (~300k): k2 = min(k2, max(16, n/100)), k3 = min(k3, max(1, k2/2)),
    k1 = min(k1, max(4 k2, n/30)); the cost of ZIP is about ``n * (k1 / k3 + k2)``
    compressions of one text."""
    if min(k1, k2, k3) < 1:
        raise ValueError(f"k1, k2, k3 must be >= 1, got {(k1, k2, k3)}")
    if scale:
        k2 = min(k2, max(16, math.ceil(n / 100)))
        k3 = min(k3, max(1, k2 // 2))
        k1 = min(k1, max(4 * k2, math.ceil(n / 30)))
    k1 = max(1, min(k1, n))
    k2 = min(k2, k1)
    k3 = min(k3, k2)
    return k1, k2, k3


class _Stream:
    """A running level-9 deflate of a concatenation; sizes ``concat + x`` without redoing it.

    ``zlib.compressobj.copy`` clones the compressor after the concatenation, so each
    candidate costs one compression of ``x`` plus a flush, and the size equals
    ``len(zlib.compress(concat + x, 9))`` (checked in the tests)."""

    def __init__(self) -> None:
        self.comp = zlib.compressobj(ZIP_LEVEL)
        self.n_in = 0
        self.n_out = 0

    def ratio_with(self, x: bytes) -> float:
        c = self.comp.copy()
        out = self.n_out + len(c.compress(x)) + len(c.flush())
        return (self.n_in + len(x)) / out

    def add(self, x: bytes) -> None:
        self.n_out += len(self.comp.compress(x))
        self.n_in += len(x)


def zip_order(items: Sequence[Example | str | bytes], k1: int = 10000, k2: int = 200, k3: int = 100,
              budget: int | None = None, scale: bool = True, progress: bool = False) -> list[int]:
    """ZIP's greedy pick order (indices into ``items``), the first ``budget`` (all by default).

    Each round (reference: Yin et al. 2024, USTC-StarTeam/ZIP):
    1. take the ``k1`` remaining items with the lowest state (initially each item's own
       compression ratio);
    2. set their state to the ratio of ``selected + item`` and keep the ``k2`` lowest;
    3. from those, add ``k3`` one by one, each time the one that keeps the ratio of the
       round's own picks lowest; append them to the selection.
    Ties go to the lower index. Deviation (ours): the reference retires the ``k2 - k3``
    candidates that step 3 did not pick; here they stay eligible, because a score table
    must rank the whole pool."""
    data = [zip_bytes(x) + ZIP_SEPARATOR for x in items]
    n = len(data)
    budget = n if budget is None else int(budget)
    if not 0 <= budget <= n:
        raise ValueError(f"budget must be in 0..{n}, got {budget}")
    k1, k2, k3 = zip_stage_sizes(n, k1, k2, k3, scale)
    state = np.array([compression_ratio(x) for x in data], dtype=np.float64)
    remaining = np.ones(n, dtype=bool)
    selected = _Stream()
    order: list[int] = []
    bar = tqdm(total=budget, desc="ZIP", unit="ex", disable=not progress, leave=False, file=sys.stderr)
    try:
        while len(order) < budget:
            left = np.flatnonzero(remaining)
            cand1 = left[np.lexsort((left, state[left]))[:k1]]
            for i in cand1:
                state[i] = selected.ratio_with(data[i])
            cand2 = list(cand1[np.lexsort((cand1, state[cand1]))[:k2]])
            local = _Stream()
            for _ in range(min(k3, budget - len(order), len(cand2))):
                best = min(cand2, key=lambda i: (local.ratio_with(data[i]), i))
                cand2.remove(best)
                local.add(data[best])
                selected.add(data[best])
                remaining[best] = False
                order.append(int(best))
                bar.update(1)
    finally:
        bar.close()
    return order


def zip_scores(items: Sequence[Example | str | bytes], k1: int = 10000, k2: int = 200, k3: int = 100,
               ratio: float | None = None, budget: int | None = None, scale: bool = True,
               progress: bool = True) -> pa.Table:
    """ZIP baseline as a score table: score = ``n - pick rank``.

    With ``ratio`` or ``budget`` the greedy stops there (a large saving); the rows it did
    not pick follow, ordered by their last ZIP state (lowest compression ratio first)."""
    n = len(items)
    if ratio is not None and budget is not None:
        raise ValueError("give ratio or budget, not both")
    if ratio is not None:
        budget = budget_for(n, ratio=ratio)
    order = zip_order(items, k1, k2, k3, budget, scale, progress)
    if len(order) < n:
        picked = set(order)
        rest = [i for i in range(n) if i not in picked]
        own = {i: compression_ratio(zip_bytes(items[i]) + ZIP_SEPARATOR) for i in rest}
        order += sorted(rest, key=lambda i: (own[i], i))
    scores = np.empty(n, dtype=np.float64)
    scores[order] = np.arange(n, 0, -1, dtype=np.float64)
    e1, e2, e3 = zip_stage_sizes(n, k1, k2, k3, scale) if n else (0, 0, 0)
    meta = {"method": "zip", "k1": e1, "k2": e2, "k3": e3, "requested": [k1, k2, k3], "scale": scale,
            "greedy_budget": budget if budget is not None else n, "level": ZIP_LEVEL}
    return make_score_table(pool_ids(items), scores, np.zeros(n, dtype=np.int64), meta=meta)


@register("zip")
class ZipSelector(Selector):
    """ZIP baseline. Options: ``k1``, ``k2``, ``k3``, ``scale``, and ``ratio`` or ``budget`` (where
    the greedy may stop: give the largest ratio that will be selected)."""

    def score(self, pool: Sequence[Example], ctx: SelectionContext) -> pa.Table:
        o = self.options(ctx, k1=10000, k2=200, k3=100, ratio=None, budget=None, scale=True)
        return zip_scores(pool, o["k1"], o["k2"], o["k3"], o["ratio"], o["budget"], o["scale"], ctx.progress)
