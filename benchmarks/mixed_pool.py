"""Mixed-pool benchmark: does a method find the task's examples inside a general pool?

    python benchmarks/mixed_pool.py [--task math] [--task-examples 100] [--other-examples 300] [--length-matched]

The pool: ``--task-examples`` training examples of the task (rendered by its template,
drawn from rows the quality benchmark does not use) shuffled among ``--other-examples``
rows of the T0 instruction pool in ``../shared/data/instruction_pool`` (rows with
``source_dataset == "dream"`` dropped: DREAM's dialogues overlap DialogSum). Every method
scores the same pool; we report the precision (task share) and recall of its selected
half, then fine-tune on IGDS's and Random's halves and evaluate as the quality benchmark
does. A subsample rather than all 26k rows, because Loss and IFD must run the whole model
on every row (on 2 CPU cores, ~1k tokens/s). ``--length-matched`` draws, for each task row,
the off-task rows nearest it in response length, so that a selector cannot succeed on length
alone. Resumable: score tables and runs are cached under ``runs/bench/NAME/``, NAME being
``mixed-<task>[-length-matched]``. Writes ``benchmarks/results/NAME.{md,json}`` and the NAME
block of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import bisect
import os
import random
import statistics
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

from igds.artifacts import atomic_write_json, atomic_write_text
from igds.config import DataConfig, check
from igds.data import load_examples, write_messages
from igds.experiment import (Experiment, fmt_cell, load_experiment_config, resolve_task,
                             run_experiment)
from igds.selection import select_indices
from splice import splice

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IGDS_SHARED_DATA", ROOT.parent / "shared" / "data"))
SCORED = ("random", "loss", "ifd", "zip", "longest", "igds")
FINETUNED = ("igds", "random")
# Training rows below this index belong to the quality benchmark's pool and feature data.
FIRST_UNUSED_ROW = 1000


def nearest_in_length(task_rows: list, others: list, n_other: int, rng: random.Random) -> list:
    """``n_other`` off-task rows, spread evenly over the task rows, each the unused one whose
    response length (characters) is nearest its task row's: a pool in which length alone
    cannot tell the two sources apart."""
    pool = sorted(rng.sample(others, len(others)), key=lambda e: len(e.response))  # ties broken at random
    lengths = [len(e.response) for e in pool]
    picked = []
    for i, row in enumerate(rng.sample(task_rows, len(task_rows))):
        for _ in range(n_other // len(task_rows) + (i < n_other % len(task_rows))):
            j = bisect.bisect_left(lengths, len(row.response))
            if j == len(lengths) or (j > 0 and len(row.response) - lengths[j - 1] <= lengths[j] - len(row.response)):
                j -= 1
            picked.append(pool.pop(j))
            lengths.pop(j)
    return picked


def build_pool(task, task_source: str, n_task: int, n_other: int, seed: int, out: Path,
               length_matched: bool = False) -> set[str]:
    """Write the mixed pool (``messages`` JSONL with a ``source`` field); return the task's ids."""
    task_rows = [e for e in task.examples(task_source) if e.line > FIRST_UNUSED_ROW][:n_task]
    if len(task_rows) < n_task:
        raise ValueError(f"{task_source}: only {len(task_rows)} rows after line {FIRST_UNUSED_ROW}, asked {n_task}")
    others = [e for e in load_examples(SHARED / "instruction_pool" / "t0_pool.jsonl")
              if e.record.get("source_dataset") != "dream"]
    rng = random.Random(seed)
    chosen = nearest_in_length(task_rows, others, n_other, rng) if length_matched else rng.sample(others, n_other)
    rows = [(e, "task") for e in task_rows] + [(e, "t0") for e in chosen]
    rng.shuffle(rows)
    write_messages(out, [e for e, _ in rows],
                   {e.id: {"source": src, "source_dataset": e.record.get("source_dataset", task.name)} for e, src in rows})
    return {e.id for e in task_rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="math", choices=("math", "summarization", "translation"))
    ap.add_argument("--task-examples", type=int, default=100)
    ap.add_argument("--other-examples", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--length-matched", action="store_true",
                    help="off-task rows chosen nearest in response length to the task's rows")
    ap.add_argument("--no-finetune", action="store_true", help="precision only")
    ap.add_argument("--out", help="default: benchmarks/results/mixed-<task>[-length-matched].md")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    name = f"mixed-{args.task}" + ("-length-matched" if args.length_matched else "")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{name}.md"

    cfg = load_experiment_config(ROOT / "benchmarks" / "quality" / f"{args.task}.yaml")
    run_dir = ROOT / "runs" / "bench" / name
    pool_path = run_dir / "data" / "mixed_pool.jsonl"
    task_ids = build_pool(resolve_task(cfg.task), cfg.igds.pool.path, args.task_examples, args.other_examples,
                          args.seed, pool_path, args.length_matched)
    igds = replace(cfg.igds, out=str(run_dir), pool=DataConfig(path=str(pool_path), dialect="messages"))
    cfg = replace(cfg, name=name, igds=igds, task_format=["task_data", "validation"], methods=list(FINETUNED),
                  seeds=[args.seed])
    check(cfg)
    exp = Experiment(cfg)
    pool = exp.pool()
    share = len(task_ids) / len(pool)
    rows = []
    for method in SCORED:
        chosen = select_indices(exp.table(method, args.seed), ratio=0.5)
        hits = sum(pool[i].id in task_ids for i in chosen)
        rows.append({"method": method, "n_selected": len(chosen), "task_selected": hits,
                     "precision": hits / len(chosen), "recall": hits / len(task_ids)})
    results = {"name": name, "task": args.task, "length_matched": args.length_matched,
               "pool": str(pool_path.relative_to(ROOT)), "n_pool": len(pool), "n_task": len(task_ids),
               "task_share": share, "selection": rows, "date": date.today().isoformat(),
               "median_response_chars": {
                   "task": statistics.median(len(e.response) for e in pool if e.id in task_ids),
                   "other": statistics.median(len(e.response) for e in pool if e.id not in task_ids)}}
    if not args.no_finetune:
        exp_results = run_experiment(cfg)
        results["finetuned"] = {"metric": exp_results["metric"], "base": exp_results["base"]["metrics"],
                                "summary": exp_results["summary"]}
    results["wall_s_this_invocation"] = round(time.perf_counter() - t0, 1)
    write(results, out)
    print(f"wrote {out}")
    return 0


def write(res: dict, out: Path) -> None:
    med = res["median_response_chars"]
    lines = [f"Date: {res['date']}. Pool: {res['n_pool']} examples, of which {res['n_task']} are {res['task']} "
             f"training examples (share {res['task_share']:.2f}); off-task rows "
             f"{'chosen nearest in response length to the task rows' if res['length_matched'] else 'drawn at random'}"
             f" (median response: {med['task']:.0f} characters for the task's rows, {med['other']:.0f} for the "
             f"others); each method selects 50%. Precision = task share "
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
    command = f"python benchmarks/mixed_pool.py --task {res['task']}" + (" --length-matched" if res["length_matched"]
                                                                         else "")
    splice(res["name"], "\n".join(lines))
    atomic_write_text(out, f"# Mixed pool ({res['name']}): `{command}`\n\n" + "\n".join(lines))
    atomic_write_json(out.with_suffix(".json"), res)


if __name__ == "__main__":
    raise SystemExit(main())
