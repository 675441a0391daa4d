"""The ``#experiment`` section: fine-tuning results per method and ratio, and amplification vs task gain.

Reads ``experiment/results.json`` as the experiment runner writes it (schema in the package docstring).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .fmt import esc, fmt, na, td
from .load import RunData, is_num
from .plots import NO_MATPLOTLIB, img, pyplot
from .stats import correlations

Groups = dict[tuple[str, float], list[dict[str, Any]]]


def _results_table(groups: Groups, metrics: list[str], base: dict[str, Any]) -> str:
    """Mean (± sample sd) of every metric per (method, ratio), with the base model first."""
    th = "".join(f"<th>{esc(m)}</th>" for m in metrics)
    rows = []
    if base:
        rows.append("<tr class='base'><td>base model</td><td data-v=''>—</td><td data-v=''>—</td>"
                    + "".join(td(base.get(m), ".4g") for m in metrics) + "<td data-v=''>—</td><td data-v=''>—</td></tr>")
    for (method, ratio), rs in sorted(groups.items()):
        cells = []
        for m in metrics:
            vals = np.array([r["metrics"].get(m) for r in rs if is_num(r["metrics"].get(m))], dtype=float)
            if len(vals) == 0:
                cells.append(td(None))
                continue
            sd = f" <small>± {np.std(vals, ddof=1):.2g}</small>" if len(vals) > 1 else ""
            cells.append(f'<td class="num" data-v="{vals.mean()!r}">{vals.mean():.4g}{sd}</td>')
        gains = [r.get("task_gain") for r in rs if is_num(r.get("task_gain"))]
        amps = [r.get("feature_amplification") for r in rs if is_num(r.get("feature_amplification"))]
        rows.append(f"<tr><td>{esc(method)}</td>{td(ratio, '.0%')}{td(len(rs), 'd')}{''.join(cells)}"
                    f"{td(float(np.mean(gains)) if gains else None, '+.3g')}"
                    f"{td(float(np.mean(amps)) if amps else None, '+.3g')}</tr>")
    return (f'<div class="scroll"><table class="sortable" id="results-table"><thead><tr><th>method</th><th>ratio</th>'
            f"<th>seeds</th>{th}<th>task gain</th><th>feature amplification</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div><p class='muted'>Mean over seeds (± sample sd).</p>")


def _metric_plot(plt: Any, groups: Groups, methods: list[str], metric: str, base: dict[str, Any]) -> str:
    """The headline metric against the selection ratio, one line per method, base model dashed."""
    palette = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(4.8, 3.0))
    for i, m in enumerate(methods):
        ratios = sorted({ra for (me, ra) in groups if me == m})
        ys = [np.mean([r["metrics"][metric] for r in groups[(m, ra)] if is_num(r["metrics"].get(metric))]
                      or [np.nan]) for ra in ratios]
        ax.plot(ratios, ys, marker="o", color=palette(i % 10), label=m, lw=1.2, ms=4)
    if is_num(base.get(metric)):
        ax.axhline(base[metric], color="#555", ls="--", lw=0.8, label="base")
    ax.set_xlabel("selection ratio")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} by method and ratio")
    ax.legend(fontsize=8)
    return img(fig, f"{metric} by method and ratio")


def _amp_gain_plot(plt: Any, pts: list[dict[str, Any]], methods: list[str], r: float, rho: float, n: int) -> str:
    """Feature amplification against task gain, one colour per method."""
    palette = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(4.8, 3.0))
    for i, m in enumerate(methods):
        mp = [p for p in pts if p["method"] == m]
        if mp:
            ax.scatter([p["feature_amplification"] for p in mp], [p["task_gain"] for p in mp], s=22,
                       color=palette(i % 10), label=m, edgecolor="white", lw=0.5)
    ax.axhline(0, color="#999", lw=0.6)
    ax.set_xlabel("feature amplification")
    ax.set_ylabel("task gain")
    ax.set_title(f"Amplification vs gain: r = {fmt(r, '+.3f')}, ρ = {fmt(rho, '+.3f')} (n={n})")
    ax.legend(fontsize=8)
    return img(fig, "feature amplification vs task gain")


def _amp_gain_correlation(corr: dict[str, Any], pts: list[dict[str, Any]]) -> tuple[float, float, int]:
    """Pearson r, Spearman rho and n of amplification vs gain.

    The experiment runner stores them in results.json (computed with scipy); only the fields it
    left out or null (fewer than 3 runs, a constant column, an older file) are computed here.
    """
    stored = {k: corr.get(k) for k in ("pearson", "spearman", "n")}
    if all(v is not None for v in stored.values()):
        return stored["pearson"], stored["spearman"], int(stored["n"])
    r, rho, n = correlations([p["feature_amplification"] for p in pts], [p["task_gain"] for p in pts])
    return (stored["pearson"] if stored["pearson"] is not None else r,
            stored["spearman"] if stored["spearman"] is not None else rho,
            int(stored["n"]) if stored["n"] is not None else n)


def section_experiment(d: RunData) -> str:
    """``#experiment``: the results table, metric-by-ratio and amplification-vs-gain plots, and every run."""
    if d.results is None:
        return na("<code>experiment/results.json</code> not found: run <code>igds experiment</code> to compare "
                  "methods by fine-tuning.")
    res = d.results
    runs = res.get("runs") or []
    if not runs:
        return na("experiment/results.json has no runs.")
    metrics: list[str] = []
    for r in runs:
        for m in r["metrics"]:
            if m not in metrics:
                metrics.append(m)
    head_metric = res.get("metric") if res.get("metric") in metrics else metrics[0] if metrics else None
    base = (res.get("base") or {}).get("metrics") or {}
    groups: Groups = {}
    for r in runs:
        groups.setdefault((r["method"], float(r["ratio"])), []).append(r)
    table = _results_table(groups, metrics, base)
    plt = pyplot()
    methods = sorted({r["method"] for r in runs})
    plots = []
    if head_metric and plt is not None:
        plots.append(_metric_plot(plt, groups, methods, head_metric, base))
    pts = [r for r in runs if is_num(r.get("feature_amplification")) and is_num(r.get("task_gain"))]
    corr = res.get("correlation") or {}
    if pts:
        r_, rho_, n_ = _amp_gain_correlation(corr, pts)
        if plt is not None:
            plots.append(_amp_gain_plot(plt, pts, methods, r_, rho_, n_))
        corr_html = (f'<p class="corr" id="amp-gain-correlation">Feature amplification vs task gain: Pearson r = '
                     f"<strong>{fmt(r_, '+.3f')}</strong>, Spearman ρ = <strong>{fmt(rho_, '+.3f')}</strong>, "
                     f"n = {n_}.{' ' + esc(corr['note']) if corr.get('note') else ''}</p>")
    else:
        corr_html = na("amplification vs gain: no run has both <code>feature_amplification</code> and "
                       "<code>task_gain</code>.")
    th = "".join(f"<th>{esc(m)}</th>" for m in metrics)
    per_run = "".join(
        f"<tr><td>{esc(r['method'])}</td>{td(r['ratio'], '.0%')}{td(r['seed'], 'd')}{td(r.get('n_train'), ',')}"
        + "".join(td(r["metrics"].get(m), ".4g") for m in metrics)
        + f"{td(r.get('task_gain'), '+.4g')}{td(r.get('feature_amplification'), '+.3g')}</tr>" for r in runs)
    details = (f"<details><summary>all {len(runs)} runs</summary><table class='sortable compact'><thead><tr>"
               f"<th>method</th><th>ratio</th><th>seed</th><th>n train</th>{th}<th>task gain</th><th>amplification</th>"
               f"</tr></thead><tbody>{per_run}</tbody></table></details>")
    task = f"<p>Task <strong>{esc(res['task'])}</strong>.</p>" if res.get("task") else ""
    plots_html = f'<div class="plots">{"".join(plots)}</div>' if plt is not None else NO_MATPLOTLIB
    return task + table + plots_html + corr_html + details
