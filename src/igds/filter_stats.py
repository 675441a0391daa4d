"""Stage 1b's keep rule as statistics: which candidates' effects are real (no model here).

Every candidate comes with one effect per validation example (positive = the feature
helps, :mod:`igds.features`). The rule (ours, method audit §3.4):

1. **Test.** Per candidate a one-sided one-sample t-test of H1: mean effect > ``min_delta``
   (:func:`one_sided_p`).
2. **Multiplicity.** Benjamini-Hochberg over all candidates (:func:`bh_adjust`); a candidate
   is *selected* when its adjusted p is at most ``q``, so on average at most a share ``q``
   of the selected features are nulls. The old rule, mean - se > 0, passes a null feature
   with probability P(t > 1) ~ 0.16 each, about 4 of 24 by chance.
3. **Replication.** With ``replication`` the validation examples are split in two by a
   seeded shuffle (:func:`split_halves`): the test and BH run on half A; a selected
   feature is *confirmed* when the same one-sided test on half B gives p <= ``q``. A null
   feature that slipped through A passes B with probability at most ``q``. The reported
   effect (mean, se, 95% CI) is half B's, the examples that did not select it on half A.
   Half B also confirms it, so a kept feature's half-B mean is still selected on and
   biased upward, but far less than an estimate from the selecting examples; without
   replication everything runs on all examples and that bias is whole.

The t distribution is computed here (regularised incomplete beta by continued
fraction) rather than imported, so that Stage 1 needs no SciPy; the tests check it
against ``scipy.stats``.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass
from typing import Sequence

import numpy as np


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) (continued fraction, Lentz's method)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast only below the mean
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    frac = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            frac *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * frac / a


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1.0 - tail


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """The t value with P(T <= t) = ``p`` (bisection on :func:`t_sf`)."""
    lo, hi = -1e3, 1e3
    while hi - lo > 1e-12 * max(1.0, abs(lo)):
        mid = (lo + hi) / 2
        if 1.0 - t_sf(mid, df) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def one_sided_p(x: np.ndarray, null: float = 0.0) -> float:
    """One-sided one-sample t-test p-value for H1: mean(x) > ``null``; NaN with fewer than 2 values.

    Identical values (no spread) give 0 when they lie above ``null`` and 1 otherwise."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    if n < 2:
        return float("nan")
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    if sd == 0.0:
        return 0.0 if mean > null else 1.0
    return t_sf((mean - null) / (sd / math.sqrt(n)), n - 1)


def bh_adjust(p: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values, in the input order.

    adjusted_(i) = min over j >= i of p_(j) * m / j (p sorted ascending), capped at 1;
    reject at level q exactly where adjusted <= q. A NaN p (a candidate that could not be
    tested) counts in m as p = 1."""
    p = np.where(np.isnan(np.asarray(p, dtype=float)), 1.0, np.asarray(p, dtype=float))
    m = len(p)
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    stepped = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(stepped, 1.0)
    return out


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of halves A (selection) and B (confirmation) of ``n`` examples, by a seeded shuffle."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


@dataclass
class Estimate:
    """Mean of per-example effects with its standard error and a t-based 95% interval."""

    n: int
    mean: float
    se: float  # NaN when n < 2
    ci_low: float
    ci_high: float


def estimate(x: np.ndarray) -> Estimate:
    x = np.asarray(x, dtype=float)
    n = len(x)
    mean = float(x.mean()) if n else float("nan")
    if n < 2:
        return Estimate(n, mean, float("nan"), float("nan"), float("nan"))
    se = float(x.std(ddof=1) / math.sqrt(n))
    half = t_quantile(0.975, n - 1) * se
    return Estimate(n, mean, se, mean - half, mean + half)


@dataclass
class Verdict:
    """One candidate's test: p-values, the two halves, and the effect to report."""

    p_value: float  # one-sided p on the selecting examples (half A, or all without replication)
    p_adjusted: float  # Benjamini-Hochberg over all candidates
    estimate: Estimate  # half B's with replication, else all examples'
    half_a_mean: float | None = None
    half_b_mean: float | None = None
    half_b_p: float | None = None  # the confirmation test on half B
    confirmed: bool | None = None  # half_b_p <= q (None without replication)


def _finite(x: np.ndarray) -> np.ndarray:
    return x[~np.isnan(x)]


def judge(effects: Sequence[np.ndarray], q: float, min_delta: float = 0.0, replication: bool = True,
          seed: int = 0) -> list[Verdict]:
    """Test every candidate's per-example effects (arrays aligned on the same examples).

    NaN effects (an example without loss tokens) are left out of that candidate's tests."""
    if not effects:
        return []
    n = len(effects[0])
    if replication:
        a, b = split_halves(n, seed)
        select = [_finite(np.asarray(e, dtype=float)[a]) for e in effects]
        confirm = [_finite(np.asarray(e, dtype=float)[b]) for e in effects]
    else:
        select = confirm = [_finite(np.asarray(e, dtype=float)) for e in effects]
    raw = [one_sided_p(x, min_delta) for x in select]
    adjusted = bh_adjust(raw)
    out = []
    for x_a, x_b, p, p_adj in zip(select, confirm, raw, adjusted):
        verdict = Verdict(p, float(p_adj), estimate(x_b))
        if replication:
            p_b = one_sided_p(x_b, min_delta)
            verdict.half_a_mean = float(x_a.mean()) if len(x_a) else float("nan")
            verdict.half_b_mean, verdict.half_b_p = verdict.estimate.mean, p_b
            verdict.confirmed = bool(p_b <= q)  # NaN (too few examples) never confirms
        out.append(verdict)
    return out
