"""The ``#feature-cards`` section: per validated feature, what it promotes and where it fires in the pool."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..feature_set import Candidate, FeatureSet
from .features import np_link
from .fmt import esc, fmt, na
from .load import RunData, column, is_num
from .plots import KEPT, NO_MATPLOTLIB, img, pyplot

MAX_EXAMPLES_SHOWN = 4  # more sit behind a <details>


def _tokens_html(tokens: Sequence[str], acts: Sequence[float], vmax: float) -> str:
    """Tokens as spans whose orange background grows with the activation (hover shows the value)."""
    out = []
    for t, a in zip(tokens, acts):
        text = esc(t).replace("\n", "↵\n")
        if a > 0 and vmax > 0:
            alpha = min(1.0, 0.08 + 0.92 * a / vmax)
            out.append(f'<span class="tok" style="background:rgba(255,140,0,{alpha:.2f})" '
                       f'title="{a:.4g}" data-act="{a:.4g}">{text}</span>')
        else:
            out.append(f'<span class="tok" title="0">{text}</span>')
    return "".join(out)


def _visible(token: str) -> str:
    """A token with its whitespace drawn, so that ' the', 'the' and '\\n' are told apart."""
    return esc(token).replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"


def _act_hist(plt: Any, values: np.ndarray, key: str) -> str:
    """Histogram of a feature's non-zero activations over the pool."""
    values = values[np.isfinite(values)]
    nz = values[values > 0]
    fig, ax = plt.subplots(figsize=(3.5, 2.0))
    if len(nz):
        ax.hist(nz, bins=40, color=KEPT, alpha=0.85)
    ax.set_title(f"{key}: pool activation ({len(nz) / max(1, len(values)):.0%} non-zero)", fontsize=8.5)
    ax.set_xlabel("normalised activation (non-zero examples)", fontsize=8)
    ax.set_ylabel("examples", fontsize=8)
    ax.tick_params(labelsize=7)
    return img(fig, f"histogram of {key} activation over the pool")


def _card(d: RunData, fs: FeatureSet, c: Candidate, plt: Any) -> str:
    """One validated feature: statistics, promoted tokens, activation histogram and top pool examples."""
    key = c.key
    eff = c.effect
    effect = (f"mean Δ <strong>{fmt(eff.mean_delta, '+.3g')}</strong> ± {fmt(eff.se, '.2g')}"
              f" (n={fmt(eff.n, 'd')}, α={fmt(eff.alpha)})" if eff is not None else "effect not tested")
    stats = (f"task freq <strong>{fmt(c.task_freq, '.3f')}</strong> · ref freq "
             f"{fmt(c.ref_freq, '.3f')} · enrichment {fmt(c.enrichment, '.2f')} · "
             f"{effect} · scale {fmt(c.scale)}")
    promoted = c.promoted_tokens
    if promoted:
        chips = "".join(f'<span class="chip" title="logit {v:.4g}"><code>{_visible(t)}</code>'
                        f' <small>{v:.3g}</small></span>' for t, v in promoted[:12])
        prom = f'<div class="promoted"><h4>Promotes</h4>{chips}</div>'
    else:
        prom = '<div class="promoted"><h4>Promotes</h4>' + na("no <code>promoted_tokens</code>.") + "</div>"
    col = f"f:{key}"
    if d.scores is not None and col in d.scores.column_names:
        hist = _act_hist(plt, column(d.scores, col).astype(float), key) if plt is not None else NO_MATPLOTLIB
    elif d.scores is not None:
        hist = na(f"histogram: no column <code>{esc(col)}</code> in scores.parquet.")
    else:
        hist = na("histogram: <code>scores.parquet</code> not found.")
    if d.top_examples is None:
        exs_html = na("top examples: <code>top_examples.json</code> not found.")
    elif not d.top_examples.get(key):
        exs_html = na(f"top examples: none listed for {esc(key)} in top_examples.json.")
    else:
        exs = d.top_examples[key]
        vmax = max((max(ex["acts"], default=0.0) for ex in exs), default=0.0)
        items = []
        for ex in exs:
            peak = max(ex["acts"], default=0.0)
            label = " · ".join(x for x in (f"#{esc(ex['index'])}" if ex.get("index") is not None else "",
                                           esc(ex["id"]) if ex.get("id") is not None else "",
                                           f"example value {ex['value']:.3g}" if is_num(ex.get("value")) else "") if x)
            items.append(f'<div class="ex"><div class="exhead"><span>{label}</span><span>max token {peak:.3g}</span></div>'
                         f'<div class="toks">{_tokens_html(ex["tokens"], ex["acts"], vmax)}</div></div>')
        shown = "".join(items[:MAX_EXAMPLES_SHOWN])
        more = (f"<details><summary>{len(items) - MAX_EXAMPLES_SHOWN} more examples</summary>"
                f"{''.join(items[MAX_EXAMPLES_SHOWN:])}</details>" if len(items) > MAX_EXAMPLES_SHOWN else "")
        exs_html = shown + more
    link = np_link(fs, c)
    anchor = "card-" + esc(key).replace("/", "-")
    return (f'<article class="card" id="{anchor}"><header><h3>{esc(key)}</h3>{link}</header>'
            f'<p class="stats">{stats}</p><div class="cardgrid"><div class="side">{prom}{hist}</div>'
            f'<div class="examples"><h4>Top-activating pool examples</h4>{exs_html}</div></div></article>')


def section_cards(d: RunData) -> str:
    """``#feature-cards``: one card per validated feature, in the order features.json lists them."""
    if d.features is None:
        return na("<code>features.json</code> not found: no validated features to show.")
    val = d.features.validated_features
    if not val:
        return na("no feature passed the interventional filter.")
    plt = pyplot()
    cards = [_card(d, d.features, c, plt) for c in val]
    return (f"<p>{len(val)} validated feature{'s' if len(val) != 1 else ''}. Token background ∝ activation "
            "(hover a token for its value).</p>" + "".join(cards))

