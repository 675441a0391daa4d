"""Stage 1's cost next to scoring a 400-row pool, with the reference statistics cold and kept
(issue #13: "Stage 1 at most a third of the time it takes to score a 400-row pool").

    python benchmarks/stage1_cost.py                   # math and summarization
    python benchmarks/stage1_cost.py --tasks math

Per task, the feature-discovery data of the quality benchmark (``benchmarks/quality/<task>.yaml``:
probe 96 of 128 training rows, the built-in reference of 128 rows, 24 candidates) with igds's
defaults otherwise: the shipped SAE (``--sae default``), the causal filter off. Timed, one after
the other in one process on one loaded model:

* **cold**: Stage 1 with ``recall.reference_cache=false``, which runs the task probe and the
  reference (what every run paid before the reference statistics were kept);
* **kept**: Stage 1 twice with the cache on, in a fresh cache folder: the first run computes and
  writes the reference statistics (its time is reported too), the second reads them, so Stage 1
  is the probe pass alone. This is what a second task, arm or run on the same model, SAE and
  reference costs;
* **scoring 400 rows**: the first 400 training rows of the task scored with the kept run's
  validated features (Stage 2, one pass stopped at the SAE layer).

Writes ``benchmarks/results/stage1_cost.{md,json}`` and the BENCHMARKS.md block ``stage1-cost``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import torch

from igds.artifacts import atomic_write_json, atomic_write_text, read_json
from igds.experiment import Experiment, load_experiment_config, run_config
from igds.experiment.runner import materialize
from igds.inputs import load_saes, read_examples
from igds.pipeline import features
from igds.scoring import feature_activations
from splice import splice

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("math", "summarization")
SCORED_ROWS = 400  # the pool size the issue measures Stage 1 against
OUT = Path("runs/bench/stage1-cost")


def measure(task: str) -> dict[str, Any]:
    exp = Experiment(load_experiment_config(ROOT / "benchmarks" / "quality" / f"{task}.yaml",
                                            ["igds.sae.paths=[default]", "igds.filter.enabled=false"]))
    base = run_config(exp.cfg, "igds", exp.data())
    lm = exp.model()
    saes = load_saes(base, lm)
    shutil.rmtree(OUT / task, ignore_errors=True)  # every Stage 1 below is computed, none read back
    # the kept reference statistics go to a fresh folder (the model, already loaded, stays where it was cached)
    before = os.environ.get("IGDS_CACHE")
    os.environ["IGDS_CACHE"] = str((OUT / task / "cache").resolve())
    seconds: dict[str, float] = {}
    try:
        for name, cache in (("cold", False), ("kept_first", True), ("kept", True)):
            cfg = replace(base, recall=replace(base.recall, reference_cache=cache))
            run_dir = OUT / task / name  # a folder each: features.json is never reused
            run_dir.mkdir(parents=True, exist_ok=True)
            fs = features(cfg, lm, saes, run_dir)
            seconds[name] = fs.info.seconds
    finally:
        if before is None:
            os.environ.pop("IGDS_CACHE")
        else:
            os.environ["IGDS_CACHE"] = before
    pool = materialize(exp.the_task(), replace(exp.cfg.igds.pool, limit=SCORED_ROWS), OUT / f"pool400-{task}.jsonl")
    rows = read_examples(pool, "pool")
    t0 = time.perf_counter()
    feature_activations(lm, saes, fs, rows, replace(base.score, top_examples=0),
                        use_chat_template=base.use_chat_template)
    scoring = round(time.perf_counter() - t0, 2)
    return {"task": task, "probe": base.recall.probe_size, "reference": base.recall.reference_size,
            "candidates": len(fs.candidates), "validated": len(fs.validated), "saes": [s.describe() for s in saes.values()],
            "stage1_cold_s": seconds["cold"], "stage1_kept_first_s": seconds["kept_first"],
            "stage1_kept_s": seconds["kept"], "scoring_400_s": scoring,
            "ratio_cold": round(seconds["cold"] / scoring, 4), "ratio_kept": round(seconds["kept"] / scoring, 4),
            "date": date.today().isoformat(), "threads": torch.get_num_threads()}


def table(results: list[dict[str, Any]], when: str) -> str:
    lines = [f"`python benchmarks/stage1_cost.py` on {when}: {platform.machine()}, {os.cpu_count()} cores, "
             f"{results[0].get('threads', '?')} torch thread(s), torch {torch.__version__}; the shipped SAE, filter off.", "",
             "| task | probe / reference rows | Stage 1, cold (s) | Stage 1, first run writing the kept statistics (s) | "
             "Stage 1, kept (s) | scoring 400 rows (s) | Stage 1 / scoring, cold | Stage 1 / scoring, kept |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['task']} | {r['probe']} / {r['reference']} | {r['stage1_cold_s']:.1f} | "
                     f"{r['stage1_kept_first_s']:.1f} | {r['stage1_kept_s']:.1f} | {r['scoring_400_s']:.1f} | "
                     f"{r['ratio_cold']:.3f}× | {r['ratio_kept']:.3f}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--collect-only", action="store_true", help="rewrite the table from the last results")
    args = ap.parse_args(argv)
    if args.collect_only:
        results = read_json(ROOT / "benchmarks" / "results" / "stage1_cost.json")
    else:
        results = [measure(t) for t in args.tasks]
    text = table(results, results[0].get("date", "?"))
    atomic_write_text(ROOT / "benchmarks" / "results" / "stage1_cost.md", "# Stage 1 cost\n\n" + text + "\n")
    atomic_write_json(ROOT / "benchmarks" / "results" / "stage1_cost.json", results)
    splice("stage1-cost", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
