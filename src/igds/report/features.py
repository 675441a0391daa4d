"""The ``#features`` section: recalled candidates vs validated features, with effect, recall and layer plots."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from ..feature_set import Candidate, Effect, FeatureSet
from .fmt import esc, fmt, na, td
from .load import RunData, column
from .plots import DROPPED, KEPT, NO_MATPLOTLIB, OTHER, img, pyplot, subsample


def np_link(feats: FeatureSet, cand: Candidate) -> str:
    """A link to the candidate's page on Neuronpedia when its SAE has a Neuronpedia id, else ""."""
    for s in feats.info.saes or []:
        if s.get("layer") == cand.layer and s.get("neuronpedia_id"):
            url = f"https://www.neuronpedia.org/{s['neuronpedia_id']}/{cand.feature}"
            return f'<a href="{esc(url)}" target="_blank" rel="noopener" title="open on Neuronpedia">Neuronpedia ↗</a>'
    return ""


def _effect_plot(plt: Any, cands: list[Candidate], validated: set[str]) -> str:
    """Each tested candidate's mean effect with its CI (or se), kept vs dropped."""
    rows = [(c, c.effect) for c in cands if c.effect is not None and math.isfinite(c.effect.mean_delta)]
    if not rows:
        return na("intervention effects: no candidate has an <code>effect.mean_delta</code>.")
    rows = sorted(rows, key=lambda ce: ce[1].mean_delta)
    fig, ax = plt.subplots(figsize=(6.2, max(1.8, 0.2 * len(rows) + 0.9)))

    def has_ci(eff: Effect) -> bool:
        return math.isfinite(eff.ci_low) and math.isfinite(eff.ci_high)

    n_ci = sum(has_ci(eff) for _, eff in rows)
    for i, (c, eff) in enumerate(rows):
        m = eff.mean_delta
        if has_ci(eff):
            err = [[m - eff.ci_low], [eff.ci_high - m]]
        else:
            se = eff.se if math.isfinite(eff.se) else 0.0
            err = [[se], [se]]
        col = KEPT if c.key in validated else DROPPED
        ax.errorbar([m], [i], xerr=err, fmt="o", color=col, ms=4, capsize=2, lw=1)
    ax.axvline(0, color="#555", lw=0.8)
    ax.set_yticks(range(len(rows)), [c.key for c, _ in rows], fontsize=7 if len(rows) > 25 else 8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    metric = rows[0][1].metric
    ax.set_xlabel(f"mean Δ {metric} under amplification (base − amplified; > 0 helps)")
    bars = "95% CI" if n_ci == len(rows) else "± 1 se" if n_ci == 0 else "95% CI, else ± 1 se"
    ax.set_title(f"Intervention effect ({bars})")
    from matplotlib.lines import Line2D

    ax.legend(handles=[Line2D([], [], color=KEPT, marker="o", lw=0, label="kept"),
                       Line2D([], [], color=DROPPED, marker="o", lw=0, label="dropped")], loc="lower right")
    ax.grid(axis="y", visible=False)
    return img(fig, "intervention effect per candidate feature")


def _freq_scatter(plt: Any, d: RunData, cands: list[Candidate], validated: set[str]) -> str:
    """Task vs reference frequency of every SAE feature, candidates and validated ones on top."""
    if d.stats is None:
        return na("recall scatter: <code>feature_stats.parquet</code> not found.")
    tf, rf = column(d.stats, "task_freq").astype(float), column(d.stats, "ref_freq").astype(float)
    fig, ax = plt.subplots(figsize=(5.0, 4.2))
    idx = subsample(len(tf), 100000)
    ax.scatter(rf[idx], tf[idx], s=3, color=OTHER, alpha=0.5, lw=0, rasterized=True,
               label=f"all features ({len(tf):,})")
    c_other = [c for c in cands if c.key not in validated]
    c_val = [c for c in cands if c.key in validated]
    if c_other:
        ax.scatter([c.ref_freq or 0 for c in c_other], [c.task_freq or 0 for c in c_other], s=18,
                   color=DROPPED, edgecolor="white", lw=0.5, label=f"candidates, dropped ({len(c_other)})")
    if c_val:
        ax.scatter([c.ref_freq or 0 for c in c_val], [c.task_freq or 0 for c in c_val], s=26,
                   color=KEPT, edgecolor="white", lw=0.5, label=f"validated ({len(c_val)})")
    hi = max(1e-6, float(np.nanmax(np.concatenate([tf, rf]))) if len(tf) else 1.0)
    ax.plot([0, hi], [0, hi], ls="--", color="#888", lw=0.8)
    ax.set_xlabel("frequency on reference text")
    ax.set_ylabel("frequency on task probe")
    ax.set_title("Recall: task vs reference frequency")
    ax.legend(loc="lower right", fontsize=8)
    return img(fig, "task frequency vs reference frequency of every SAE feature")


def _layer_plot(plt: Any, cands: list[Candidate], validated: set[str]) -> str:
    """Candidates and validated features per layer."""
    layers = sorted({c.layer for c in cands})
    if not layers:
        return ""
    n_c = [sum(1 for c in cands if c.layer == L) for L in layers]
    n_v = [sum(1 for c in cands if c.layer == L and c.key in validated) for L in layers]
    fig, ax = plt.subplots(figsize=(max(2.6, 0.55 * len(layers) + 1.6), 2.6))
    x = np.arange(len(layers))
    ax.bar(x, n_c, color=OTHER, label="candidates", width=0.7)
    ax.bar(x, n_v, color=KEPT, label="validated", width=0.7)
    ax.set_xticks(x, [str(L) for L in layers])
    ax.set_xlabel("layer")
    ax.set_ylabel("features")
    ax.set_title("Layer distribution", pad=22)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0), borderaxespad=0.2)
    ax.grid(axis="x", visible=False)
    return img(fig, "number of candidate and validated features per layer")


