"""Within-task protocol: equal optimiser steps, several seeds, a decision rule fixed in advance.

    python benchmarks/protocol.py                          # every task and seed (resumable)
    python benchmarks/protocol.py --tasks summarization --seeds 0 1   # a part, now
    python benchmarks/protocol.py --collect-only           # rebuild the tables from finished runs
    python benchmarks/protocol.py --diagnostics --tasks math   # each arm's selection diagnostics, no training

Each task is an ``igds experiment`` config in ``benchmarks/protocol/<task>.yaml``: 50% of a
160-row pool, every arm trained for Full's step count (``finetune.equal_steps``), the task
metric on 200 test rows and the reference loss on 500 held-out rows (``eval.loss_paths``).
The script writes ``benchmarks/results/protocol.{md,json}`` and each task's block in
BENCHMARKS.md §1e. The decision rule (pre-registered in BENCHMARKS.md §1e, and implemented
by :func:`verdict`): a claim "A is better than B" is **met** when A's mean is better than B's
by more than 2 pooled standard errors on both the task metric and the held-out reference
loss, **not met** when B's is better by more than 2 on either, and **undecided** otherwise.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import time
from datetime import date
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from diagnostics import selection_diagnostics, top_indices
from igds.artifacts import atomic_write_json, atomic_write_text, read_json, stable_hash
from igds.config import IGDS_DERIVED, IGDS_METHODS
from igds.experiment import (Experiment, headline_metric, load_experiment_config, method_dir, run_experiment,
                             run_id)
from igds.selection import select_indices
from splice import splice

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "benchmarks" / "protocol"
TASKS = ("summarization", "math", "translation")
METHODS = ("full", "random", "igds", "igds_recall_only", "igds_random_candidates",
           "igds_paper", "igds_quota", "igds_coverage", "igds_low", "igds_zscore", "igds_content", "igds_jaccard")
LABELS = {"full": "Full (100%)", "random": "Random", "igds": "**IGDS**",
          "igds_recall_only": "IGDS, recall only (no causal filter)",
          "igds_random_candidates": "IGDS, random candidates (no recall)",
          "igds_paper": "IGDS, paper preset (amplification filter)",
          "igds_quota": "IGDS, quota selection", "igds_coverage": "IGDS, coverage selection",
          "igds_low": "IGDS, lowest scores (direction check)",
          "igds_zscore": "IGDS, effect-weighted z-scores", "igds_content": "IGDS, content positions",
          "igds_jaccard": "igds_jaccard (whole code, causal weights)"}
# (A, B): the claim "A is better than B", each checked by the pre-registered rule. Claims 7-12 came with
# the first arms of issue #13, claims 13-18 with its second batch (both registered 2026-12-03, before any
# of their runs); a task runs the arms its config lists.
COMPARISONS = (("igds", "random"), ("igds", "full"), ("igds", "igds_recall_only"),
               ("igds", "igds_random_candidates"), ("igds_recall_only", "random"),
               ("igds_random_candidates", "random"),
               ("igds_paper", "random"), ("igds_quota", "random"), ("igds_coverage", "random"),
               ("igds_quota", "igds"), ("igds_coverage", "igds"), ("igds", "igds_low"),
               ("igds_zscore", "random"), ("igds_content", "random"), ("igds_jaccard", "random"),
               ("igds_zscore", "igds"), ("igds_content", "igds"), ("igds_jaccard", "igds"))
THRESHOLD = 2.0  # pooled standard errors
# Finished runs' result.json files, kept in the repository: the runs/ folder does not outlive the
# machine, and a sitting may end mid-protocol. Before a task runs they are put back under runs/
# (the experiment re-checks each one's key, so a run whose settings changed is redone).
ARCHIVE = ROOT / "benchmarks" / "results" / "protocol-runs"


def archive(exp: Experiment, task: str, restore: bool, base_checked: bool = False) -> int:
    """Copy finished results between ``exp``'s folder and :data:`ARCHIVE`.

    Only results whose key matches the current settings move (a stale one never replaces a
    current one, either way); restoring replaces a stale live result. The base model's key needs
    the features, so its result moves when the other side lacks it, and replaces the kept one
    when ``base_checked`` (an experiment has just read it, re-evaluating it if it was stale)."""
    keys = {p: exp.run_key(*p) for p in exp.plan()}  # once: each key hashes the pool and eval files

    def current(path: Path, plan: tuple[str, float, int] | None) -> bool:
        return path.exists() and (plan is None or read_json(path).get("key") == keys[plan])

    pairs: list[tuple[Path, Path, tuple[str, float, int] | None]] = [
        (exp.exp_dir / "base" / "result.json", ARCHIVE / task / "base.json", None)]
    pairs += [(exp.exp_dir / "runs" / run_id(*p) / "result.json", ARCHIVE / task / f"{run_id(*p)}.json", p)
              for p in exp.plan()]
    n = 0
    for live, kept, plan in pairs:
        src, dst = (kept, live) if restore else (live, kept)
        if restore:
            move = current(kept, plan) and not current(live, plan)
        else:
            # a run replaces its kept copy when it differs (both carry the current key); the base only after
            # an experiment checked it: a kept base from older features would otherwise cost every new
            # machine its re-evaluation (every test answer generated again)
            move = current(live, plan) and (not kept.exists() or ((plan is not None or base_checked)
                                                                  and kept.read_text() != live.read_text()))
        if move:
            dst.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(dst, src.read_text(encoding="utf-8"))
            n += 1
    return n


def mean_se(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, standard error of the mean (sample std / sqrt(n); NaN for one value: no spread to
    estimate) and n."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return math.nan, math.nan, 0
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return float(v.mean()), se, len(v)


def standardized_gap(a: Sequence[float], b: Sequence[float], higher_is_better: bool) -> tuple[float, float]:
    """(A's advantage over B in means, that advantage in pooled standard errors).

    The pooled SE of the difference is sqrt(se_A^2 + se_B^2); with zero spread a nonzero gap
    is infinitely many SEs and a zero gap is 0."""
    ma, sa, _ = mean_se(a)
    mb, sb, _ = mean_se(b)
    gap = (ma - mb) if higher_is_better else (mb - ma)
    se = math.hypot(sa, sb)
    if se == 0:
        return gap, (0.0 if gap == 0 else math.copysign(math.inf, gap))
    return gap, gap / se


def verdict(z_metric: float, z_loss: float, threshold: float = THRESHOLD) -> str:
    """The pre-registered rule on the two standardized gaps (positive = A better)."""
    if any(math.isnan(z) for z in (z_metric, z_loss)):
        return "undecided (fewer than 2 seeds on a side)"
    if z_metric > threshold and z_loss > threshold:
        return "met"
    if z_metric < -threshold or z_loss < -threshold:
        return "not met"
    return "undecided"


def heldout_loss_key(runs: list[dict[str, Any]]) -> str:
    """The metric key of the reference loss on the loss-only file (``<name>/ref_loss``)."""
    keys = sorted({k for r in runs for k in r["metrics"] if k.endswith("/ref_loss")})
    if len(keys) != 1:
        raise ValueError(f"expected one held-out reference-loss metric, found {keys}")
    return keys[0]


def diagnostics_keys(exp: Experiment) -> dict[str, str]:
    """Each arm's diagnostics key: what its row reads, i.e. the pool, the budget, the arm's own score
    and the IGDS, Loss and longest-response references. A kept row whose key differs is stale and
    never shown."""
    seed = exp.cfg.seeds[0]
    shared = {"data": exp.data_key(), "ratio": exp.cfg.ratios[0],
              **{ref: exp.method_key(ref, seed) for ref in ("igds", "loss", "longest")}}
    return {m: stable_hash({**shared, "arm": exp.method_key(m, seed)}) for m in exp.cfg.methods if m != "full"}


def current_diagnostics(exp: Experiment, task: str) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The archived diagnostics whose keys match the current settings, and the arms left out as stale
    (an entry without a key predates keys and is stale too)."""
    path = ARCHIVE / task / "diagnostics.json"
    kept = read_json(path) if path.exists() else {}
    keys = diagnostics_keys(exp)
    fresh = {m: d for m, d in kept.items() if m in keys and d.get("key") == keys[m]}
    return fresh, sorted(set(kept) - set(fresh))


def save_diagnostics(exp: Experiment, task: str) -> None:
    """Score-length correlations and overlaps of each arm's 50% pick with IGDS's, Loss's and the longest
    responses' (issue #12 item 4), each with its key (:func:`diagnostics_keys`), into :data:`ARCHIVE`.
    Reads every arm's seed-0 score table (an IGDS arm's Stage 1)."""
    keys = diagnostics_keys(exp)
    tables = {m: exp.table(m, exp.cfg.seeds[0]) for m in (*keys, "igds", "loss", "longest")}

    def column(m: str, name: str = "score") -> np.ndarray:
        return tables[m].column(name).to_numpy(zero_copy_only=False).astype(np.float64)

    k = len(select_indices(tables["random"], ratio=exp.cfg.ratios[0]))
    refs = {"igds": top_indices(column("igds"), k), "loss_top": top_indices(column("loss"), k),
            "loss_bottom": top_indices(-column("loss"), k), "longest": top_indices(column("longest"), k)}
    chars = [len(e.response) for e in exp.pool()]
    atomic_write_json(ARCHIVE / task / "diagnostics.json",
                      {m: {"key": key, **selection_diagnostics(column(m), k, column("loss", "n_tokens"), chars, refs)}
                       for m, key in keys.items()})


def collect(task: str) -> dict[str, Any] | None:
    """Every finished run of one task's protocol experiment, with the verdicts."""
    cfg_path = CONFIGS / f"{task}.yaml"
    exp = Experiment(load_experiment_config(cfg_path))
    archive(exp, task, restore=True)
    archive(exp, task, restore=False)  # and runs/'s newer results into the archive
    runs, stale = [], []
    keys = {p: exp.run_key(*p) for p in exp.plan()}
    for method, ratio, seed in exp.plan():
        path = exp.exp_dir / "runs" / run_id(method, ratio, seed) / "result.json"
        if path.exists():
            r = read_json(path)
            # a result made with other settings (or older code whose keys differ) is never mixed in
            (runs if r.get("key") == keys[(method, ratio, seed)] else stale).append(r)
    base_path = exp.exp_dir / "base" / "result.json"
    if not runs or not base_path.exists():
        return None
    metric, loss_key = headline_metric(exp.the_task()), heldout_loss_key(runs)
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["method"], []).append(r)
    cells = {m: {"n": mean_se([r["metrics"].get(metric) for r in rs])[2], "n_train": rs[0]["n_train"], "steps": sorted({r["finetune"]["steps"] for r in rs}),
                 "metric": mean_se([r["metrics"].get(metric) for r in rs]),
                 "heldout_loss": mean_se([r["metrics"].get(loss_key) for r in rs]),
                 "test_loss": mean_se([r["metrics"].get("ref_loss") for r in rs])}
             for m, rs in by.items()}
    comparisons = []
    for a, b in COMPARISONS:
        if a not in by or b not in by:
            continue
        gm, zm = standardized_gap([r["metrics"].get(metric) for r in by[a]],
                                  [r["metrics"].get(metric) for r in by[b]], True)
        gl, zl = standardized_gap([r["metrics"].get(loss_key) for r in by[a]],
                                  [r["metrics"].get(loss_key) for r in by[b]], False)
        comparisons.append({"a": a, "b": b, "gap_metric": gm, "z_metric": zm, "gap_loss": gl, "z_loss": zl,
                            "verdict": verdict(zm, zl)})
    diag, stale_diag = current_diagnostics(exp, task)
    seconds = sum((r.get("finetune") or {}).get("seconds") or 0 for r in runs) + sum(r.get("eval_seconds") or 0
                                                                                    for r in runs)
    return {"task": task, "config": str(cfg_path.relative_to(ROOT)), "metric": metric, "heldout_loss": loss_key,
            "planned_runs": len(exp.plan()), "finished_runs": len(runs), "run_seconds": round(seconds, 1),
            "stale_runs": sorted(r["run"] for r in stale), "code": code_version(),
            "filter_outcomes": filter_outcomes(exp, task),
            "steps_mode": sorted({r.get("steps_mode", "epochs") for r in runs}),
            "base": read_json(base_path)["metrics"], "cells": cells, "comparisons": comparisons,
            "diagnostics": diag or None, "stale_diagnostics": stale_diag}


