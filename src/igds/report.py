"""Self-contained HTML report of a run directory: ``write_report(run_dir) -> Path``.

One file, ``RUN_DIR/report.html``, that opens offline: no CDN, fonts or scripts from
elsewhere; plots are matplotlib PNGs embedded as base64, sortable tables use a few lines
of inline vanilla JS. Sections (each says "Not available" with the reason when its inputs
are missing): ``#summary``, ``#features``, ``#feature-cards``, ``#selection``,
``#experiment``.

Inputs (all optional; a missing file degrades the section, a file that exists but is
malformed raises :class:`ReportError` naming the file, line and field):

* ``config.yaml``, ``run.json``, ``features.json``, ``feature_stats.parquet``,
  ``scores.parquet``, ``selection.jsonl``: as in ``docs/design.md``.
  From ``run.json`` the summary reads ``versions`` (dict), ``timings`` (stage -> seconds),
  ``wall_s``, ``started_at``, ``pool_size``, ``n_truncated``, ``n_rejected`` when present and
  lists every other key as it is. ``feature_stats.parquet`` needs columns ``layer``,
  ``feature``, ``task_freq`` and ``ref_freq``.
* ``top_examples.json``: per validated feature key, its top pool examples, best first::

      {"L15/F123": [{"index": 17, "id": "pool-17", "max_act": 4.2,
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
  absent or null. ``correlation`` is recomputed from the runs when absent.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .artifacts import atomic_write_text
from .selection import read_score_table, select_indices

__all__ = ["ReportError", "RunData", "load_run", "render_report", "write_report"]

KEPT, DROPPED, OTHER = "#2166ac", "#e08214", "#c8c8c8"
SELECTED, REJECTED = "#2166ac", "#bdbdbd"
SOURCE_FIELDS = ("source_dataset", "source", "dataset", "subset", "origin", "category", "domain", "task")
MAX_SCATTER_POINTS = 20000
MAX_EXAMPLES_SHOWN = 4


class ReportError(ValueError):
    """A run-directory file exists but cannot be used; says which file, line and field."""


# ====================================================================== loading
@dataclass
class RunData:
    """Everything the report reads from a run directory; ``None`` where a file is absent."""

    run_dir: Path
    config: dict[str, Any] | None = None
    config_text: str | None = None
    run: dict[str, Any] | None = None
    features: dict[str, Any] | None = None
    stats: pa.Table | None = None
    scores: pa.Table | None = None
    top_examples: dict[str, list[dict[str, Any]]] | None = None
    selection: list[dict[str, Any]] | None = None
    baselines: dict[str, pa.Table] = field(default_factory=dict)
    results: dict[str, Any] | None = None


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ReportError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}:{e.lineno}: malformed JSON: {e.msg} (column {e.colno})") from None


def _object(path: Path, obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ReportError(f"{path}: expected a JSON object at the top level, got {type(obj).__name__}")
    return obj


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_num(path: Path, where: str, obj: dict[str, Any], key: str, required: bool = False) -> None:
    if key not in obj or obj[key] is None:
        if required:
            raise ReportError(f"{path}: {where}: field {key!r} is missing")
        return
    if not _is_num(obj[key]):
        raise ReportError(f"{path}: {where}: field {key!r}: expected a number, got {obj[key]!r}")


def _objects(path: Path, container: dict[str, Any], name: str) -> list[tuple[str, dict[str, Any]]]:
    """``container[name]`` as ``(where, object)`` pairs; an error unless it is a list of objects."""
    items = container.get(name, [])
    if not isinstance(items, list):
        raise ReportError(f"{path}: field {name!r}: expected a list, got {type(items).__name__}")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ReportError(f"{path}: {name}[{i}]: expected an object, got {type(item).__name__}")
    return [(f"{name}[{i}]", item) for i, item in enumerate(items)]


def _check_str(path: Path, where: str, obj: dict[str, Any], key: str, like: str = "") -> None:
    if not isinstance(obj.get(key), str):
        raise ReportError(f"{path}: {where}: field {key!r}: expected a string{like}, got {obj.get(key)!r}")


def _check_features(path: Path, feats: dict[str, Any]) -> None:
    keys = set()
    for where, c in _objects(path, feats, "candidates"):
        _check_str(path, where, c, "key", " like 'L15/F123'")
        where = f"{where} ({c['key']})"
        for k in ("layer", "feature"):
            _check_num(path, where, c, k, required=True)
        for k in ("task_freq", "ref_freq", "task_mean_act", "ref_mean_act", "enrichment", "recall_score",
                  "recall_rank", "scale"):
            _check_num(path, where, c, k)
        eff = c.get("effect")
        if eff is not None:
            if not isinstance(eff, dict):
                raise ReportError(f"{path}: {where}: field 'effect': expected an object or null")
            for k in ("alpha", "n", "mean_delta", "se", "ci_low", "ci_high"):
                _check_num(path, f"{where}.effect", eff, k)
        pt = c.get("promoted_tokens")
        if pt is not None and not (isinstance(pt, list) and all(
                isinstance(p, (list, tuple)) and len(p) == 2 and isinstance(p[0], str) and _is_num(p[1]) for p in pt)):
            raise ReportError(f"{path}: {where}: field 'promoted_tokens': expected [[token, logit], ...]")
        keys.add(c["key"])
    val = feats.get("validated", [])
    if not isinstance(val, list) or not all(isinstance(v, str) for v in val):
        raise ReportError(f"{path}: field 'validated': expected a list of feature keys")
    unknown = [v for v in val if v not in keys]
    if unknown and keys:
        raise ReportError(f"{path}: field 'validated': {unknown[:3]} not among the candidates")
    _objects(path, feats, "saes")


def _check_top_examples(path: Path, raw: Any) -> dict[str, list[dict[str, Any]]]:
    raw = _object(path, raw)
    if set(raw) == {"features"} and isinstance(raw["features"], dict):
        raw = raw["features"]
    out: dict[str, list[dict[str, Any]]] = {}
    for key, exs in raw.items():
        if not isinstance(exs, list):
            raise ReportError(f"{path}: {key!r}: expected a list of examples, got {type(exs).__name__}")
        rows = []
        for j, ex in enumerate(exs):
            where = f"{key!r}[{j}]"
            if not isinstance(ex, dict):
                raise ReportError(f"{path}: {where}: expected an object")
            toks = ex.get("tokens")
            acts = ex.get("acts", ex.get("activations"))
            if not isinstance(toks, list) or not all(isinstance(t, str) for t in toks):
                raise ReportError(f"{path}: {where}: field 'tokens': expected a list of strings")
            if not isinstance(acts, list) or not all(_is_num(a) for a in acts):
                raise ReportError(f"{path}: {where}: field 'acts': expected a list of numbers")
            if len(toks) != len(acts):
                raise ReportError(f"{path}: {where}: {len(toks)} tokens but {len(acts)} activations")
            rows.append({**ex, "acts": acts})
        out[key] = rows
    return out


def _check_results(path: Path, res: dict[str, Any]) -> None:
    for where, r in _objects(path, res, "runs"):
        _check_str(path, where, r, "method")
        for k in ("ratio", "seed"):
            _check_num(path, where, r, k, required=True)
        for k in ("feature_amplification", "task_gain", "n_train"):
            _check_num(path, where, r, k)
        m = r.get("metrics")
        if not isinstance(m, dict) or not all(v is None or _is_num(v) for v in m.values()):
            raise ReportError(f"{path}: {where}: field 'metrics': expected an object of numbers")
    base = res.get("base")
    if base is not None and not (isinstance(base, dict) and isinstance(base.get("metrics", {}), dict)):
        raise ReportError(f"{path}: field 'base': expected {{\"metrics\": {{...}}}}")
    corr = res.get("correlation")
    if corr is not None:
        if not isinstance(corr, dict):
            raise ReportError(f"{path}: field 'correlation': expected an object")
        for k in ("pearson", "spearman", "n"):
            _check_num(path, "correlation", corr, k)


def _parquet(path: Path, need: Sequence[str]) -> pa.Table:
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise ReportError(f"{path}: cannot read as Parquet: {e}") from None
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise ReportError(f"{path}: missing columns {missing} (has {table.column_names[:8]})")
    return table


def _score_table(path: Path) -> pa.Table:
    try:
        return read_score_table(path)
    except ValueError:
        raise
    except Exception as e:
        raise ReportError(f"{path}: cannot read as a score table: {e}") from None


def load_run(run_dir: str | Path) -> RunData:
    """Read every report input that exists under ``run_dir``; validate what is read."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    d = RunData(run_dir=run_dir)
    p = run_dir / "config.yaml"
    if p.exists():
        import yaml

        d.config_text = p.read_text(encoding="utf-8")
        try:
            cfg = yaml.safe_load(d.config_text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ReportError(f"{p}{line}: malformed YAML: {getattr(e, 'problem', e)}") from None
        if cfg is not None and not isinstance(cfg, dict):
            raise ReportError(f"{p}: expected a mapping at the top level, got {type(cfg).__name__}")
        d.config = cfg or {}
    p = run_dir / "run.json"
    if p.exists():
        d.run = _object(p, _json_file(p))
    p = run_dir / "features.json"
    if p.exists():
        d.features = _object(p, _json_file(p))
        _check_features(p, d.features)
    p = run_dir / "feature_stats.parquet"
    if p.exists():
        d.stats = _parquet(p, ("layer", "feature", "task_freq", "ref_freq"))
    p = run_dir / "scores.parquet"
    if p.exists():
        d.scores = _score_table(p)
    p = run_dir / "top_examples.json"
    if p.exists():
        d.top_examples = _check_top_examples(p, _json_file(p))
    p = run_dir / "selection.jsonl"
    if p.exists():
        from .data import iter_records  # names file and line on bad rows

        d.selection = [rec for _, rec in iter_records(p)]
    bdir = run_dir / "baselines"
    if bdir.is_dir():
        for bp in sorted(bdir.glob("*.parquet")):
            t = _score_table(bp)
            if d.scores is not None and t.num_rows != d.scores.num_rows:
                raise ReportError(f"{bp}: {t.num_rows} rows, but scores.parquet has {d.scores.num_rows}: "
                                  "not a score table of the same pool")
            d.baselines[bp.stem] = t
    p = run_dir / "experiment" / "results.json"
    if p.exists():
        d.results = _object(p, _json_file(p))
        _check_results(p, d.results)
    return d


# ====================================================================== helpers
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: Any, spec: str = ".3g") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if _is_num(x):
        return format(x, spec)
    return _e(x)


