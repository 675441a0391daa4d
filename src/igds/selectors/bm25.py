"""``bm25``: lexical relevance to the task by BM25 (``bm25s``, extra ``igds[select]``).

The pool is the indexed corpus and each task example (prompt + newline + response) is
one query; tokens are lower-cased words of two or more characters with English stop
words removed (``bm25s.tokenize``), BM25 with the library's defaults (Lucene variant,
``k1=1.5``, ``b=0.75``). A pool row's score aggregates its BM25 scores over all task
queries: option ``aggregate="mean"`` (default: relevance to the task as a whole, every
query weighs the same) or ``"max"`` (the best-matching single task example: favours
near-duplicates of any one task row). Queries with no token in the pool's vocabulary
add 0 to every row. Column ``bm25_max`` keeps the max either way. ``n_tokens`` is 0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from ..data import Example
from ..selection import make_score_table
from .base import SelectionContext, Selector, example_text, pool_ids, register

AGGREGATES = ("mean", "max")


def bm25_scores(pool: Sequence[Example | str], task: Sequence[Example | str], aggregate: str = "mean",
                k1: float = 1.5, b: float = 0.75, stopwords: str | None = "en") -> pa.Table:
    """BM25 of each pool row against every task example, aggregated by ``aggregate``."""
    try:
        import bm25s
    except ImportError as e:
        raise ImportError("selector 'bm25' needs the package bm25s: pip install 'igds[select]'") from e
    if aggregate not in AGGREGATES:
        raise ValueError(f"selector 'bm25': aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    if not task:
        raise ValueError("selector 'bm25' needs task examples (the queries)")
    n = len(pool)
    corpus = bm25s.tokenize([example_text(e) for e in pool], stopwords=stopwords, return_ids=False,
                            show_progress=False)
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(corpus, show_progress=False)
    queries = bm25s.tokenize([example_text(e) for e in task], stopwords=stopwords, return_ids=False,
                             show_progress=False)
    total, best = np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.float64)
    for q in queries:
        ids = retriever.get_tokens_ids(q)
        if not ids:  # no query word occurs in the pool: every row scores 0
            continue
        s = np.asarray(retriever.get_scores_from_ids(ids), dtype=np.float64)
        total += s
        np.maximum(best, s, out=best)
    scores = total / len(queries) if aggregate == "mean" else best
    meta = {"method": "bm25", "aggregate": aggregate, "k1": k1, "b": b, "stopwords": stopwords,
            "n_queries": len(queries)}
    return make_score_table(pool_ids(pool), scores, np.zeros(n, dtype=np.int64), extra={"bm25_max": best},
                            meta=meta)


@register("bm25")
class BM25Selector(Selector):
    """BM25 against the task examples. Options: ``aggregate`` (mean | max), ``k1``, ``b``, ``stopwords``."""

    needs = ("task",)

    def score(self, pool: Sequence[Example], ctx: SelectionContext) -> pa.Table:
        o = self.options(ctx, aggregate="mean", k1=1.5, b=0.75, stopwords="en")
        return bm25_scores(pool, ctx.task, o["aggregate"], o["k1"], o["b"], o["stopwords"])
