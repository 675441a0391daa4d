"""The ``#summary`` section: model, SAEs, probe, pool, selection size, timings and versions."""

from __future__ import annotations

import json
from typing import Any

from ..feature_set import FeatureInfo
from .fmt import esc, first_value, fmt, na
from .load import RunData, config_value, is_num, selection_budget


def _duration(s: Any) -> str:
    """Seconds as "12.3 s", "4 min 05 s" or "2 h 07 min"."""
    if not is_num(s):
        return esc(s)
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {s % 60:02.0f} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _timings(run: dict[str, Any]) -> dict[str, Any]:
    """Stage -> seconds from run.json (``timings_s``; older runs wrote ``timings``)."""
    t = run.get("timings_s", run.get("timings"))
    return t if isinstance(t, dict) else {}


def _run_time(run: dict[str, Any]) -> str | None:
    """The run's wall time, else the total or sum of its stage timings."""
    for k in ("wall_s", "wall_seconds", "elapsed_s", "duration_s", "total_s"):
        if is_num(run.get(k)):
            return _duration(run[k])
    t = _timings(run)
    if t:
        for k in ("total", "total_s", "wall_s"):
            if is_num(t.get(k)):
                return _duration(t[k])
        vals = [v for v in t.values() if is_num(v)]
        if vals:
            return f"{_duration(sum(vals))} (sum of stages)"
    return None


def _flat(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """A nested mapping as (dotted key, value) rows; long lists are shown by their length."""
    if isinstance(obj, dict):
        out: list[tuple[str, Any]] = []
        for k, v in obj.items():
            out += _flat(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(obj, list) and len(obj) > 8:
        return [(prefix, f"[{len(obj)} items]")]
    return [(prefix, json.dumps(obj, ensure_ascii=False) if isinstance(obj, (list, dict)) else obj)]


def _facts(d: RunData) -> list[tuple[str, str]]:
    """(label, HTML) rows: model, SAEs, layers, probe, reference, pool, selection, run time, versions."""
    f, run, cfg = d.features, d.run or {}, d.config or {}
    info = f.info if f is not None else FeatureInfo()
    facts: list[tuple[str, str]] = []
    model = info.model or run.get("model") or config_value(cfg, "model", "name")
    device = " · ".join(esc(run[k]) for k in ("device", "dtype") if run.get(k))
    facts.append(("Model", (esc(model) if model else "—") + (f" <span class='muted'>{device}</span>" if device else "")))
    saes = info.saes or []
    if saes:
        parts = []
        for s in saes:
            bits = [f"L{esc(s.get('layer', '?'))}", esc(s.get("architecture", "?"))]
            if s.get("d_sae"):
                bits.append(f"{esc(s['d_sae'])} latents")
            if s.get("k"):
                bits.append(f"k={esc(s['k'])}")
            src = f' <span class="muted">{esc(s["source"])}</span>' if s.get("source") else ""
            parts.append(" · ".join(bits) + src)
        facts.append(("SAE" + ("s" if len(saes) > 1 else ""), "<br>".join(parts)))
    else:
        sae = first_value(cfg, ("sae",))
        facts.append(("SAE", esc(sae) if sae else "—"))
    layers = info.layers or first_value(cfg, ("layers", "layer"))
    facts.append(("Layers", esc(", ".join(map(str, layers)) if isinstance(layers, list) else layers) if layers else "—"))
    for label, key, p in (("Task probe", "probe", info.probe), ("Reference", "reference", info.reference)):
        if p is not None:
            facts.append((label, f"{esc(p.source or '?')} <span class='muted'>{fmt(p.n_examples, ',')} "
                                 f"examples · {fmt(p.n_tokens, ',')} tokens</span>"))
        else:
            v = first_value(cfg, (key, "task") if key == "probe" else (key,))
            facts.append((label, esc(v if not isinstance(v, dict) else json.dumps(v)) if v else "—"))
    pool = run.get("pool_size") or run.get("n_pool") or (d.scores.num_rows if d.scores is not None else None)
    facts.append(("Pool size", fmt(pool, ",") if pool else "—"))
    k, src = selection_budget(d)
    if k is not None and d.scores is not None:
        facts.append(("Selected", f"{k:,} of {d.scores.num_rows:,} ({k / d.scores.num_rows:.1%}) "
                                   f"<span class='muted'>from {esc(src)}</span>"))
    else:
        ratio = config_value(cfg, "select", "ratio")
        facts.append(("Ratio", fmt(ratio) if ratio is not None else "—"))
    if f is not None:
        facts.append(("Features", f"{len(f.candidates)} candidates → "
                                  f"<strong>{len(f.validated)} validated</strong>"))
    rt = _run_time(run)
    facts.append(("Run time", rt or "—"))
    if run.get("started_at"):
        facts.append(("Started", esc(run["started_at"])))
    for k2 in ("n_truncated", "n_rejected"):
        if run.get(k2) is not None:
            facts.append((k2.replace("n_", "").capitalize() + " rows", fmt(run[k2], ",")))
    versions = run.get("versions")
    if isinstance(versions, dict) and versions:
        facts.append(("Versions", " · ".join(f"{esc(k)} {esc(v)}" for k, v in versions.items())))
    return facts


def section_summary(d: RunData) -> str:
    """``#summary``: what ran on what, how long it took, warnings, and config.yaml and run.json in full."""
    run = d.run or {}
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in _facts(d))
    out = [f'<dl class="facts">{dl}</dl>']
    warnings = d.features.warnings if d.features is not None else []
    if warnings:
        out.append('<div class="warn"><strong>Warnings</strong><ul>'
                   + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul></div>")
    t = _timings(run)
    if t:
        out.append('<table class="compact"><thead><tr><th>stage</th><th>time</th></tr></thead><tbody>'
                   + "".join(f"<tr><td>{esc(k)}</td><td class='num'>{_duration(v)}</td></tr>" for k, v in t.items())
                   + "</tbody></table>")
    missing = [n for n, v in (("config.yaml", d.config_text), ("run.json", d.run), ("features.json", d.features))
               if v is None]
    if missing:
        out.append(na(f"in this run directory: {', '.join(missing)} (summary built from what exists)."))
    if d.config_text is not None:
        out.append(f"<details><summary>config.yaml</summary><pre>{esc(d.config_text)}</pre></details>")
    if d.run:
        rows = "".join(f"<tr><td>{esc(k)}</td><td>{fmt(v)}</td></tr>" for k, v in _flat(d.run))
        out.append(f"<details><summary>run.json</summary><table class='compact'><tbody>{rows}</tbody></table></details>")
    return "".join(out)