def _td(x: Any, spec: str = ".3g", cls: str = "num") -> str:
    """A table cell whose sort key is the raw number (so '—' and formats sort right)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return '<td class="num" data-v="">—</td>'
    if _is_num(x):
        return f'<td class="{cls}" data-v="{float(x)!r}">{format(x, spec)}</td>'
    return f"<td>{_e(x)}</td>"


def _na(what: str) -> str:
    return f'<p class="na"><span>Not available</span> {what}</p>'


def _find(obj: Any, names: Iterable[str]) -> Any:
    """First value under any of ``names`` in a nested mapping (depth first), else None."""
    names = tuple(names)
    if isinstance(obj, dict):
        for n in names:
            if n in obj and obj[n] is not None:
                return obj[n]
        for v in obj.values():
            found = _find(v, names)
            if found is not None:
                return found
    return None


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (for Spearman's rho without scipy)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    start = 0
    for i in range(1, len(x) + 1):
        if i == len(x) or xs[i] != xs[start]:
            ranks[order[start:i]] = (start + i - 1) / 2.0
            start = i
    return ranks


def correlations(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, int]:
    """Pearson r, Spearman rho and n over the pairs where both are finite (NaN if undefined)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = int(len(a))
    if n < 3 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan"), float("nan"), n
    r = float(np.corrcoef(a, b)[0, 1])
    ra, rb = _ranks(a), _ranks(b)
    rho = float(np.corrcoef(ra, rb)[0, 1]) if np.std(ra) > 0 and np.std(rb) > 0 else float("nan")
    return r, rho, n


def _col(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


# ====================================================================== plots
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "axes.spines.top": False,
        "axes.spines.right": False, "axes.grid": True, "grid.color": "#e6e6e6", "grid.linewidth": 0.6,
        "axes.axisbelow": True, "legend.frameon": False, "font.family": "DejaVu Sans",
    })
    return plt


def _img(fig: Any, alt: str) -> str:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=144, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    w_px = int(fig.get_figwidth() * 96)
    return f'<img class="plot" style="width:{w_px}px" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _subsample(n: int, limit: int = MAX_SCATTER_POINTS) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=limit, replace=False))


# ====================================================================== summary
def _duration(s: Any) -> str:
    if not _is_num(s):
        return _e(s)
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {s % 60:02.0f} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _timings(run: dict[str, Any]) -> dict[str, Any]:
    t = run.get("timings_s", run.get("timings"))
    return t if isinstance(t, dict) else {}


def _config_value(cfg: dict[str, Any] | None, section: str, key: str) -> Any:
    """``cfg[section][key]`` (the layout config.yaml has), else None."""
    sec = (cfg or {}).get(section)
    return sec.get(key) if isinstance(sec, dict) else None


def _run_time(run: dict[str, Any]) -> str | None:
    for k in ("wall_s", "wall_seconds", "elapsed_s", "duration_s", "total_s"):
        if _is_num(run.get(k)):
            return _duration(run[k])
    t = _timings(run)
    if t:
        for k in ("total", "total_s", "wall_s"):
            if _is_num(t.get(k)):
                return _duration(t[k])
        vals = [v for v in t.values() if _is_num(v)]
        if vals:
            return f"{_duration(sum(vals))} (sum of stages)"
    return None