def code_version() -> str:
    """The igds checkout the tables were collected with (its git commit), for the record."""
    import igds

    try:
        return subprocess.run(["git", "-C", str(Path(igds.__file__).parent), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return igds.__version__


def filter_outcomes(exp: Experiment, task: str) -> dict[str, str]:
    """What each IGDS arm's causal filter kept, from its features.json (older files: validated of candidates).

    Kept in :data:`ARCHIVE` beside the runs, since runs/ does not outlive the machine: an arm whose
    Stage 1 is not on this machine keeps its archived outcome, and one recomputed here replaces it."""
    path = ARCHIVE / task / "filter_outcomes.json"
    archived = read_json(path) if path.exists() else {}
    out = {}
    for m in (m for m in exp.cfg.methods if m in IGDS_METHODS and m not in IGDS_DERIVED):  # the derived read igds's
        live = method_dir(exp.run_dir, m) / "features.json"
        if live.exists():
            fs = read_json(live)
            out[m] = fs.get("filter_outcome") or \
                f"kept {len(fs.get('validated', []))} of {len(fs.get('candidates', []))} candidates"
        elif m in archived:
            out[m] = archived[m]
    if out != archived:
        atomic_write_json(path, out)
    return out


def _ms(cell: tuple[float, float, int], digits: int = 4) -> str:
    m, se, n = cell
    return "–" if n == 0 else f"{m:.{digits}f}" if n == 1 else f"{m:.{digits}f} ± {se:.{digits}f}"


def _z(z: float) -> str:
    return "n/a" if math.isnan(z) else "∞" if math.isinf(z) and z > 0 else "−∞" if math.isinf(z) else f"{z:+.1f}"


def task_section(res: dict[str, Any]) -> list[str]:
    metric, loss = res["metric"], res["heldout_loss"]
    lines = [f"Config: `{res['config']}`; {res['finished_runs']} of {res['planned_runs']} planned runs finished "
             f"(steps mode: {', '.join(res['steps_mode'])}); fine-tuning + evaluation time of those runs: "
             f"{res['run_seconds'] / 60:.1f} min; collected with igds at `{res['code']}`. Cells are mean ± standard "
             "error over seeds." + (f" Not counted, made with other settings or code: {', '.join(res['stale_runs'])}."
                                    if res["stale_runs"] else ""), "",
             "Causal filter: " + ("; ".join(f"{LABELS[m].strip('*')}: {o}" for m, o in res["filter_outcomes"].items())
                                  or "–") + ".", "",
             f"| method | seeds | n train | steps | `{metric}` | held-out ref loss (`{loss}`) | test ref loss |",
             "|---|---|---|---|---|---|---|"]
    b = res["base"]
    lines.append(f"| base model (no fine-tuning) | – | – | – | {b.get(metric, math.nan):.4f} | "
                 f"{b.get(loss, math.nan):.4f} | {b.get('ref_loss', math.nan):.4f} |")
    for m in METHODS:
        c = res["cells"].get(m)
        if c:
            lines.append(f"| {LABELS[m]} | {c['n']} | {c['n_train']} | {'/'.join(map(str, c['steps']))} | "
                         f"{_ms(c['metric'])} | {_ms(c['heldout_loss'])} | {_ms(c['test_loss'])} |")
    lines += ["", f"Verdicts (rule of §1e: better by > {THRESHOLD:g} pooled SE on both `{metric}` and held-out "
              "reference loss = met; worse by > 2 on either = not met; else undecided). Gap = A − B in the metric, "
              "B − A in loss (positive = A better); z = gap / pooled SE.", "",
              "| claim | gap in metric (z) | gap in held-out loss (z) | verdict |", "|---|---|---|---|"]
    for c in res["comparisons"]:
        lines.append(f"| {LABELS[c['a']].strip('*')} better than {LABELS[c['b']].strip('*')} | "
                     f"{c['gap_metric']:+.4f} ({_z(c['z_metric'])}) | {c['gap_loss']:+.4f} ({_z(c['z_loss'])}) | "
                     f"**{c['verdict']}** |")
    if res["diagnostics"]:
        lines += ["", "Selection diagnostics at 50% (Spearman of the score with n_tokens and response characters; "
                  "share of the pick also in IGDS's, Loss-top, Loss-bottom and longest-response):", "",
                  "| selector | ρ n_tokens | ρ chars | ∩ IGDS | ∩ Loss-top | ∩ Loss-bottom | ∩ longest |",
                  "|---|---|---|---|---|---|---|"]
        for m, d in res["diagnostics"].items():
            cells = [d.get(k) for k in ("rho_n_tokens", "rho_response_chars", "overlap_igds", "overlap_loss_top",
                                        "overlap_loss_bottom", "overlap_longest")]
            lines.append(f"| {LABELS[m].strip('*')} | " + " | ".join("–" if v is None else f"{v:.2f}" for v in cells)
                         + " |")
    if res.get("stale_diagnostics"):
        lines += ["", "Selection diagnostics not shown, made with other settings: "
                  + "; ".join(LABELS.get(m, m).strip("*") for m in res["stale_diagnostics"]) + "."]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--seeds", nargs="+", type=int, help="run only these seeds now (default: the config's)")
    ap.add_argument("--methods", nargs="+", choices=METHODS, help="run only these methods now")
    ap.add_argument("--collect-only", action="store_true", help="rebuild the tables from finished runs only")
    ap.add_argument("--diagnostics", action="store_true",
                    help="compute each task's selection diagnostics now (every arm's seed-0 score table, an IGDS "
                         "arm's Stage 1 included; no fine-tuning), then collect")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "protocol.md"))
    args = ap.parse_args(argv)
    for task in args.tasks if args.diagnostics else []:
        save_diagnostics(Experiment(load_experiment_config(CONFIGS / f"{task}.yaml")), task)
    for task in [] if args.collect_only or args.diagnostics else args.tasks:
        overrides = [f"seeds=[{','.join(map(str, args.seeds))}]"] if args.seeds else []
        overrides += [f"methods=[{','.join(args.methods)}]"] if args.methods else []
        cfg = load_experiment_config(CONFIGS / f"{task}.yaml", overrides)
        exp = Experiment(load_experiment_config(CONFIGS / f"{task}.yaml"))
        print(f"protocol: {task}: {archive(exp, task, restore=True)} finished results restored from {ARCHIVE}")
        t0 = time.perf_counter()
        finished = False
        try:
            run_experiment(cfg)
            finished = True
        finally:  # what finished is kept, also when the sitting ends mid-task
            archive(exp, task, restore=False, base_checked=finished)
        if not args.methods:  # the diagnostics read every arm's table: not for a partial invocation
            save_diagnostics(exp, task)
        print(f"protocol: {task} took {time.perf_counter() - t0:.0f} s")
    results = {t: r for t in TASKS if (r := collect(t)) is not None}
    if not results:
        print("no finished runs to collect")
        return 1
    md = [f"# Within-task protocol (generated by `python benchmarks/protocol.py`), {date.today().isoformat()}", ""]
    for task, res in results.items():
        md += [f"## {task}", "", *task_section(res), ""]
        splice(f"protocol-{task}", "\n".join(task_section(res)))
    atomic_write_text(Path(args.out), "\n".join(md))
    atomic_write_json(Path(args.out).with_suffix(".json"), results)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
