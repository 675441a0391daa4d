"""``igds experiment``: methods x ratios x seeds -> select -> fine-tune -> evaluate -> tables.

One experiment compares selection methods at equal budgets on one task:

* ``igds`` (the full method), ``igds_recall_only`` (no causal filter) and
  ``igds_random_candidates`` (random features through the causal filter): score tables
  from :func:`igds.pipeline.igds_scores`; ``igds_low`` (lowest scores first),
  ``igds_quota`` and ``igds_coverage`` (select modes quota / coverage) and ``igds_zscore``
  (effect-weighted z-scores) re-read igds's own table and features
  (:mod:`igds.selectors.frs`; Stage 1 runs once);
* ``random``, ``loss``, ``ifd``, ``zip``, ``longest`` and every other selector registered in
  :mod:`igds.selectors` (scored through its registry; method names are checked against it);
* ``full``: the whole pool (one run per seed; its ratio is 1.0).

For every (method, ratio, seed) it selects ``round(ratio * n)`` pool examples, fine-tunes
(:mod:`igds.finetune`, seed = the run's seed; the random baseline also draws its subset
with that seed), evaluates the task metric and the teacher-forced reference loss
(:mod:`igds.evaluate`), and measures how much the validated IGDS features rose on the
task's evaluation prompts (*feature amplification*, below).

Run directory (``igds.out``)::

    config.yaml, features.json, scores.parquet, ...   IGDS (igds.pipeline), as in docs/design.md
    data/pool.jsonl, data/task_data.jsonl, ...         sections read through the task (``task_format``)
    ablations/<method>/                                 IGDS ablation runs (same layout)
    baselines/<method>.parquet (+ .json cache key)      baseline score tables
    baselines/random-seeds/seed-<s>.parquet             random tables of the other seeds
    experiment/
      config.yaml                                       resolved experiment config
      base/result.json                                  the model before fine-tuning (``feature_acts`` inside)
      runs/<method>-r<ratio>-s<seed>/
          selection.json                                chosen pool indices and ids
          finetune/adapter/, finetune/finetune.json     (igds.finetune)
          result.json                                   written last, atomically
      results.csv, results.json, results.md

Data in the task's format: the sections named in ``task_format`` (default: ``pool``,
``task_data``, ``validation``) are read through the task definition - its prompt template
and reference rendering, the very prompts the evaluation uses - and written once to
``RUN_DIR/data/<section>.jsonl`` (``messages`` dialect, original ids), which IGDS scoring
and fine-tuning then both read. Leave a section out of ``task_format`` for a pool in
another format (e.g. a general instruction pool); it is then read with its own
``DataConfig`` in ``igds``. Task examples that also occur in the pool (same id) are dropped from
``task_data`` before its ``limit`` applies (``task_data_excludes_pool``), so feature
discovery never sees the examples it will score.

A run whose ``result.json`` exists with the same cache key is skipped, so an
interrupted experiment is finished by running the same command again. The key covers
everything the run's numbers depend on (model, task, data files' content, method
settings, fine-tuning and evaluation settings), not cosmetic options.

Feature amplification (ours; the paper reports that amplification correlates with task
gains but not how it measures it): for each validated feature j, ``m_j`` is its mean
activation over the evaluation prompts (per-prompt mean over prompt tokens,
``amplification.positions``). For a fine-tuned model,
``feature_log_ratio = mean_j log((m_j^ft + eps) / (m_j^base + eps))`` and
``feature_amplification = exp(feature_log_ratio) - 1``: the geometric-mean relative rise
(0.31 = the features fire 31% more). All runs use the features of the main ``igds``
run, so the numbers are comparable across methods. The correlation of amplification with
the task gain (headline metric minus the base model's) across all fine-tuned runs is
reported as Pearson and Spearman coefficients with their p-values and n.
"""

from ..config import (DATA_SECTIONS, IGDS_METHODS, AmplificationConfig, EvalConfig,
                      ExperimentConfig)
from .results import (amplification, build_results, correlation, eval_name, flatten_metrics, fmt_cell,
                      headline_metric, mean_std, results_csv, results_markdown, run_id, summarize, write_results)
from .runner import (Experiment, baseline_table, evaluate_model, load_experiment_config, materialize, method_dir,
                     run_config, run_experiment, run_from_config, task_examples)