def _flat(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(obj, dict):
        out: list[tuple[str, Any]] = []
        for k, v in obj.items():
            out += _flat(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(obj, list) and len(obj) > 8:
        return [(prefix, f"[{len(obj)} items]")]
    return [(prefix, json.dumps(obj, ensure_ascii=False) if isinstance(obj, (list, dict)) else obj)]


def _selection_budget(d: RunData) -> tuple[int | None, str]:
    """How many examples IGDS selected and where that number comes from."""
    if d.scores is None:
        return None, ""
    n = d.scores.num_rows
    if d.selection is not None and 0 < len(d.selection) <= n:
        return len(d.selection), "selection.jsonl"
    budget = _config_value(d.config, "select", "budget")
    if _is_num(budget) and 0 < budget <= n:
        return int(budget), "select.budget in config.yaml"
    ratio = _config_value(d.config, "select", "ratio")
    if _is_num(ratio) and 0 < ratio <= 1:
        return max(1, int(math.floor(ratio * n + 0.5))), "select.ratio in config.yaml"
    return None, ""


def _section_summary(d: RunData) -> str:
    f, run, cfg = d.features or {}, d.run or {}, d.config or {}
    facts: list[tuple[str, str]] = []
    model = f.get("model") or run.get("model") or _config_value(cfg, "model", "name")
    device = " · ".join(_e(run[k]) for k in ("device", "dtype") if run.get(k))
    facts.append(("Model", (_e(model) if model else "—") + (f" <span class='muted'>{device}</span>" if device else "")))
    saes = f.get("saes") or []
    if saes:
        parts = []
        for s in saes:
            bits = [f"L{_e(s.get('layer', '?'))}", _e(s.get("architecture", "?"))]
            if s.get("d_sae"):
                bits.append(f"{_e(s['d_sae'])} latents")
            if s.get("k"):
                bits.append(f"k={_e(s['k'])}")
            src = f' <span class="muted">{_e(s["source"])}</span>' if s.get("source") else ""
            parts.append(" · ".join(bits) + src)
        facts.append(("SAE" + ("s" if len(saes) > 1 else ""), "<br>".join(parts)))
    else:
        sae = _find(cfg, ("sae",))
        facts.append(("SAE", _e(sae) if sae else "—"))
    layers = f.get("layers") or _find(cfg, ("layers", "layer"))
    facts.append(("Layers", _e(", ".join(map(str, layers)) if isinstance(layers, list) else layers) if layers else "—"))
    for label, key in (("Task probe", "probe"), ("Reference", "reference")):
        p = f.get(key)
        if isinstance(p, dict):
            facts.append((label, f"{_e(p.get('source', '?'))} <span class='muted'>{_fmt(p.get('n_examples'), ',')} "
                                 f"examples · {_fmt(p.get('n_tokens'), ',')} tokens</span>"))
        else:
            v = _find(cfg, (key, "task") if key == "probe" else (key,))
            facts.append((label, _e(v if not isinstance(v, dict) else json.dumps(v)) if v else "—"))
    pool = run.get("pool_size") or run.get("n_pool") or (d.scores.num_rows if d.scores is not None else None)
    facts.append(("Pool size", _fmt(pool, ",") if pool else "—"))
    k, src = _selection_budget(d)
    if k is not None and d.scores is not None:
        facts.append(("Selected", f"{k:,} of {d.scores.num_rows:,} ({k / d.scores.num_rows:.1%}) "
                                   f"<span class='muted'>from {_e(src)}</span>"))
    else:
        ratio = _config_value(cfg, "select", "ratio")
        facts.append(("Ratio", _fmt(ratio) if ratio is not None else "—"))
    if f:
        facts.append(("Features", f"{len(f.get('candidates', []))} candidates → "
                                  f"<strong>{len(f.get('validated', []))} validated</strong>"))
    rt = _run_time(run)
    facts.append(("Run time", rt or "—"))
    if run.get("started_at"):
        facts.append(("Started", _e(run["started_at"])))
    for k2 in ("n_truncated", "n_rejected"):
        if run.get(k2) is not None:
            facts.append((k2.replace("n_", "").capitalize() + " rows", _fmt(run[k2], ",")))
    versions = run.get("versions")
    if isinstance(versions, dict) and versions:
        facts.append(("Versions", " · ".join(f"{_e(k)} {_e(v)}" for k, v in versions.items())))
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    out = [f'<dl class="facts">{dl}</dl>']
    warnings = f.get("warnings") or []
    if warnings:
        out.append('<div class="warn"><strong>Warnings</strong><ul>'
                   + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul></div>")
    t = _timings(run)
    if t:
        out.append('<table class="compact"><thead><tr><th>stage</th><th>time</th></tr></thead><tbody>'
                   + "".join(f"<tr><td>{_e(k)}</td><td class='num'>{_duration(v)}</td></tr>" for k, v in t.items())
                   + "</tbody></table>")
    missing = [n for n, v in (("config.yaml", d.config_text), ("run.json", d.run), ("features.json", d.features))
               if v is None]
    if missing:
        out.append(_na(f"in this run directory: {', '.join(missing)} (summary built from what exists)."))
    if d.config_text is not None:
        out.append(f"<details><summary>config.yaml</summary><pre>{_e(d.config_text)}</pre></details>")
    if d.run:
        rows = "".join(f"<tr><td>{_e(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in _flat(d.run))
        out.append(f"<details><summary>run.json</summary><table class='compact'><tbody>{rows}</tbody></table></details>")
    return "".join(out)


# ====================================================================== features
def _np_link(feats: dict[str, Any], cand: dict[str, Any]) -> str:
    for s in feats.get("saes") or []:
        if s.get("layer") == cand.get("layer") and s.get("neuronpedia_id"):
            url = f"https://www.neuronpedia.org/{s['neuronpedia_id']}/{int(cand['feature'])}"
            return f'<a href="{_e(url)}" target="_blank" rel="noopener" title="open on Neuronpedia">Neuronpedia ↗</a>'
    return ""


def _effect_plot(cands: list[dict[str, Any]], validated: set[str]) -> str:
    rows = [c for c in cands if isinstance(c.get("effect"), dict) and _is_num(c["effect"].get("mean_delta"))
            and math.isfinite(c["effect"]["mean_delta"])]
    if not rows:
        return _na("intervention effects: no candidate has an <code>effect.mean_delta</code>.")
    rows = sorted(rows, key=lambda c: c["effect"]["mean_delta"])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.2, max(1.8, 0.2 * len(rows) + 0.9)))
    def finite(x: Any) -> bool:
        return _is_num(x) and math.isfinite(x)

    def has_ci(eff: dict[str, Any]) -> bool:
        return finite(eff.get("ci_low")) and finite(eff.get("ci_high"))

    n_ci = sum(has_ci(c["effect"]) for c in rows)
    for i, c in enumerate(rows):
        eff = c["effect"]
        m = eff["mean_delta"]
        if has_ci(eff):
            err = [[m - eff["ci_low"]], [eff["ci_high"] - m]]
        else:
            se = eff.get("se") if finite(eff.get("se")) else 0.0
            err = [[se], [se]]
        col = KEPT if c["key"] in validated else DROPPED
        ax.errorbar([m], [i], xerr=err, fmt="o", color=col, ms=4, capsize=2, lw=1)
    ax.axvline(0, color="#555", lw=0.8)
    ax.set_yticks(range(len(rows)), [c["key"] for c in rows], fontsize=7 if len(rows) > 25 else 8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    metric = rows[0]["effect"].get("metric", "loss")
    ax.set_xlabel(f"mean Δ {metric} under amplification (base − amplified; > 0 helps)")
    bars = "95% CI" if n_ci == len(rows) else "± 1 se" if n_ci == 0 else "95% CI, else ± 1 se"
    ax.set_title(f"Intervention effect ({bars})")
    from matplotlib.lines import Line2D

    ax.legend(handles=[Line2D([], [], color=KEPT, marker="o", lw=0, label="kept"),
                       Line2D([], [], color=DROPPED, marker="o", lw=0, label="dropped")], loc="lower right")
    ax.grid(axis="y", visible=False)
    return _img(fig, "intervention effect per candidate feature")


def _freq_scatter(d: RunData, cands: list[dict[str, Any]], validated: set[str]) -> str:
    if d.stats is None:
        return _na("recall scatter: <code>feature_stats.parquet</code> not found.")
    tf, rf = _col(d.stats, "task_freq").astype(float), _col(d.stats, "ref_freq").astype(float)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 4.2))
    idx = _subsample(len(tf), 100000)
    ax.scatter(rf[idx], tf[idx], s=3, color=OTHER, alpha=0.5, lw=0, rasterized=True,
               label=f"all features ({len(tf):,})")
    c_other = [c for c in cands if c["key"] not in validated]
    c_val = [c for c in cands if c["key"] in validated]
    if c_other:
        ax.scatter([c.get("ref_freq") or 0 for c in c_other], [c.get("task_freq") or 0 for c in c_other], s=18,
                   color=DROPPED, edgecolor="white", lw=0.5, label=f"candidates, dropped ({len(c_other)})")
    if c_val:
        ax.scatter([c.get("ref_freq") or 0 for c in c_val], [c.get("task_freq") or 0 for c in c_val], s=26,
                   color=KEPT, edgecolor="white", lw=0.5, label=f"validated ({len(c_val)})")
    hi = max(1e-6, float(np.nanmax(np.concatenate([tf, rf]))) if len(tf) else 1.0)
    ax.plot([0, hi], [0, hi], ls="--", color="#888", lw=0.8)
    ax.set_xlabel("frequency on reference text")
    ax.set_ylabel("frequency on task probe")
    ax.set_title("Recall: task vs reference frequency")
    ax.legend(loc="lower right", fontsize=8)
    return _img(fig, "task frequency vs reference frequency of every SAE feature")


def _layer_plot(cands: list[dict[str, Any]], validated: set[str]) -> str:
    layers = sorted({int(c["layer"]) for c in cands})
    if not layers:
        return ""
    n_c = [sum(1 for c in cands if int(c["layer"]) == L) for L in layers]
    n_v = [sum(1 for c in cands if int(c["layer"]) == L and c["key"] in validated) for L in layers]
    plt = _plt()
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
    return _img(fig, "number of candidate and validated features per layer")


def _section_features(d: RunData) -> str:
    if d.features is None:
        return _na("<code>features.json</code> not found: no recall or intervention statistics.")
    f = d.features
    cands = f.get("candidates") or []
    validated = set(f.get("validated") or [])
    if not cands:
        return _na("<code>features.json</code> lists no candidates.") + _freq_scatter(d, [], validated)
    head = ("<tr><th>feature</th><th>layer</th><th title='fraction of task-probe tokens where it fires'>task freq</th>"
            "<th title='fraction of reference tokens where it fires'>ref freq</th><th>enrichment</th>"
            "<th>task act</th><th>rank</th><th title='base − amplified loss; > 0 helps'>mean Δ</th>"
            "<th>± se</th><th>95% CI</th><th>n</th><th>status</th><th>link</th></tr>")
    body = []
    for c in cands:
        eff = c.get("effect") or {}
        kept = c["key"] in validated
        ci = (f"[{_fmt(eff.get('ci_low'), '+.2g')}, {_fmt(eff.get('ci_high'), '+.2g')}]"
              if _is_num(eff.get("ci_low")) and math.isfinite(eff["ci_low"]) else "—")
        status = ('<td data-v="1"><span class="pill kept">kept</span></td>' if kept else
                  '<td data-v="0"><span class="pill dropped">dropped</span></td>')
        anchor = f'<a href="#card-{_e(c["key"]).replace("/", "-")}">{_e(c["key"])}</a>' if kept else _e(c["key"])
        body.append(f"<tr><td data-v='{_e(c['key'])}'>{anchor}</td>{_td(c.get('layer'), 'd')}"
                    f"{_td(c.get('task_freq'), '.3f')}{_td(c.get('ref_freq'), '.3f')}{_td(c.get('enrichment'), '.2f')}"
                    f"{_td(c.get('task_mean_act'), '.3g')}{_td(c.get('recall_rank'), 'd')}"
                    f"{_td(eff.get('mean_delta'), '+.3g')}{_td(eff.get('se'), '.2g')}"
                    f"<td class='num'>{ci}</td>{_td(eff.get('n'), 'd')}{status}<td>{_np_link(f, c)}</td></tr>")
    table = (f'<div class="scroll"><table class="sortable" id="candidates-table"><thead>{head}</thead>'
             f'<tbody>{"".join(body)}</tbody></table></div>')
    cfg_bits = []
    for name in ("recall", "filter"):
        if isinstance(f.get(name), dict):
            cfg_bits.append(f"<details><summary>{name} settings</summary><pre>"
                            f"{_e(json.dumps(f[name], indent=2, ensure_ascii=False))}</pre></details>")
    tested = any(isinstance(c.get("effect"), dict) for c in cands)
    how = ("kept after amplification changed the task metric for the better" if tested else
           "kept without an interventional test (the causal filter was off)")
    intro = (f"<p>{len(cands)} feature{'s' if len(cands) != 1 else ''} recalled by frequency on the task probe vs "
             f"the reference text; <strong>{len(validated)}</strong> {how}. Click a column header to sort.</p>")
    plots = (f'<div class="plots"><div class="col">{_effect_plot(cands, validated)}{_layer_plot(cands, validated)}'
             f'</div>{_freq_scatter(d, cands, validated)}</div>')
    return intro + table + "".join(cfg_bits) + plots


# ====================================================================== feature cards
def _tokens_html(tokens: Sequence[str], acts: Sequence[float], vmax: float) -> str:
    out = []
    for t, a in zip(tokens, acts):
        text = _e(t).replace("\n", "↵\n")
        if a > 0 and vmax > 0:
            alpha = min(1.0, 0.08 + 0.92 * a / vmax)
            out.append(f'<span class="tok" style="background:rgba(255,140,0,{alpha:.2f})" '
                       f'title="{a:.4g}" data-act="{a:.4g}">{text}</span>')
        else:
            out.append(f'<span class="tok" title="0">{text}</span>')
    return "".join(out)


def _visible(token: str) -> str:
    """A token with its whitespace drawn, so that ' the', 'the' and '\\n' are told apart."""
    return _e(token).replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"


def _act_hist(values: np.ndarray, key: str) -> str:
    values = values[np.isfinite(values)]
    nz = values[values > 0]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.5, 2.0))
    if len(nz):
        ax.hist(nz, bins=40, color=KEPT, alpha=0.85)
    ax.set_title(f"{key}: pool activation ({len(nz) / max(1, len(values)):.0%} non-zero)", fontsize=8.5)
    ax.set_xlabel("normalised activation (non-zero examples)", fontsize=8)
    ax.set_ylabel("examples", fontsize=8)
    ax.tick_params(labelsize=7)
    return _img(fig, f"histogram of {key} activation over the pool")


