"""Tables and statistics of an experiment: results.json / .csv / .md from the runs' results."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..artifacts import atomic_write_json, atomic_write_text
from ..config import ExperimentConfig
from ..tasks import Task


def headline_metric(task: Task) -> str:
    return str(task.metric)


def run_id(method: str, ratio: float, seed: int) -> str:
    return f"{method}-r{ratio:g}-s{seed}"


def eval_name(path: str, taken: Sequence[str]) -> str:
    """A short file-name-safe name for an eval file: ``gsm8k/test.jsonl`` -> ``gsm8k-test``."""
    p = Path(path)
    name = p.stem if p.parent.name in ("", ".") else f"{p.parent.name}-{p.stem}"
    return name if name not in taken else f"{name}#{len(taken)}"


def flatten_metrics(by_eval: dict[str, dict[str, float]]) -> dict[str, float]:
    """Headline eval set's metrics under their own names; the others as ``<eval>/<metric>``."""
    out: dict[str, float] = {}
    for i, (name, metrics) in enumerate(by_eval.items()):
        for k, v in metrics.items():
            out[k if i == 0 else f"{name}/{k}"] = v
    return out


def amplification(base_acts: Sequence[float] | None, acts: np.ndarray | None, eps: float) -> dict[str, Any]:
    """Feature amplification of a fine-tuned model against the base (see the module docstring)."""
    if base_acts is None or acts is None:
        return {"feature_amplification": None, "feature_log_ratio": None, "feature_ratios": None}
    b = np.asarray(base_acts, dtype=np.float64)
    a = np.asarray(acts, dtype=np.float64)
    log_ratio = np.log((a + eps) / (b + eps))
    mean_log = float(log_ratio.mean())
    return {"feature_amplification": float(math.exp(mean_log) - 1.0), "feature_log_ratio": mean_log,
            "feature_ratios": [float(x) for x in np.exp(log_ratio)]}


# ====================================================================== results
def mean_std(values: Sequence[float]) -> tuple[float, float | None, int]:
    """Mean, sample standard deviation (ddof=1; None for one value) and n."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return math.nan, None, 0
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None), int(len(v))


def correlation(x: Sequence[float | None], y: Sequence[float | None]) -> dict[str, Any]:
    """Pearson and Spearman correlation (scipy) over the pairs where both are known."""
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and math.isfinite(a)
             and math.isfinite(b)]
    out: dict[str, Any] = {"pearson": None, "pearson_p": None, "spearman": None, "spearman_p": None,
                           "n": len(pairs)}
    if len(pairs) < 3:
        out["note"] = "fewer than 3 runs with both numbers"
        return out
    a, b = np.array(pairs).T
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        out["note"] = "one of the two is constant across runs"
        return out
    from scipy import stats

    p = stats.pearsonr(a, b)
    s = stats.spearmanr(a, b)
    out.update(pearson=float(p.statistic), pearson_p=float(p.pvalue), spearman=float(s.statistic),
               spearman_p=float(s.pvalue))
    return out


def build_results(cfg: ExperimentConfig, metric: str, base: dict[str, Any], runs: list[dict[str, Any]]
                  ) -> dict[str, Any]:
    """results.json: the report's schema (task, metric, base, runs, correlation) plus a summary."""
    base_metrics = base.get("metrics", {})
    rows = []
    for r in runs:
        row = {k: r.get(k) for k in ("run", "method", "ratio", "seed", "n_train", "metrics", "feature_amplification",
                                     "feature_log_ratio")}
        gain = None
        if metric in r.get("metrics", {}) and metric in base_metrics:
            gain = r["metrics"][metric] - base_metrics[metric]
        row["task_gain"] = gain
        row["finetune_seconds"] = (r.get("finetune") or {}).get("seconds")
        row["finetune_steps"] = (r.get("finetune") or {}).get("steps")
        row["steps_mode"] = r.get("steps_mode", "epochs")  # runs from before equal_steps trained fixed epochs
        if r.get("same_training_as"):  # trained on the same rows as that run: its model and metrics
            row["same_training_as"] = r["same_training_as"]
        rows.append(row)
    summary = summarize(rows, metric)
    corr = correlation([r["feature_amplification"] for r in rows], [r["task_gain"] for r in rows])
    return {"name": cfg.name, "task": cfg.task if isinstance(cfg.task, str) else cfg.task.get("name", "custom"),
            "metric": metric, "model": cfg.igds.model.name,
            "base": {"metrics": base_metrics, "metrics_by_eval": base.get("metrics_by_eval", {})},
            "runs": rows, "summary": summary, "correlation": corr,
            "amplification_definition": "exp(mean over validated features of log((ft + eps) / (base + eps))) - 1, "
                                        "feature activations averaged over evaluation prompts"}


