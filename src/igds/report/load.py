"""Reading and validating a run directory's artifacts for the report.

A missing file leaves its field ``None`` (the section that needs it says "Not available");
a file that exists but is malformed raises :class:`ReportError` naming the file, line and field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from ..feature_set import FeatureSet, is_num
from ..readers import iter_records
from ..selection import read_score_table


class ReportError(ValueError):
    """A run-directory file exists but cannot be used; says which file, line and field."""


@dataclass
class RunData:
    """Everything the report reads from a run directory; ``None`` where a file is absent."""

    run_dir: Path
    config: dict[str, Any] | None = None
    config_text: str | None = None
    run: dict[str, Any] | None = None
    features: FeatureSet | None = None
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


def _check_num(path: Path, where: str, obj: dict[str, Any], key: str, required: bool = False) -> None:
    if key not in obj or obj[key] is None:
        if required:
            raise ReportError(f"{path}: {where}: field {key!r} is missing")
        return
    if not is_num(obj[key]):
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
            if not isinstance(acts, list) or not all(is_num(a) for a in acts):
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
        if not isinstance(m, dict) or not all(v is None or is_num(v) for v in m.values()):
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
        try:
            d.features = FeatureSet.load(p)
        except ValueError as e:  # FeatureSet.load names the file, entry and field
            raise ReportError(str(e)) from None
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
        d.selection = [rec for _, rec in iter_records(p)]  # iter_records names file and line on bad rows
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



def column(table: pa.Table, name: str) -> np.ndarray:
    """One column of ``table`` as a numpy array."""
    return table.column(name).to_numpy(zero_copy_only=False)


def config_value(cfg: dict[str, Any] | None, section: str, key: str) -> Any:
    """``cfg[section][key]`` (the layout config.yaml has), else None."""
    sec = (cfg or {}).get(section)
    return sec.get(key) if isinstance(sec, dict) else None


def selection_budget(d: RunData) -> tuple[int | None, str]:
    """How many examples IGDS selected and where that number comes from."""
    if d.scores is None:
        return None, ""
    n = d.scores.num_rows
    if d.selection is not None and 0 < len(d.selection) <= n:
        return len(d.selection), "selection.jsonl"
    budget = config_value(d.config, "select", "budget")
    if is_num(budget) and 0 < budget <= n:
        return int(budget), "select.budget in config.yaml"
    ratio = config_value(d.config, "select", "ratio")
    if is_num(ratio) and 0 < ratio <= 1:
        return max(1, int(math.floor(ratio * n + 0.5))), "select.ratio in config.yaml"
    return None, ""