def _card(d: RunData, c: dict[str, Any]) -> str:
    key = c["key"]
    eff = c.get("effect") or {}
    effect = (f"mean Δ <strong>{_fmt(eff.get('mean_delta'), '+.3g')}</strong> ± {_fmt(eff.get('se'), '.2g')}"
              f" (n={_fmt(eff.get('n'), 'd')}, α={_fmt(eff.get('alpha'))})" if eff else "effect not tested")
    stats = (f"task freq <strong>{_fmt(c.get('task_freq'), '.3f')}</strong> · ref freq "
             f"{_fmt(c.get('ref_freq'), '.3f')} · enrichment {_fmt(c.get('enrichment'), '.2f')} · "
             f"{effect} · scale {_fmt(c.get('scale'))}")
    promoted = c.get("promoted_tokens")
    if promoted:
        chips = "".join(f'<span class="chip" title="logit {v:.4g}"><code>{_visible(t)}</code>'
                        f' <small>{v:.3g}</small></span>' for t, v in promoted[:12])
        prom = f'<div class="promoted"><h4>Promotes</h4>{chips}</div>'
    else:
        prom = '<div class="promoted"><h4>Promotes</h4>' + _na("no <code>promoted_tokens</code>.") + "</div>"
    col = f"f:{key}"
    if d.scores is not None and col in d.scores.column_names:
        hist = _act_hist(_col(d.scores, col).astype(float), key)
    elif d.scores is not None:
        hist = _na(f"histogram: no column <code>{_e(col)}</code> in scores.parquet.")
    else:
        hist = _na("histogram: <code>scores.parquet</code> not found.")
    if d.top_examples is None:
        exs_html = _na("top examples: <code>top_examples.json</code> not found.")
    elif not d.top_examples.get(key):
        exs_html = _na(f"top examples: none listed for {_e(key)} in top_examples.json.")
    else:
        exs = d.top_examples[key]
        vmax = max((max(ex["acts"], default=0.0) for ex in exs), default=0.0)
        items = []
        for ex in exs:
            peak = max(ex["acts"], default=0.0)
            label = " · ".join(x for x in (f"#{_e(ex['index'])}" if ex.get("index") is not None else "",
                                           _e(ex["id"]) if ex.get("id") is not None else "",
                                           f"example value {ex['value']:.3g}" if _is_num(ex.get("value")) else "") if x)
            items.append(f'<div class="ex"><div class="exhead"><span>{label}</span><span>max token {peak:.3g}</span></div>'
                         f'<div class="toks">{_tokens_html(ex["tokens"], ex["acts"], vmax)}</div></div>')
        shown = "".join(items[:MAX_EXAMPLES_SHOWN])
        more = (f"<details><summary>{len(items) - MAX_EXAMPLES_SHOWN} more examples</summary>"
                f"{''.join(items[MAX_EXAMPLES_SHOWN:])}</details>" if len(items) > MAX_EXAMPLES_SHOWN else "")
        exs_html = shown + more
    link = _np_link(d.features or {}, c)
    anchor = "card-" + _e(key).replace("/", "-")
    return (f'<article class="card" id="{anchor}"><header><h3>{_e(key)}</h3>{link}</header>'
            f'<p class="stats">{stats}</p><div class="cardgrid"><div class="side">{prom}{hist}</div>'
            f'<div class="examples"><h4>Top-activating pool examples</h4>{exs_html}</div></div></article>')


