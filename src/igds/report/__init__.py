"""Self-contained HTML report of a run directory: ``write_report(run_dir) -> Path``.

One file, ``RUN_DIR/report.html``, that opens offline: no CDN, fonts or scripts from
elsewhere; plots are matplotlib PNGs embedded as base64 (without matplotlib, ``igds[report]``,
a note stands in their place), sortable tables use a few lines of inline vanilla JS
(``report.js``, styled by ``style.css``, both shipped as package data). Sections (each says
"Not available" with the reason when its inputs are missing): ``#summary``, ``#features``,
``#feature-cards``, ``#selection``, ``#experiment``.

Modules follow the data's path: ``load`` (read and validate the run directory), ``fmt``,
``stats`` and ``plots`` (shared helpers), one module per section (``summary``, ``features``,
``cards``, ``selection``, ``experiment``), and ``page`` (the HTML around them).

Inputs (all optional; a missing file degrades the section, a file that exists but is
malformed raises :class:`ReportError` naming the file, line and field):

* ``config.yaml``, ``run.json``, ``features.json``, ``feature_stats.parquet``,
  ``scores.parquet``, ``selection.jsonl``: as in ``docs/design.md``; ``features.json`` is
  read by :meth:`igds.feature_set.FeatureSet.load`, which owns its schema.
  From ``run.json`` the summary reads ``versions`` (dict), ``timings_s`` (stage -> seconds),
  ``wall_s``, ``started_at``, ``pool_size``, ``n_truncated``, ``n_rejected`` when present and
  lists every other key as it is. ``feature_stats.parquet`` needs columns ``layer``,
  ``feature``, ``task_freq`` and ``ref_freq``.
* ``top_examples.json``: per validated feature key, its top pool examples, best first::

      {"L15/F123": [{"index": 17, "id": "pool-17", "value": 4.2,
                     "tokens": ["The", " answer", " is"], "acts": [0.0, 1.3, 4.2]}, ...]}

  (``"activations"`` is accepted for ``"acts"``; a ``{"features": {...}}`` wrapper too.)
* ``baselines/<method>.parquet``: score tables of the same pool (same rows). Each gives
  the same budget as the IGDS selection through :func:`igds.selection.select_indices`.
* ``experiment/results.json`` (written by the experiment runner)::

      {
        "task": "arith", "metric": "exact_match",        # optional: headline metric name
        "base": {"metrics": {"exact_match": 0.05, "ref_loss": 2.31}},   # model before tuning
        "runs": [
          {"method": "igds", "ratio": 0.5, "seed": 0, "n_train": 500,
           "metrics": {"exact_match": 0.12, "ref_loss": 1.90},
           "feature_amplification": 0.31,   # relative rise of the validated features'
                                            # mean activation on the task probe after tuning
           "task_gain": 0.07},              # headline metric minus base
          ...],
        "correlation": {"pearson": 0.62, "spearman": 0.58, "n": 12}   # amplification vs gain
      }

  ``method``, ``ratio``, ``seed`` and ``metrics`` are required per run; the rest may be
  absent or null. ``correlation`` is read as written; fields it lacks (or has as null) are
  computed from the runs.
"""

from .load import ReportError, RunData, load_run
from .page import render_report, write_report
from .stats import correlations

__all__ = ["ReportError", "RunData", "correlations", "load_run", "render_report", "write_report"]
