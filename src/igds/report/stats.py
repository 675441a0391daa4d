"""Pearson and Spearman correlation without scipy (scipy comes only with igds[finetune]).

The experiment runner computes the amplification-vs-gain correlation with scipy
(``igds.experiment.correlation``) and stores it in ``results.json``; the report reads it
from there and uses this module only for what no artifact holds (score vs length, score
columns of two methods) and for a ``results.json`` without a correlation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (for Spearman's rho without scipy)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    start = 0
    for i in range(1, len(x) + 1):
        if i == len(x) or xs[i] != xs[start]:
            ranks[order[start:i]] = (start + i - 1) / 2.0
            start = i
    return ranks


def correlations(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, int]:
    """Pearson r, Spearman rho and n over the pairs where both are finite (NaN if undefined)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = int(len(a))
    if n < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan"), float("nan"), n
    r = float(np.corrcoef(a, b)[0, 1])
    ra, rb = _ranks(a), _ranks(b)
    rho = float(np.corrcoef(ra, rb)[0, 1]) if np.std(ra) > 0 and np.std(rb) > 0 else float("nan")
    return r, rho, n