def _section_cards(d: RunData) -> str:
    if d.features is None:
        return _na("<code>features.json</code> not found: no validated features to show.")
    by_key = {c["key"]: c for c in d.features.get("candidates") or []}
    val = d.features.get("validated") or []
    if not val:
        return _na("no feature passed the interventional filter.")
    cards = [_card(d, by_key.get(k, {"key": k, "layer": None, "feature": None})) for k in val]
    return (f"<p>{len(val)} validated feature{'s' if len(val) != 1 else ''}. Token background ∝ activation "
            "(hover a token for its value).</p>" + "".join(cards))


# ====================================================================== selection
def _source_labels(records: Sequence[dict[str, Any]]) -> tuple[str, list[str]] | None:
    from .data import DataSpec, detect_dialect

    if not records:
        return None
    for name in SOURCE_FIELDS:
        if any(isinstance(r.get(name), str) for r in records):
            return name, [str(r.get(name, "(none)")) for r in records]
    spec = DataSpec()
    return "dialect", [detect_dialect(r, spec) or "(unknown)" for r in records]


def _pool_records(d: RunData) -> list[dict[str, Any]] | None:
    """The pool's records when the config names a local file of the scored pool's size."""
    from .data import iter_records

    src = _config_value(d.config, "pool", "path")
    if d.scores is None or not isinstance(src, str) or src.startswith(("hf:", "builtin:")):
        return None  # never download a pool just for a table
    if (d.run or {}).get("n_rejected"):
        return None  # rejected rows shift pool positions away from score-table indices
    path = Path(src) if Path(src).is_absolute() else (d.run_dir / src if (d.run_dir / src).exists() else Path(src))
    if not path.is_file():
        return None
    n = d.scores.num_rows
    recs = [r for _, r in itertools.islice(iter_records(path), n + 1)]
    if len(recs) == n + 1 and _config_value(d.config, "pool", "limit") == n:
        recs = recs[:n]
    return recs if len(recs) == n else None


