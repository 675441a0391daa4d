"""The ``#selection`` section: what the scores look like, what was kept, and how it compares with baselines."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..data import DataSpec, detect_dialect
from ..readers import iter_records
from ..selection import select_indices, select_rows
from .fmt import esc, fmt, na, td
from .load import RunData, column, config_value, selection_budget
from .plots import MAX_SCATTER_POINTS, NO_MATPLOTLIB, REJECTED, SELECTED, img, pyplot, subsample
from .stats import correlations

# record fields that say where an example came from, most specific first
SOURCE_FIELDS = ("source_dataset", "source", "dataset", "subset", "origin", "category", "domain", "task")


def _source_labels(records: Sequence[dict[str, Any]]) -> tuple[str, list[str]] | None:
    """The first source-like field any record has and every record's value, else each record's dialect."""
    if not records:
        return None
    for name in SOURCE_FIELDS:
        if any(isinstance(r.get(name), str) for r in records):
            return name, [str(r.get(name, "(none)")) for r in records]
    spec = DataSpec()
    return "dialect", [detect_dialect(r, spec) or "(unknown)" for r in records]


def _pool_records(d: RunData) -> list[dict[str, Any]] | None:
    """The pool's records when the config names a local file of the scored pool's size."""
    src = config_value(d.config, "pool", "path")
    if d.scores is None or not isinstance(src, str) or src.startswith(("hf:", "builtin:")):
        return None  # never download a pool just for a table
    if (d.run or {}).get("n_rejected"):
        return None  # rejected rows shift pool positions away from score-table indices
    path = Path(src) if Path(src).is_absolute() else (d.run_dir / src if (d.run_dir / src).exists() else Path(src))
    if not path.is_file():
        return None
    n = d.scores.num_rows
    recs = [r for _, r in itertools.islice(iter_records(path), n + 1)]
    if len(recs) == n + 1 and config_value(d.config, "pool", "limit") == n:
        recs = recs[:n]
    return recs if len(recs) == n else None


def _mix_table(d: RunData, sel_idx: list[int]) -> str:
    """Pool vs selection counts per source (or the selection's alone when the pool cannot be read)."""
    pool = _pool_records(d)
    if pool is not None:
        lab = _source_labels(pool)
        if lab is None:
            return na("source mix: empty pool.")
        name, labels = lab
        index = column(d.scores, "index")
        pos = {int(ix): i for i, ix in enumerate(index)}
        sel_labels = [labels[pos[i]] for i in sel_idx]
        rows = []
        for lab_v in sorted(dict.fromkeys(labels), key=lambda v: -labels.count(v)):
            n_pool, n_sel = labels.count(lab_v), sel_labels.count(lab_v)
            rows.append(f"<tr><td>{esc(lab_v)}</td>{td(n_pool, ',')}{td(n_sel, ',')}"
                        f"{td(100 * n_sel / max(1, len(sel_labels)), '.1f')}{td(100 * n_sel / n_pool, '.1f')}</tr>")
        return (f"<div><h4>Mix by <code>{esc(name)}</code> (pool vs selection)</h4><table class='sortable compact'>"
                "<thead><tr><th>value</th><th>pool</th><th>selected</th><th>% of selection</th>"
                f"<th>% kept</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
    if d.selection:
        lab = _source_labels(d.selection)
        assert lab is not None
        name, labels = lab
        rows = [f"<tr><td>{esc(v)}</td>{td(labels.count(v), ',')}{td(100 * labels.count(v) / len(labels), '.1f')}</tr>"
                for v in sorted(dict.fromkeys(labels), key=lambda v: -labels.count(v))]
        return (f"<div><h4>Mix of the selection by <code>{esc(name)}</code></h4><table class='sortable compact'>"
                f"<thead><tr><th>value</th><th>selected</th><th>% of selection</th></tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table></div>")
    return na("source mix: no <code>selection.jsonl</code> and no local pool file in config.yaml.")


def _overlap_table(d: RunData, sel_idx: list[int], k: int) -> str:
    """How much of the IGDS selection each baseline would also pick at the same budget."""
    if not d.baselines:
        return na("baseline overlap: no score tables under <code>baselines/</code>.")
    n = d.scores.num_rows  # type: ignore[union-attr]
    a = set(sel_idx)
    igds_scores = column(d.scores, "score").astype(float)  # type: ignore[arg-type]
    rows = []
    for method, t in d.baselines.items():
        b = set(select_indices(t, budget=k))
        inter = len(a & b)
        _, rho, _ = correlations(igds_scores, column(t, "score").astype(float))
        rows.append(f"<tr><td>{esc(method)}</td>{td(inter, ',')}{td(inter / len(a | b), '.3f')}"
                    f"{td(100 * inter / k, '.1f')}{td(rho, '+.3f')}</tr>")
    return (f"<div><h4>Overlap with baselines at the same budget ({k:,} of {n:,})</h4>"
            '<table class="sortable compact" id="overlap-table"><thead><tr><th>baseline</th><th>shared</th>'
            "<th>Jaccard</th><th>% of IGDS selection</th><th title='rank correlation of the two score columns'>"
            f"Spearman ρ of scores</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            f"<p class='muted'>Two independent random selections of this size share {100 * k / n:.1f}% on average.</p></div>")


def _score_hist(plt: Any, score: np.ndarray, is_sel: np.ndarray) -> str:
    """Stacked histogram of the scores, selected vs rejected."""
    fig, ax = plt.subplots(figsize=(4.8, 3.0))
    fin = np.isfinite(score)
    bins = np.histogram_bin_edges(score[fin], bins=40) if fin.any() else 10
    ax.hist([score[fin & is_sel], score[fin & ~is_sel]], bins=bins, stacked=True, color=[SELECTED, REJECTED],
            label=[f"selected ({int(is_sel.sum()):,})", f"rejected ({int((~is_sel).sum()):,})"])
    ax.set_xlabel("score")
    ax.set_ylabel("examples")
    ax.set_title("Score distribution")
    ax.legend(fontsize=8)
    return img(fig, "histogram of scores, selected vs rejected")


def _length_scatter(plt: Any, nt: np.ndarray, score: np.ndarray, is_sel: np.ndarray, r: float, rho: float) -> str:
    """Score against length (at most MAX_SCATTER_POINTS sampled points), selected vs rejected."""
    fig, ax = plt.subplots(figsize=(4.8, 3.0))
    sub = subsample(len(score))
    size = 5 if len(sub) > 2000 else 14
    ax.scatter(nt[sub][~is_sel[sub]], score[sub][~is_sel[sub]], s=size, color=REJECTED, lw=0, alpha=0.6,
               label="rejected", rasterized=True)
    ax.scatter(nt[sub][is_sel[sub]], score[sub][is_sel[sub]], s=size, color=SELECTED, lw=0, alpha=0.6,
               label="selected", rasterized=True)
    ax.set_xlabel("n_tokens")
    ax.set_ylabel("score")
    ax.set_title(f"Score vs length: Pearson r = {r:+.3f}, Spearman ρ = {rho:+.3f}")
    ax.legend(fontsize=8, markerscale=3)
    return img(fig, "score vs number of tokens")


def section_selection(d: RunData) -> str:
    """``#selection``: the score distribution, score vs length, source mix and overlap with baselines."""
    if d.scores is None:
        return na("<code>scores.parquet</code> not found: no score distribution or selection to show.")
    k, src = selection_budget(d)
    note = ""
    if k is None:
        k = max(1, int(math.floor(0.5 * d.scores.num_rows + 0.5)))
        note = na("selection size: no selection.jsonl and no ratio in config.yaml; showing the top 50%.")
    # the run's own selection mode (quota / coverage pick other rows than the top k)
    mode = config_value(d.config, "select", "mode") or "top"
    gate = config_value(d.config, "select", "gate")
    sel_idx = select_rows(d.scores, budget=k, mode=mode, **({"gate": gate} if gate is not None else {}))
    index = column(d.scores, "index")
    score = column(d.scores, "score").astype(float)
    is_sel = np.isin(index, np.asarray(sel_idx))
    plt = pyplot()
    plots = [_score_hist(plt, score, is_sel)] if plt is not None else []
    if "n_tokens" in d.scores.column_names:
        nt = column(d.scores, "n_tokens").astype(float)
        r, rho, n = correlations(nt, score)
        if plt is not None:
            plots.append(_length_scatter(plt, nt, score, is_sel, r, rho))
        n_shown = min(len(score), MAX_SCATTER_POINTS)
        sampled = f" (plot shows {n_shown:,} sampled points)" if n_shown < len(score) and plt is not None else ""
        corr_html = (f'<p class="corr" id="length-correlation">Score vs length over {n:,} examples: '
                     f"Pearson r = <strong>{r:+.3f}</strong>, Spearman ρ = <strong>{rho:+.3f}</strong>{sampled}. "
                     "A sum of activations over tokens grows with length; a large value means the selection "
                     "is partly a length filter.</p>")
    else:
        corr_html = na("score vs length: no <code>n_tokens</code> column in scores.parquet.")
    meta = (d.scores.schema.metadata or {}).get(b"igds")
    meta_html = f"<details><summary>score-table metadata</summary><pre>{esc(meta.decode())}</pre></details>" if meta else ""
    thr = float(np.min(score[is_sel])) if is_sel.any() else float("nan")
    head = (f"<p>{k:,} of {len(score):,} examples selected ({k / len(score):.1%}, from {esc(src or 'default')}); "
            f"lowest selected score {fmt(thr, '.4g')}.</p>")
    plots_html = f'<div class="plots">{"".join(plots)}</div>' if plt is not None else NO_MATPLOTLIB
    return (note + head + plots_html + corr_html
            + '<div class="tables">' + _mix_table(d, sel_idx) + _overlap_table(d, sel_idx, k) + "</div>" + meta_html)