def _confirmed(eff: Effect | None) -> str:
    """Half B's verdict: yes / no, or — without a split (or in an older features.json)."""
    if eff is None or eff.confirmed is None:
        return "—"
    return "yes" if eff.confirmed else "no"


def section_features(d: RunData) -> str:
    """``#features``: every recalled candidate with its recall and intervention statistics, and plots."""
    if d.features is None:
        return na("<code>features.json</code> not found: no recall or intervention statistics.")
    f = d.features
    cands = f.candidates
    validated = set(f.validated)
    plt = pyplot()
    if not cands:
        scatter = _freq_scatter(plt, d, [], validated) if plt is not None else NO_MATPLOTLIB
        return na("<code>features.json</code> lists no candidates.") + scatter
    head = ("<tr><th>feature</th><th>layer</th><th title='fraction of task-probe tokens where it fires'>task freq</th>"
            "<th title='fraction of reference tokens where it fires'>ref freq</th><th>enrichment</th>"
            "<th>task act</th><th>rank</th><th title='effect on the reference loss; > 0 helps'>mean Δ</th>"
            "<th>± se</th><th>95% CI</th><th>n</th><th title='Benjamini-Hochberg adjusted p'>BH p</th>"
            "<th title='confirmed on the held-out half of the validation set'>half B</th>"
            "<th title='share of its 50 strongest probe positions on template, not content, tokens'>template</th>"
            "<th>status</th><th>link</th></tr>")
    body = []
    for c in cands:
        eff = c.effect
        kept = c.key in validated
        ci = (f"[{fmt(eff.ci_low, '+.2g')}, {fmt(eff.ci_high, '+.2g')}]"
              if eff is not None and math.isfinite(eff.ci_low) else "—")
        screened_out = eff is not None and eff.edited is False
        status = ('<td data-v="1"><span class="pill kept">kept</span></td>' if kept else
                  f'<td data-v="0"><span class="pill dropped">{"screened out" if screened_out else "dropped"}'
                  '</span></td>')
        anchor = f'<a href="#card-{esc(c.key).replace("/", "-")}">{esc(c.key)}</a>' if kept else esc(c.key)
        body.append(f"<tr><td data-v='{esc(c.key)}'>{anchor}</td>{td(c.layer, 'd')}"
                    f"{td(c.task_freq, '.3f')}{td(c.ref_freq, '.3f')}{td(c.enrichment, '.2f')}"
                    f"{td(c.task_mean_act, '.3g')}{td(c.recall_rank, 'd')}"
                    f"{td(eff and eff.mean_delta, '+.3g')}{td(eff and eff.se, '.2g')}"
                    f"<td class='num'>{ci}</td>{td(eff and eff.n, 'd')}{td(eff and eff.p_adjusted, '.2g')}"
                    f"<td>{_confirmed(eff)}</td>{td(c.peak_template_share, '.0%')}{status}"
                    f"<td>{np_link(f, c)}</td></tr>")
    table = (f'<div class="scroll"><table class="sortable" id="candidates-table"><thead>{head}</thead>'
             f'<tbody>{"".join(body)}</tbody></table></div>')
    cfg_bits = []
    for name, settings in (("recall", f.info.recall), ("filter", f.info.filter)):
        if settings is not None:
            cfg_bits.append(f"<details><summary>{name} settings</summary><pre>"
                            f"{esc(json.dumps(settings, indent=2, ensure_ascii=False))}</pre></details>")
    tested = any(c.effect is not None for c in cands)
    estimator = (f.info.filter or {}).get("estimator", "amplify")
    edit = {"central": "removing vs doubling it", "gradient": "its gradient attribution",
            "screened": "removing vs doubling it, for the candidates its gradient attribution ranked highest; "
                        "the others are marked screened out"}.get(estimator, "amplifying it")
    how = (f"kept as scoring features (causal test: the reference loss under {edit})" if tested else
           "kept without an interventional test (the causal filter was off)")
    outcome = f" Filter: {esc(f.info.filter_outcome)}." if f.info.filter_outcome else ""
    recall = "ranked by gradient attribution" if (f.info.recall or {}).get("method") == "attribution" else \
        "recalled by firing frequency"
    if any(c.random_candidate for c in cands):
        recall = "drawn at random (the no-recall ablation)"
    intro = (f"<p>{len(cands)} candidate feature{'s' if len(cands) != 1 else ''} {recall} on the task probe vs "
             f"the reference text; <strong>{len(validated)}</strong> {how}.{outcome} "
             "Click a column header to sort.</p>")
    if plt is None:
        plots = NO_MATPLOTLIB
    else:
        plots = (f'<div class="plots"><div class="col">{_effect_plot(plt, cands, validated)}'
                 f'{_layer_plot(plt, cands, validated)}</div>{_freq_scatter(plt, d, cands, validated)}</div>')
    return intro + table + "".join(cfg_bits) + plots