def _mix_table(d: RunData, sel_idx: list[int]) -> str:
    pool = _pool_records(d)
    if pool is not None:
        lab = _source_labels(pool)
        if lab is None:
            return _na("source mix: empty pool.")
        name, labels = lab
        index = _col(d.scores, "index")
        pos = {int(ix): i for i, ix in enumerate(index)}
        sel_labels = [labels[pos[i]] for i in sel_idx]
        rows = []
        for lab_v in sorted(set(labels), key=lambda v: -labels.count(v)):
            n_pool, n_sel = labels.count(lab_v), sel_labels.count(lab_v)
            rows.append(f"<tr><td>{_e(lab_v)}</td>{_td(n_pool, ',')}{_td(n_sel, ',')}"
                        f"{_td(100 * n_sel / max(1, len(sel_labels)), '.1f')}{_td(100 * n_sel / n_pool, '.1f')}</tr>")
        return (f"<div><h4>Mix by <code>{_e(name)}</code> (pool vs selection)</h4><table class='sortable compact'>"
                "<thead><tr><th>value</th><th>pool</th><th>selected</th><th>% of selection</th>"
                f"<th>% kept</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
    if d.selection:
        lab = _source_labels(d.selection)
        assert lab is not None
        name, labels = lab
        rows = [f"<tr><td>{_e(v)}</td>{_td(labels.count(v), ',')}{_td(100 * labels.count(v) / len(labels), '.1f')}</tr>"
                for v in sorted(set(labels), key=lambda v: -labels.count(v))]
        return (f"<div><h4>Mix of the selection by <code>{_e(name)}</code></h4><table class='sortable compact'>"
                f"<thead><tr><th>value</th><th>selected</th><th>% of selection</th></tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table></div>")
    return _na("source mix: no <code>selection.jsonl</code> and no local pool file in config.yaml.")


def _overlap_table(d: RunData, sel_idx: list[int], k: int) -> str:
    if not d.baselines:
        return _na("baseline overlap: no score tables under <code>baselines/</code>.")
    n = d.scores.num_rows  # type: ignore[union-attr]
    a = set(sel_idx)
    igds_scores = _col(d.scores, "score").astype(float)  # type: ignore[arg-type]
    rows = []
    for method, t in d.baselines.items():
        b = set(select_indices(t, budget=k))
        inter = len(a & b)
        _, rho, _ = correlations(igds_scores, _col(t, "score").astype(float))
        rows.append(f"<tr><td>{_e(method)}</td>{_td(inter, ',')}{_td(inter / len(a | b), '.3f')}"
                    f"{_td(100 * inter / k, '.1f')}{_td(rho, '+.3f')}</tr>")
    return (f"<div><h4>Overlap with baselines at the same budget ({k:,} of {n:,})</h4>"
            '<table class="sortable compact" id="overlap-table"><thead><tr><th>baseline</th><th>shared</th>'
            "<th>Jaccard</th><th>% of IGDS selection</th><th title='rank correlation of the two score columns'>"
            f"Spearman ρ of scores</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            f"<p class='muted'>Two independent random selections of this size share {100 * k / n:.1f}% on average.</p></div>")


def _section_selection(d: RunData) -> str:
    if d.scores is None:
        return _na("<code>scores.parquet</code> not found: no score distribution or selection to show.")
    k, src = _selection_budget(d)
    note = ""
    if k is None:
        k = max(1, int(math.floor(0.5 * d.scores.num_rows + 0.5)))
        note = _na("selection size: no selection.jsonl and no ratio in config.yaml; showing the top 50%.")
    sel_idx = select_indices(d.scores, budget=k)
    index = _col(d.scores, "index")
    score = _col(d.scores, "score").astype(float)
    is_sel = np.isin(index, np.asarray(sel_idx))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 3.0))
    fin = np.isfinite(score)
    bins = np.histogram_bin_edges(score[fin], bins=40) if fin.any() else 10
    ax.hist([score[fin & is_sel], score[fin & ~is_sel]], bins=bins, stacked=True, color=[SELECTED, REJECTED],
            label=[f"selected ({int(is_sel.sum()):,})", f"rejected ({int((~is_sel).sum()):,})"])
    ax.set_xlabel("score")
    ax.set_ylabel("examples")
    ax.set_title("Score distribution")
    ax.legend(fontsize=8)
    plots = [_img(fig, "histogram of scores, selected vs rejected")]
    corr_html = ""
    if "n_tokens" in d.scores.column_names:
        nt = _col(d.scores, "n_tokens").astype(float)
        r, rho, n = correlations(nt, score)
        fig, ax = plt.subplots(figsize=(4.8, 3.0))
        sub = _subsample(len(score))
        size = 5 if len(sub) > 2000 else 14
        ax.scatter(nt[sub][~is_sel[sub]], score[sub][~is_sel[sub]], s=size, color=REJECTED, lw=0, alpha=0.6,
                   label="rejected", rasterized=True)
        ax.scatter(nt[sub][is_sel[sub]], score[sub][is_sel[sub]], s=size, color=SELECTED, lw=0, alpha=0.6,
                   label="selected", rasterized=True)
        ax.set_xlabel("n_tokens")
        ax.set_ylabel("score")
        ax.set_title(f"Score vs length: Pearson r = {r:+.3f}, Spearman ρ = {rho:+.3f}")
        ax.legend(fontsize=8, markerscale=3)
        plots.append(_img(fig, "score vs number of tokens"))
        sampled = f" (plot shows {len(sub):,} sampled points)" if len(sub) < len(score) else ""
        corr_html = (f'<p class="corr" id="length-correlation">Score vs length over {n:,} examples: '
                     f"Pearson r = <strong>{r:+.3f}</strong>, Spearman ρ = <strong>{rho:+.3f}</strong>{sampled}. "
                     "A sum of activations over tokens grows with length; a large value means the selection "
                     "is partly a length filter.</p>")
    else:
        corr_html = _na("score vs length: no <code>n_tokens</code> column in scores.parquet.")
    meta = (d.scores.schema.metadata or {}).get(b"igds")
    meta_html = f"<details><summary>score-table metadata</summary><pre>{_e(meta.decode())}</pre></details>" if meta else ""
    thr = float(np.min(score[is_sel])) if is_sel.any() else float("nan")
    head = (f"<p>{k:,} of {len(score):,} examples selected ({k / len(score):.1%}, from {_e(src or 'default')}); "
            f"lowest selected score {_fmt(thr, '.4g')}.</p>")
    return (note + head + f'<div class="plots">{"".join(plots)}</div>' + corr_html
            + '<div class="tables">' + _mix_table(d, sel_idx) + _overlap_table(d, sel_idx, k) + "</div>" + meta_html)


