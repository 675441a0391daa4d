"""Mixed-pool benchmark: does a method find the task's examples inside a general pool?

    python benchmarks/mixed_pool.py [--task math] [--task-examples 100] [--other-examples 300]

The pool: ``--task-examples`` training examples of the task (rendered by its template,
drawn from rows the quality benchmark does not use) shuffled among ``--other-examples``
rows of the T0 instruction pool in ``../shared/data/instruction_pool`` (rows with
``source_dataset == "dream"`` dropped: DREAM's dialogues overlap DialogSum). Every method
scores the same pool; we report the precision (task share) and recall of its selected
half, then fine-tune on IGDS's and Random's halves and evaluate as the quality benchmark
does. A subsample rather than all 26k rows, because Loss and IFD must run the whole model
on every row (on 2 CPU cores, ~1k tokens/s). Resumable: score tables and runs are cached
under ``runs/bench/mixed-<task>/``. Writes ``benchmarks/results/mixed_pool.{md,json}`` and the
``mixed-<task>`` block of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

from igds.artifacts import atomic_write_json, atomic_write_text
from igds.config import DataConfig
from igds.data import load_examples
from igds.experiment import (Experiment, check_config, fmt_cell, load_experiment_config, resolve_task,
                             run_experiment)
from igds.selection import select_indices
from splice import splice

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IGDS_SHARED_DATA", ROOT.parent / "shared" / "data"))
SCORED = ("random", "loss", "ifd", "zip", "longest", "igds")
FINETUNED = ("igds", "random")
# Training rows below this index belong to the quality benchmark's pool and feature data.
FIRST_UNUSED_ROW = 1000


def build_pool(task, task_source: str, n_task: int, n_other: int, seed: int, out: Path) -> set[str]:
    """Write the mixed pool (``messages`` JSONL with a ``source`` field); return the task's ids."""
    task_rows = [e for e in task.examples(task_source) if e.line > FIRST_UNUSED_ROW][:n_task]
    if len(task_rows) < n_task:
        raise ValueError(f"{task_source}: only {len(task_rows)} rows after line {FIRST_UNUSED_ROW}, asked {n_task}")
    others = [e for e in load_examples(SHARED / "instruction_pool" / "t0_pool.jsonl")
              if e.record.get("source_dataset") != "dream"]
    rng = random.Random(seed)
    rows = [(e, "task") for e in task_rows] + [(e, "t0") for e in rng.sample(others, n_other)]
    rng.shuffle(rows)
    text = "".join(json.dumps({"id": e.id, "source": src, "source_dataset": e.record.get("source_dataset", task.name),
                               "messages": [*e.messages, {"role": "assistant", "content": e.response}]},
                              ensure_ascii=False) + "\n" for e, src in rows)
    if not out.exists() or out.read_text(encoding="utf-8") != text:
        atomic_write_text(out, text)
    return {e.id for e in task_rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="math", choices=("math", "summarization", "translation"))
    ap.add_argument("--task-examples", type=int, default=100)
    ap.add_argument("--other-examples", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-finetune", action="store_true", help="precision only")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mixed_pool.md"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    cfg = load_experiment_config(ROOT / "benchmarks" / "quality" / f"{args.task}.yaml")
    run_dir = ROOT / "runs" / "bench" / f"mixed-{args.task}"
    pool_path = run_dir / "data" / "mixed_pool.jsonl"
    task_ids = build_pool(resolve_task(cfg.task), cfg.pool.path, args.task_examples, args.other_examples,
                          args.seed, pool_path)
    cfg = replace(cfg, name=f"mixed-{args.task}", out=str(run_dir), pool=DataConfig(path=str(pool_path),
                  dialect="messages"), task_format=["task_data", "validation"], methods=list(FINETUNED),
                  seeds=[args.seed])
    check_config(cfg)
    exp = Experiment(cfg)
    pool = exp.pool()
    share = len(task_ids) / len(pool)
    rows = []
    for method in SCORED:
        chosen = select_indices(exp.table(method, args.seed), ratio=0.5)
        hits = sum(pool[i].id in task_ids for i in chosen)
        rows.append({"method": method, "n_selected": len(chosen), "task_selected": hits,
                     "precision": hits / len(chosen), "recall": hits / len(task_ids)})
    results = {"task": args.task, "pool": str(pool_path.relative_to(ROOT)), "n_pool": len(pool),
               "n_task": len(task_ids), "task_share": share, "selection": rows, "date": date.today().isoformat()}
    if not args.no_finetune:
        exp_results = run_experiment(cfg)
        results["finetuned"] = {"metric": exp_results["metric"], "base": exp_results["base"]["metrics"],
                                "summary": exp_results["summary"]}
    results["wall_s_this_invocation"] = round(time.perf_counter() - t0, 1)
    write(results, Path(args.out))
    print(f"wrote {args.out}")
    return 0


def write(res: dict, out: Path) -> None:
    lines = [f"Date: {res['date']}. Pool: {res['n_pool']} examples, of which {res['n_task']} are {res['task']} "
             f"training examples (share {res['task_share']:.2f}); each method selects 50%. Precision = task share "
             f"of the selected half (chance: {res['task_share']:.2f}, best possible: "
             f"{min(1.0, res['n_task'] / (res['n_pool'] // 2)):.2f}); recall = share of the task's examples "
             "selected (chance 0.50).", "",
             "| method | selected | task examples selected | precision | recall |", "|---|---|---|---|---|"]
    for r in res["selection"]:
        lines.append(f"| {r['method']} | {r['n_selected']} | {r['task_selected']} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} |")
    if "finetuned" in res:
        ft = res["finetuned"]
        metric = ft["metric"]
        lines += ["", f"Fine-tuned on each selected half (LoRA, the quality benchmark's recipe), `{metric}` and "
                  "reference loss on the task's test set:", "",
                  f"| model | `{metric}` | `ref_loss` |", "|---|---|---|",
                  f"| base (no fine-tuning) | {fmt_cell(ft['base'].get(metric), None)} | "
                  f"{fmt_cell(ft['base'].get('ref_loss'), None)} |"]
        for c in ft["summary"]:
            m = c["metrics"]
            lines.append(f"| {c['method']} @50% | {fmt_cell(m[metric]['mean'], m[metric]['std'])} | "
                         f"{fmt_cell(m['ref_loss']['mean'], m['ref_loss']['std'])} |")
    lines.append("")
    splice(f"mixed-{res['task']}", "\n".join(lines))
    atomic_write_text(out, f"# Mixed pool ({res['task']}): `python benchmarks/mixed_pool.py --task {res['task']}`\n\n"
                      + "\n".join(lines))
    atomic_write_json(out.with_suffix(".json"), res)


if __name__ == "__main__":
    raise SystemExit(main())