def summarize(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One cell per (method, ratio): mean, std and n of every metric, the gain and amplification."""
    cells: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["method"], float(r["ratio"])), []).append(r)
    out = []
    for (method, ratio), rs in cells.items():
        names = sorted({k for r in rs for k in r["metrics"]}, key=lambda k: (k != metric, k))
        cell: dict[str, Any] = {"method": method, "ratio": ratio, "n": len(rs), "seeds": [r["seed"] for r in rs],
                                "n_train": rs[0].get("n_train"), "metrics": {}}
        for k in names:
            m, s, n = mean_std([r["metrics"].get(k) for r in rs])
            cell["metrics"][k] = {"mean": m, "std": s, "n": n}
        for k in ("task_gain", "feature_amplification"):
            m, s, n = mean_std([r.get(k) for r in rs])
            cell[k] = {"mean": m if n else None, "std": s, "n": n}
        out.append(cell)
    return out


def fmt_cell(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def results_markdown(results: dict[str, Any]) -> str:
    metric = results["metric"]
    summary = results["summary"]
    base = results["base"]["metrics"]
    names = sorted({k for c in summary for k in c["metrics"]} | set(base), key=lambda k: (k != metric, k))
    head = ["method", "ratio", "n seeds", "n train", *names, f"gain ({metric})", "feature amplification"]
    lines = [f"# {results.get('name', 'experiment')}: {results['task']} on {results.get('model', '')}", "",
             f"Headline metric: `{metric}`. Cells: mean ± sample std (ddof=1) over seeds; "
             "no ± when there is one seed.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| base (no fine-tuning) | – | – | – | " +
                 " | ".join(fmt_cell(base.get(k), None) for k in names) + " | – | – |")
    for c in summary:
        vals = [fmt_cell(c["metrics"][k]["mean"], c["metrics"][k]["std"]) if k in c["metrics"] else "–"
                for k in names]
        g, a = c["task_gain"], c["feature_amplification"]
        lines.append(f"| {c['method']} | {c['ratio']:g} | {c['n']} | {c['n_train']} | " + " | ".join(vals) +
                     f" | {fmt_cell(g['mean'], g['std'])} | {fmt_cell(a['mean'], a['std'])} |")
    corr = results["correlation"]
    lines += ["", "## Feature amplification vs task gain", "",
              f"Amplification: {results['amplification_definition']}.", ""]
    if corr.get("pearson") is None:
        lines.append(f"Correlation not computed (n = {corr['n']}: {corr.get('note', '')}).")
    else:
        lines.append(f"Pearson r = {corr['pearson']:.3f} (p = {corr['pearson_p']:.3g}), "
                     f"Spearman ρ = {corr['spearman']:.3f} (p = {corr['spearman_p']:.3g}), n = {corr['n']} runs.")
    lines += ["", "## Runs", "", "| run | n train | " + " | ".join(names) + " | gain | amplification |",
              "|" + "---|" * (len(names) + 4)]
    for r in results["runs"]:
        lines.append(f"| {r['run']} | {r['n_train']} | " +
                     " | ".join(fmt_cell(r["metrics"].get(k), None) for k in names) +
                     f" | {fmt_cell(r['task_gain'], None)} | {fmt_cell(r['feature_amplification'], None)} |")
    return "\n".join(lines) + "\n"


def results_csv(results: dict[str, Any]) -> str:
    names = sorted({k for r in results["runs"] for k in r["metrics"]})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "method", "ratio", "seed", "n_train", *names, "task_gain", "feature_amplification",
                "feature_log_ratio", "finetune_seconds"])
    for r in results["runs"]:
        w.writerow([r["run"], r["method"], r["ratio"], r["seed"], r["n_train"],
                    *[r["metrics"].get(k, "") for k in names],
                    *["" if r.get(k) is None else r[k] for k in ("task_gain", "feature_amplification",
                                                                  "feature_log_ratio", "finetune_seconds")]])
    return buf.getvalue()


def write_results(exp_dir: Path, results: dict[str, Any]) -> None:
    atomic_write_json(exp_dir / "results.json", results)
    atomic_write_text(exp_dir / "results.csv", results_csv(results))
    atomic_write_text(exp_dir / "results.md", results_markdown(results))