# ====================================================================== experiment
def _section_experiment(d: RunData) -> str:
    if d.results is None:
        return _na("<code>experiment/results.json</code> not found: run <code>igds experiment</code> to compare "
                   "methods by fine-tuning.")
    res = d.results
    runs = res.get("runs") or []
    if not runs:
        return _na("experiment/results.json has no runs.")
    metrics: list[str] = []
    for r in runs:
        for m in r["metrics"]:
            if m not in metrics:
                metrics.append(m)
    head_metric = res.get("metric") if res.get("metric") in metrics else metrics[0] if metrics else None
    base = (res.get("base") or {}).get("metrics") or {}
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["method"], float(r["ratio"])), []).append(r)
    th = "".join(f"<th>{_e(m)}</th>" for m in metrics)
    rows = []
    if base:
        rows.append("<tr class='base'><td>base model</td><td data-v=''>—</td><td data-v=''>—</td>"
                    + "".join(_td(base.get(m), ".4g") for m in metrics) + "<td data-v=''>—</td><td data-v=''>—</td></tr>")
    for (method, ratio), rs in sorted(groups.items()):
        cells = []
        for m in metrics:
            vals = np.array([r["metrics"].get(m) for r in rs if _is_num(r["metrics"].get(m))], dtype=float)
            if len(vals) == 0:
                cells.append(_td(None))
                continue
            sd = f" <small>± {np.std(vals, ddof=1):.2g}</small>" if len(vals) > 1 else ""
            cells.append(f'<td class="num" data-v="{vals.mean()!r}">{vals.mean():.4g}{sd}</td>')
        gains = [r.get("task_gain") for r in rs if _is_num(r.get("task_gain"))]
        amps = [r.get("feature_amplification") for r in rs if _is_num(r.get("feature_amplification"))]
        rows.append(f"<tr><td>{_e(method)}</td>{_td(ratio, '.0%')}{_td(len(rs), 'd')}{''.join(cells)}"
                    f"{_td(float(np.mean(gains)) if gains else None, '+.3g')}"
                    f"{_td(float(np.mean(amps)) if amps else None, '+.3g')}</tr>")
    table = (f'<div class="scroll"><table class="sortable" id="results-table"><thead><tr><th>method</th><th>ratio</th>'
             f"<th>seeds</th>{th}<th>task gain</th><th>feature amplification</th></tr></thead>"
             f"<tbody>{''.join(rows)}</tbody></table></div><p class='muted'>Mean over seeds (± sample sd).</p>")
    plots = []
    plt = _plt()
    methods = sorted({r["method"] for r in runs})
    palette = plt.get_cmap("tab10")
    if head_metric:
        fig, ax = plt.subplots(figsize=(4.8, 3.0))
        for i, m in enumerate(methods):
            ratios = sorted({ra for (me, ra) in groups if me == m})
            ys = [np.mean([r["metrics"][head_metric] for r in groups[(m, ra)] if _is_num(r["metrics"].get(head_metric))]
                          or [np.nan]) for ra in ratios]
            ax.plot(ratios, ys, marker="o", color=palette(i % 10), label=m, lw=1.2, ms=4)
        if _is_num(base.get(head_metric)):
            ax.axhline(base[head_metric], color="#555", ls="--", lw=0.8, label="base")
        ax.set_xlabel("selection ratio")
        ax.set_ylabel(head_metric)
        ax.set_title(f"{head_metric} by method and ratio")
        ax.legend(fontsize=8)
        plots.append(_img(fig, f"{head_metric} by method and ratio"))
    pts = [r for r in runs if _is_num(r.get("feature_amplification")) and _is_num(r.get("task_gain"))]
    corr = res.get("correlation") or {}
    if pts:
        r_, rho_, n_ = correlations([p["feature_amplification"] for p in pts], [p["task_gain"] for p in pts])
        r_ = corr.get("pearson", r_) if corr.get("pearson") is not None else r_
        rho_ = corr.get("spearman", rho_) if corr.get("spearman") is not None else rho_
        n_ = int(corr.get("n", n_)) if corr.get("n") is not None else n_
        fig, ax = plt.subplots(figsize=(4.8, 3.0))
        for i, m in enumerate(methods):
            mp = [p for p in pts if p["method"] == m]
            if mp:
                ax.scatter([p["feature_amplification"] for p in mp], [p["task_gain"] for p in mp], s=22,
                           color=palette(i % 10), label=m, edgecolor="white", lw=0.5)
        ax.axhline(0, color="#999", lw=0.6)
        ax.set_xlabel("feature amplification")
        ax.set_ylabel("task gain")
        ax.set_title(f"Amplification vs gain: r = {_fmt(r_, '+.3f')}, ρ = {_fmt(rho_, '+.3f')} (n={n_})")
        ax.legend(fontsize=8)
        plots.append(_img(fig, "feature amplification vs task gain"))
        corr_html = (f'<p class="corr" id="amp-gain-correlation">Feature amplification vs task gain: Pearson r = '
                     f"<strong>{_fmt(r_, '+.3f')}</strong>, Spearman ρ = <strong>{_fmt(rho_, '+.3f')}</strong>, "
                     f"n = {n_}.{' ' + _e(corr['note']) if corr.get('note') else ''}</p>")
    else:
        corr_html = _na("amplification vs gain: no run has both <code>feature_amplification</code> and "
                        "<code>task_gain</code>.")
    per_run = "".join(
        f"<tr><td>{_e(r['method'])}</td>{_td(r['ratio'], '.0%')}{_td(r['seed'], 'd')}{_td(r.get('n_train'), ',')}"
        + "".join(_td(r["metrics"].get(m), ".4g") for m in metrics)
        + f"{_td(r.get('task_gain'), '+.4g')}{_td(r.get('feature_amplification'), '+.3g')}</tr>" for r in runs)
    details = (f"<details><summary>all {len(runs)} runs</summary><table class='sortable compact'><thead><tr>"
               f"<th>method</th><th>ratio</th><th>seed</th><th>n train</th>{th}<th>task gain</th><th>amplification</th>"
               f"</tr></thead><tbody>{per_run}</tbody></table></details>")
    task = f"<p>Task <strong>{_e(res['task'])}</strong>.</p>" if res.get("task") else ""
    return task + table + f'<div class="plots">{"".join(plots)}</div>' + corr_html + details


# ====================================================================== page
CSS = """
:root{--fg:#1d2430;--muted:#667085;--line:#e4e7ec;--bg:#fff;--soft:#f7f8fa;--accent:#2166ac}
*{box-sizing:border-box}
body{margin:0;background:var(--soft);color:var(--fg);font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,"DejaVu Sans",sans-serif;font-variant-numeric:tabular-nums}
header.top{background:#14213d;color:#fff;padding:18px 0 14px}
header.top .wrap{display:flex;align-items:baseline;gap:18px;flex-wrap:wrap}
header.top h1{font-size:20px;margin:0;font-weight:600}
header.top .sub{color:#c9d3e6;font-size:13px}
nav{position:sticky;top:0;z-index:5;background:#fff;border-bottom:1px solid var(--line)}
nav .wrap{display:flex;gap:20px;padding-top:8px;padding-bottom:8px;font-size:13px}
nav a{color:var(--fg);text-decoration:none}nav a:hover{color:var(--accent)}
.wrap{max-width:1200px;margin:0 auto;padding:0 24px}
section{background:var(--bg);border:1px solid var(--line);border-radius:8px;margin:18px 0;padding:6px 22px 18px}
h2{font-size:17px;margin:14px 0 10px;font-weight:600}h3{font-size:15px;margin:0}
h4{font-size:12px;margin:10px 0 6px;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}
a{color:var(--accent)}code,pre{font:12px/1.45 ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace}
pre{background:var(--soft);padding:10px;border-radius:6px;overflow:auto;max-height:360px}
.muted{color:var(--muted)}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 18px;margin:8px 0 12px}
dl.facts dt{color:var(--muted)}dl.facts dd{margin:0}
.na{color:#8a5a00;background:#fff8e6;border:1px solid #f5dfa5;border-radius:6px;padding:6px 10px;font-size:13px}
.na span{font-weight:600}
.warn{background:#fff1f0;border:1px solid #f3c2bd;border-radius:6px;padding:6px 12px;margin:8px 0}
.warn ul{margin:4px 0}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:13px;margin:6px 0 10px;background:#fff}
th,td{padding:4px 9px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{background:var(--soft);font-weight:600;position:sticky;top:0}
td.num,th.num{text-align:right}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th:hover{background:#eef2f7}
table.sortable th[aria-sort=ascending]::after{content:" ▲";font-size:9px}
table.sortable th[aria-sort=descending]::after{content:" ▼";font-size:9px}
tbody tr:nth-child(even){background:#fbfbfc}tr.base{font-style:italic}
table.compact{font-size:12.5px}
.pill{display:inline-block;padding:0 8px;border-radius:10px;font-size:12px}
.pill.kept{background:#dbe9f6;color:#134a7c}.pill.dropped{background:#fbe6d2;color:#8a4a0b}
.plots{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start;margin:10px 0}
.plots .col{display:flex;flex-direction:column;gap:16px}
img.plot{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px;background:#fff}
.tables{display:flex;flex-wrap:wrap;gap:36px;align-items:flex-start}
.tables p{max-width:460px}
.corr{font-size:13.5px}
details{margin:6px 0}summary{cursor:pointer;color:var(--muted);font-size:13px}
article.card{border:1px solid var(--line);border-radius:8px;padding:12px 16px;margin:14px 0}
article.card header{display:flex;gap:14px;align-items:baseline}
.stats{color:var(--muted);font-size:13px;margin:4px 0 6px}.stats strong{color:var(--fg)}
.cardgrid{display:grid;grid-template-columns:minmax(250px,350px) 1fr;gap:18px}
@media (max-width:860px){.cardgrid{grid-template-columns:1fr}}
.chip{display:inline-block;background:var(--soft);border:1px solid var(--line);border-radius:5px;padding:0 6px;
margin:0 4px 4px 0}.chip small{color:var(--muted)}
.ex{border:1px solid var(--line);border-radius:6px;margin:0 0 8px;overflow:hidden}
.exhead{display:flex;justify-content:space-between;font-size:11.5px;color:var(--muted);background:var(--soft);
padding:2px 8px}
.toks{padding:6px 8px;font:12.5px/1.7 ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;
white-space:pre-wrap;word-break:break-word;max-height:190px;overflow:auto}
.tok{border-radius:2px}.tok[data-act]{cursor:help}
footer{color:var(--muted);font-size:12px;padding:10px 0 30px}
"""

