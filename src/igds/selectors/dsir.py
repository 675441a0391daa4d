"""``dsir``: Data Selection with Importance Resampling (Xie et al. 2023) on hashed n-grams,
by the maintained implementation (PyPI ``data-selection``, extra ``igds[select]``).

Target = the context's task examples, raw = the pool, each as prompt + newline +
response. The library's :class:`HashedNgramDSIR` fits the two bag-of-n-gram
distributions (word-punct tokens, unigrams + bigrams hashed into ``num_buckets``) and
its own featuriser and importance estimator give each pool row its log importance
weight ``log p_target(x) - log p_raw(x)``: the score. The weight is a sum over the
row's n-grams, so it grows in magnitude with length, as in DSIR. The library's
``min_example_length`` filter (100 words by default, meant for pre-training
documents) is off unless option ``min_example_length`` is set: shorter rows then get
a NaN score (selected last). DSIR resamples by these weights; a score table takes
the top-k (the library's ``top_k=True``). ``n_tokens`` is 0 (no model is run).
"""

from __future__ import annotations

import tempfile
from typing import Sequence

import numpy as np
import pyarrow as pa

from ..data import Example
from ..selection import make_score_table
from .base import SelectionContext, Selector, example_text, pool_ids, register


def dsir_scores(pool: Sequence[Example | str], target: Sequence[Example | str], ngrams: int = 2,
                num_buckets: int = 10000, min_example_length: int | None = None) -> pa.Table:
    """Log importance weight of each pool row towards ``target`` (hashed n-gram DSIR)."""
    try:
        from data_selection import HashedNgramDSIR
    except ImportError as e:
        raise ImportError("selector 'dsir' needs the package data-selection: pip install 'igds[select]'") from e
    if not target:
        raise ValueError("selector 'dsir' needs task examples (the target distribution)")
    raw_texts = [example_text(e) for e in pool]
    target_texts = [example_text(e) for e in target]
    data = {"raw": raw_texts, "target": target_texts}
    with tempfile.TemporaryDirectory(prefix="igds-dsir-") as cache:  # the library insists on a cache dir
        dsir = HashedNgramDSIR(["raw"], ["target"], cache_dir=cache, raw_load_dataset_fn=data.__getitem__,
                               raw_parse_example_fn=None, target_load_dataset_fn=data.__getitem__,
                               target_parse_example_fn=None, num_proc=1, ngrams=ngrams,
                               num_buckets=num_buckets, min_example_length=min_example_length or 0)
        dsir.fit_importance_estimator(num_tokens_to_fit="all")
        features = [dsir.featurizer(t) for t in raw_texts]
        scores = np.array([float(dsir.importance_estimator(f)) for f in features], dtype=np.float64)
    if min_example_length:
        keep = dsir.perexample_metadata_filter(np.array([dsir.get_perexample_metadata({}, f) for f in features]))
        scores = np.where(keep, scores, np.nan)
    meta = {"method": "dsir", "ngrams": ngrams, "num_buckets": num_buckets,
            "min_example_length": min_example_length, "n_target": len(target_texts),
            "n_nan": int(np.isnan(scores).sum())}
    return make_score_table(pool_ids(pool), scores, np.zeros(len(raw_texts), dtype=np.int64),
                            extra={"log_weight": scores}, meta=meta)


@register("dsir")
class DSIRSelector(Selector):
    """DSIR towards the task examples. Options: ``ngrams``, ``num_buckets``, ``min_example_length``."""

    needs = ("task",)

    def score(self, pool: Sequence[Example], ctx: SelectionContext) -> pa.Table:
        o = self.options(ctx, ngrams=2, num_buckets=10000, min_example_length=None)
        return dsir_scores(pool, ctx.task, o["ngrams"], o["num_buckets"], o["min_example_length"])
