"""Selectors: every way igds can score a pool, behind one protocol and one registry.

A selector turns a pool (a sequence of :class:`igds.data.Example`) into a score table
(:func:`igds.selection.make_score_table`: ``index``, ``id``, ``score``, ``n_tokens`` in
pool order, method columns, ``igds`` metadata); any ratio or budget is then taken
from that one table (:func:`igds.selection.select_indices`). Call any of them the same
way::

    from igds.selectors import SelectionContext, run_selector
    table = run_selector("bm25", pool, SelectionContext(task=task_examples))

=======================  ====================================================  =================
name                     what it scores                                        context needs
=======================  ====================================================  =================
random                   uniform random (``ctx.seed``)                          -
loss                     response CE under the base model (hard first)         model
ifd                      Cherry-LLM IFD, ``IFD > 1`` last                       model
zip                      ZIP (Entropy Law) greedy pick order                   -
longest                  response length: tokens with a model, chars without   -
dsir                     hashed n-gram DSIR log importance weight to the task  task
bm25                     BM25 against the task examples (mean over queries)    task
embed                    cosine of mean residuals to the task centroid         model, task, sae
mona                     MoNA: generalised Jaccard of mean SAE codes           model, task, sae
igds, igds_filtered,     the Feature-Resonant Score (filter off by default;     model + options
igds_recall_only,        igds_filtered turns it on) and its ablations;
igds_random_candidates,  options ``config`` (RunConfig) and ``run_dir``
igds_paper
igds_low, igds_quota,    igds's own table: lowest first, in select mode        model + options
igds_coverage,           quota / coverage, or combined as effect-weighted
igds_zscore              z-scores (:mod:`igds.selectors.frs`)
=======================  ====================================================  =================

``dsir`` and ``bm25`` need the extra ``igds[select]``. Each selector's own options
(``SelectionContext.options``) are listed in its module docstring; an unknown one is
an error.

Adding a selector: one file here and its test.

1. ``src/igds/selectors/<name>.py``: a subclass of :class:`Selector` with a ``score``
   method returning ``make_score_table(...)`` in pool order, decorated with
   ``@register("<name>")``; set ``needs`` to what it reads from the context, and read
   its options with ``self.options(ctx, key=default, ...)``. The module docstring says
   what the score is and which choices are ours.
2. A test in ``tests/test_selectors.py`` that it ranks a planted toy pool correctly
   (one that fails if the score were reversed or constant).

The CLI (``igds baseline NAME``) and the experiment runner read :data:`SELECTORS`.
"""

import importlib
import pkgutil

from .base import (SELECTORS, SelectionContext, Selector, check_context, check_table, get_selector, register,
                   run_selector)
from .bm25 import bm25_scores
from .dsir import dsir_scores
from .ifd import answer_only, ifd_scores
from .longest import longest_scores
from .loss import loss_scores
from .random import random_scores
from .sae_means import ExampleMeans, similarity_tables
from .zip import compression_ratio, zip_order, zip_scores, zip_stage_sizes

__all__ = ["SELECTORS", "SelectionContext", "Selector", "check_context", "check_table", "get_selector", "register",
           "run_selector", "answer_only", "bm25_scores", "dsir_scores", "ifd_scores", "longest_scores", "loss_scores",
           "random_scores", "zip_order", "zip_scores", "zip_stage_sizes", "compression_ratio", "ExampleMeans",
           "similarity_tables"]

# Every module of this package is imported, so each ``@register`` runs: a new selector is one
# new file, with no list to update.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