# Recorded before anything else runs so that any script error is visible in the DOM (tests read it).
JS_ERRORS = ("window.addEventListener('error',function(e){var r=document.documentElement;"
             "r.setAttribute('data-js-errors',(r.getAttribute('data-js-errors')||'')+e.message+';');});")

JS = r"""
(function(){
  function key(td){
    var v=td.getAttribute('data-v'); if(v===null) v=td.textContent.trim();
    if(v===''||v==='—') return {m:true};
    var x=Number(v); return isNaN(x)?{s:v.toLowerCase()}:{x:x};
  }
  function cmp(a,b){
    if(a.x!==undefined&&b.x!==undefined) return a.x-b.x;
    if(a.x!==undefined) return -1; if(b.x!==undefined) return 1;
    return a.s<b.s?-1:a.s>b.s?1:0;
  }
  function sortTable(table,col,dir){
    var tb=table.tBodies[0], rows=Array.prototype.slice.call(tb.rows);
    rows.sort(function(r1,r2){
      var a=key(r1.cells[col]), b=key(r2.cells[col]);
      if(a.m||b.m) return (a.m?1:0)-(b.m?1:0) || r1._i-r2._i;  // missing values always last
      return dir*cmp(a,b) || r1._i-r2._i;
    });
    rows.forEach(function(r){tb.appendChild(r);});
    Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,j){
      if(j===col) th.setAttribute('aria-sort',dir>0?'ascending':'descending'); else th.removeAttribute('aria-sort');
    });
  }
  var tables=document.querySelectorAll('table.sortable');
  Array.prototype.forEach.call(tables,function(table){
    if(!table.tHead||!table.tBodies.length) return;
    Array.prototype.forEach.call(table.tBodies[0].rows,function(r,i){r._i=i;});
    Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,j){
      th.tabIndex=0; th.title=th.title||'click to sort';
      function go(){ sortTable(table,j,th.getAttribute('aria-sort')==='descending'?1:-1); }
      th.addEventListener('click',go);
      th.addEventListener('keydown',function(e){ if(e.key==='Enter') go(); });
    });
  });
  // #selftest: sort every numeric column both ways, check the order, restore (used by the test suite).
  if(location.hash==='#selftest'){
    var bad=[];
    Array.prototype.forEach.call(tables,function(table,t){
      var ncol=table.tHead.rows[0].cells.length;
      for(var c=0;c<ncol;c++){
        [1,-1].forEach(function(dir){
          sortTable(table,c,dir);
          var ks=Array.prototype.map.call(table.tBodies[0].rows,function(r){return key(r.cells[c]);});
          for(var i=1;i<ks.length;i++){
            if(ks[i-1].m&&!ks[i].m) bad.push((table.id||t)+':'+c+' missing-before-value');
            else if(!ks[i-1].m&&!ks[i].m&&dir*cmp(ks[i-1],ks[i])>0) bad.push((table.id||t)+':'+c+':'+dir);
          }
        });
      }
      var tb=table.tBodies[0], rows=Array.prototype.slice.call(tb.rows);
      rows.sort(function(a,b){return a._i-b._i;}).forEach(function(r){tb.appendChild(r);});
      Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th){th.removeAttribute('aria-sort');});
    });
    document.body.setAttribute('data-selftest',bad.length?'fail '+bad.slice(0,5).join(' '):'pass');
  }
  document.body.setAttribute('data-report-ready','ok');
  document.body.setAttribute('data-sortable-tables',String(tables.length));
})();
"""

SECTIONS = (("summary", "Summary"), ("features", "Recalled vs validated features"),
            ("feature-cards", "Validated features"), ("selection", "Selection"), ("experiment", "Experiment"))


def render_report(run_dir: str | Path) -> str:
    """The report of ``run_dir`` as one self-contained HTML string."""
    d = load_run(run_dir)
    bodies = {"summary": _section_summary(d), "features": _section_features(d),
              "feature-cards": _section_cards(d), "selection": _section_selection(d),
              "experiment": _section_experiment(d)}
    from . import __version__

    model = (d.features or {}).get("model") or _find(d.config, ("model",)) or ""
    title = f"igds report · {Path(run_dir).resolve().name}"
    nav = "".join(f'<a href="#{sid}">{_e(name)}</a>' for sid, name in SECTIONS)
    sections = "".join(f'<section id="{sid}"><h2>{_e(name)}</h2>{bodies[sid]}</section>' for sid, name in SECTIONS)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<meta name='generator' content='igds {_e(__version__)}'>"
        f"<title>{_e(title)}</title><style>{CSS}</style><script>{JS_ERRORS}</script></head><body>"
        f"<header class='top'><div class='wrap'><h1>{_e(title)}</h1>"
        f"<span class='sub'>{_e(model)} · {_e(Path(run_dir).resolve())}</span></div></header>"
        f"<nav><div class='wrap'>{nav}</div></nav><main class='wrap'>{sections}</main>"
        f"<footer class='wrap'>Generated by igds {_e(__version__)} from the files in this run directory. "
        "Interpretability-guided data selection (Shi et al., arXiv 2604.25167).</footer>"
        f"<script>{JS}</script></body></html>\n"
    )


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render the report of ``run_dir`` and write it atomically to ``out`` (default ``RUN_DIR/report.html``)."""
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    atomic_write_text(path, render_report(run_dir))
    return path
