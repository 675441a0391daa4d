"""Diagnostics for a selection table: what a selector's score tracks, and how good its pick is.

Used by ``benchmarks/mixed_pool.py`` for every arm (issue #12 item 4): the Spearman
correlation of the score with ``n_tokens`` and with response length, the overlap of the
selected set with Loss-top, Loss-bottom and longest-response at the same budget, and,
where the pool has graded relevance labels (2 = the task's own rows, 1 = near-task,
0 = off-task), precision and recall of the exact-task rows, graded precision and NDCG.

Every function reads plain sequences (scores in pool order, NaN = no score), so the
numbers can be checked on a planted table without a model.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.stats import rankdata

TASK, NEAR, OFF = 2, 1, 0  # relevance grades: the task's own rows, near-task rows, off-task rows


def top_indices(scores: Sequence[float], k: int) -> list[int]:
    """Pool indices of the ``k`` highest scores, best first; NaN last, ties by pool index
    (the order of :func:`igds.selection.select_indices`)."""
    s = np.asarray(scores, dtype=np.float64)
    key = np.where(np.isnan(s), -np.inf, s)
    order = np.lexsort((np.arange(len(s)), -key))
    return [int(i) for i in order[:k]]


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rho over the rows where both are finite (average ranks for ties); None when
    fewer than 3 such rows or either side is constant there (rho is undefined)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return None
    ra, rb = rankdata(a[ok]), rankdata(b[ok])
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def overlap(selected: Sequence[int], other: Sequence[int]) -> float:
    """Share of ``selected`` that is also in ``other`` (same budget: the Jaccard-free reading
    "how much of this pick is the other's pick")."""
    if not selected:
        return 0.0
    return len(set(selected) & set(other)) / len(selected)


def exact_task_precision_recall(selected: Sequence[int], labels: Sequence[int], positive: int
                                ) -> tuple[int, float, float]:
    """(hits, precision, recall) of the rows labelled ``positive`` among ``selected``."""
    n_pos = sum(1 for lab in labels if lab == positive)
    hits = sum(1 for i in selected if labels[i] == positive)
    return hits, hits / len(selected) if selected else 0.0, hits / n_pos if n_pos else 0.0


def graded_precision(selected: Sequence[int], labels: Sequence[int]) -> float:
    """Mean relevance of the selected rows divided by the top grade :data:`TASK` (1.0: all exact-task)."""
    if not selected:
        return 0.0
    return sum(labels[i] for i in selected) / (len(selected) * TASK)


def ndcg(ranked: Sequence[int], labels: Sequence[int]) -> float:
    """NDCG of ``ranked`` (best first, cut at its length) with gain ``2**label - 1`` and the
    usual ``1/log2(rank + 1)`` discount, against the ideal order of ``labels``."""
    def dcg(grades: Sequence[int]) -> float:
        return sum((2 ** g - 1) / math.log2(r + 2) for r, g in enumerate(grades))

    ideal = dcg(sorted(labels, reverse=True)[:len(ranked)])
    return dcg([labels[i] for i in ranked]) / ideal if ideal > 0 else 0.0


def selection_diagnostics(scores: Sequence[float], k: int, n_tokens: Sequence[float],
                          response_chars: Sequence[float], references: dict[str, Sequence[int]]
                          ) -> dict[str, float | None]:
    """Score-length correlations and overlaps of the top-``k`` pick with each reference pick.

    ``references`` maps a name (``loss_top``, ``loss_bottom``, ``longest``) to that pick at
    the same budget. ``n_tokens`` of all zeros (a model-free table) gives rho None."""
    chosen = top_indices(scores, k)
    out: dict[str, float | None] = {"rho_n_tokens": spearman(scores, n_tokens),
                                    "rho_response_chars": spearman(scores, response_chars)}
    for name, pick in references.items():
        out[f"overlap_{name}"] = overlap(chosen, pick[:k])
    return out


def relevance_metrics(ranked: Sequence[int], labels: Sequence[int]) -> dict[str, float]:
    """Exact-task (:data:`TASK`) hits / precision / recall, graded precision and NDCG of ``ranked``."""
    hits, precision, recall = exact_task_precision_recall(ranked, labels, TASK)
    return {"task_selected": hits, "precision": precision, "recall": recall,
            "graded_precision": graded_precision(ranked, labels), "ndcg": ndcg(ranked, labels)}
