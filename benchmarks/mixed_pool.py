"""Mixed-pool benchmark: does a method find the task's examples inside a general pool?

    python benchmarks/mixed_pool.py --pool POOL [--arms a,b,...] [--no-finetune] [--leaky]

Pools (``--pool``), each a shuffle of the task's own training rows, optional near-task rows
and rows of the T0 instruction pool (``../shared/data/instruction_pool``, DREAM dropped:
its dialogues overlap DialogSum), with a relevance grade per row (2 = the task's rows,
1 = near-task, 0 = off-task):

* ``math-random``: GSM8K rows + T0 rows drawn at random;
* ``math-length-matched``: GSM8K rows + the T0 rows nearest each in response length;
* ``math-near``: GSM8K rows + MathQA and AQuA-RAT rows (``../shared/data/math_near``,
  validation splits, half each; grade 1) + random T0 rows;
* ``summarization-random`` / ``summarization-length-matched``: DialogSum rows + T0 rows
  (random / nearest in length); T0's summarisation sources (:data:`SUMMARY_SOURCES`)
  are graded 1.

Every pool row is in a plain pool dialect, as a general instruction set would hold it
(:func:`plain_row`): the prompt is the raw question or dialogue, the response the answer.
No row carries the task's template (``Solve the problem step by step ...``,
``Summarize the following dialogue.``), nor the format that template imposes: GSM8K's
``#### N`` line becomes ``Answer: N`` (as in the MathQA/AQuA rows), DialogSum's
``#Person1#`` tags become ``Person1`` (T0's SAMSum writes plain ``Name:`` turns). The
task data (IGDS's probe, the targets of dsir/bm25/embed/mona) keeps the task's format.
``--leaky`` instead wraps the task rows in the task template, as this benchmark did until
2026-11 (BENCHMARKS.md §2a-2d): only to show the leak, beside the ``regex`` arm.

Arms (``--arms``, default all): every registered selector that runs on a pool (random,
loss, ifd, zip, longest, dsir, bm25, igds_jaccard, embed, mona, igds, igds_filtered,
igds_recall_only, igds_random_candidates, igds_paper, igds_content, and igds_low / igds_quota /
igds_coverage / igds_zscore, which read igds's own table) and ``regex``, a sanity floor that
lives here only: the number of the task template's fixed strings a row contains (ties at random). On a leaky pool it
finds every task row; on a template-free pool it must be at chance. Each arm selects
50%; the table reports exact-task precision and recall, graded precision and NDCG, and
the diagnostics of :mod:`diagnostics` (score vs ``n_tokens`` and response length;
overlap with Loss-top, Loss-bottom and longest at the same budget).

The causal filter runs with ``on_empty: recall_only``: where no feature passes, igds scores
with the recalled ones and the notes under the table say so.

Resumable: each arm's score table is cached under ``runs/bench/NAME/arms/`` keyed by the
pool file's content and the arm's config (finished arms are skipped), and archived under
``benchmarks/results/mixed-pool-arms/NAME/`` so that a new machine skips them too; fine-tuning runs
are cached by the experiment runner. NAME is ``mixed-<pool>-template-free``, or for
``--leaky`` the old name (``mixed-math``, ``mixed-math-length-matched``, ...). Writes
``benchmarks/results/NAME.{md,json}`` and the NAME block of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import bisect
import os
import random
import re
import statistics
import string
import time
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from diagnostics import NEAR, OFF, TASK, relevance_metrics, selection_diagnostics, top_indices
from igds.artifacts import atomic_write_json, atomic_write_text, read_json, stable_hash
from igds.config import IGDS_DERIVED, DataConfig, check
from igds.data import DataSpec, Example, load_examples, write_messages
from igds.feature_set import FeatureSet
from igds.experiment import (Experiment, fmt_cell, load_experiment_config, method_dir, run_config,
                             run_experiment)
from igds.selectors.frs import derive_table
from igds.inputs import read_examples, source_fingerprint
from igds.selection import make_score_table, read_score_table, select_indices, write_score_table
from igds.selectors import SELECTORS, SelectionContext, run_selector
from igds.tasks import TRANSLATION_TEMPLATE, Task, get_task, gsm8k_solution, translation_prompt
from splice import splice

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IGDS_SHARED_DATA", ROOT.parent / "shared" / "data"))
# each runs Stage 1; igds is the default (no causal filter at this scale), igds_filtered turns the filter on
IGDS_ARMS = ("igds", "igds_filtered", "igds_recall_only", "igds_random_candidates", "igds_paper", "igds_content")
# igds_jaccard before embed and mona: the three share one forward pass, and igds_jaccard's screen comes first
SAE_MEAN_ARMS = ("igds_jaccard", "embed", "mona")
ARMS = ("random", "loss", "ifd", "zip", "longest", "dsir", "bm25", *SAE_MEAN_ARMS, *IGDS_ARMS, *IGDS_DERIVED,
        "regex")
NEEDS_MODEL = {"loss", "ifd", "longest", *SAE_MEAN_ARMS, *IGDS_ARMS}  # longest: token counts, as before
# Finished arm tables travel with the repository (a few kB each), so a new machine skips them.
ARCHIVE = ROOT / "benchmarks" / "results" / "mixed-pool-arms"
FINETUNED = ("igds", "random")
RATIO = 0.5
# Training rows below this index belong to the quality benchmark's pool and feature data.
FIRST_UNUSED_ROW = 1000
# The summarisation sources of T0 (data README): near-task for DialogSum.
SUMMARY_SOURCES = frozenset({"samsum", "xsum", "cnn_dailymail_3_0_0", "gigaword", "multi_news"})
MATH_NEAR = ("mathqa", "aqua_rat")
MIN_FIXED = 8  # template fragments shorter than this (":\n", " to ") are not a signature


@dataclass(frozen=True)
class PoolSpec:
    """One pool variant: the task, how T0 rows are drawn, and whether near-task math rows join."""

    task: str
    length_matched: bool = False
    math_near: bool = False


POOLS = {
    "math-random": PoolSpec("math"),
    "math-length-matched": PoolSpec("math", length_matched=True),
    "math-near": PoolSpec("math", math_near=True),
    "summarization-random": PoolSpec("summarization"),
    "summarization-length-matched": PoolSpec("summarization", length_matched=True),
}
# The leaky variants keep the names (and BENCHMARKS.md blocks) of the tables made before 2026-12.
LEAKY_NAMES = {p: "mixed-" + p.removesuffix("-random") for p in POOLS if p != "math-near"}


def pool_name(pool: str, leaky: bool) -> str:
    """Results / run-dir name of a pool variant."""
    if leaky:
        return LEAKY_NAMES.get(pool, f"mixed-{pool}-leaky")
    return f"mixed-{pool}-template-free"


# ====================================================================== the plain pool dialect
def template_fixed_strings(task: Task) -> list[str]:
    """The literal parts of ``task``'s prompt template (between ``{field}`` slots), stripped,
    at least :data:`MIN_FIXED` characters: what a template-wrapped row carries and no other."""
    template = task.spec.prompt_template
    if template is None and task.prompt_fn is translation_prompt:
        template = TRANSLATION_TEMPLATE
    if not template:
        return []
    parts = [literal.strip() for literal, *_ in string.Formatter().parse(template)]
    return [p for p in parts if len(p) >= MIN_FIXED]


def plain_row(ex_id: str, prompt: str, response: str, record: dict[str, Any], source: str, line: int) -> Example:
    """A pool row in the plain dialect: one user turn (the raw text), the answer as response."""
    return Example(id=ex_id, messages=[{"role": "user", "content": prompt}], response=response, record=record,
                   dialect="messages", source=source, line=line)


def plain_gsm8k(ex: Example) -> Example:
    """GSM8K: the question; the solution without ``<<...>>`` and with ``Answer: N`` for ``#### N``."""
    rationale, final = gsm8k_solution(str(ex.record["answer"]))
    return plain_row(ex.id, str(ex.record["question"]), f"{rationale}\nAnswer: {final}".lstrip(), ex.record,
                     ex.source, ex.line)


_SPEAKER = re.compile(r"#(Person\d+)#")


def plain_dialogsum(ex: Example) -> Example:
    """DialogSum: the dialogue and its summary, ``#Person1#`` tags as plain ``Person1``."""
    return plain_row(ex.id, _SPEAKER.sub(r"\1", str(ex.record["dialogue"])),
                     _SPEAKER.sub(r"\1", str(ex.record["summary"])), ex.record, ex.source, ex.line)


def plain_multiple_choice(ex: Example) -> Example:
    """MathQA / AQuA-RAT (``math_near`` fields): question with lettered options; rationale, then
    ``Answer: X) text``."""
    r = ex.record
    options = " ".join(f"{letter}) {choice}" for letter, choice in zip("ABCDE", r["choices"]))
    return plain_row(ex.id, f"{r['question']}\nOptions: {options}",
                     f"{r['rationale']}\nAnswer: {r['answer_letter']}) {r['answer_text']}", r, ex.source, ex.line)


PLAIN: dict[str, Callable[[Example], Example]] = {"math": plain_gsm8k, "summarization": plain_dialogsum}


# ====================================================================== pool building
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


def near_math_rows(shared: Path, n_near: int, rng: random.Random) -> list[Example]:
    """``n_near`` MathQA + AQuA-RAT validation rows (half each), in the plain dialect."""
    spec = DataSpec(dialect="fields", prompt_field="question", response_field="rationale")
    rows: list[Example] = []
    for i, name in enumerate(MATH_NEAR):
        k = n_near // len(MATH_NEAR) + (i < n_near % len(MATH_NEAR))
        source = load_examples(shared / "math_near" / name / "validation.jsonl", spec)
        if len(source) < k:
            raise ValueError(f"{source[0].source}: only {len(source)} rows, asked {k}")
        rows += [plain_multiple_choice(e) for e in rng.sample(source, k)]
    return rows


def build_pool(spec: PoolSpec, task: Task, task_source: str, n_task: int, n_near: int, n_other: int, seed: int,
               out: Path, leaky: bool = False, shared: Path = SHARED, first_row: int = FIRST_UNUSED_ROW
               ) -> dict[str, int]:
    """Write the mixed pool (``messages`` JSONL with ``source``, ``source_dataset`` and
    ``relevance`` fields); return each row's relevance grade by id."""
    task_rows = [e for e in task.examples(task_source) if e.line > first_row][:n_task]
    if len(task_rows) < n_task:
        raise ValueError(f"{task_source}: only {len(task_rows)} rows after line {first_row}, asked {n_task}")
    if not leaky:
        task_rows = [PLAIN[spec.task](e) for e in task_rows]
    rng = random.Random(seed)
    near = near_math_rows(shared, n_near, rng) if spec.math_near else []
    others = [e for e in load_examples(shared / "instruction_pool" / "t0_pool.jsonl")
              if e.record.get("source_dataset") != "dream"]
    chosen = nearest_in_length(task_rows, others, n_other, rng) if spec.length_matched else rng.sample(others, n_other)
    near_sources = SUMMARY_SOURCES if spec.task == "summarization" else frozenset()
    rows = ([(e, "task", task.name, TASK) for e in task_rows]
            + [(e, "near", str(e.record.get("source")), NEAR) for e in near]
            + [(e, "t0", str(e.record.get("source_dataset")),
                NEAR if e.record.get("source_dataset") in near_sources else OFF) for e in chosen])
    rng.shuffle(rows)
    write_messages(out, [e for e, *_ in rows],
                   {e.id: {"source": src, "source_dataset": ds, "relevance": grade} for e, src, ds, grade in rows})
    return {e.id: grade for e, _, _, grade in rows}


# ====================================================================== arms
def regex_scores(pool: Sequence[Example], fixed: Sequence[str], seed: int) -> pa.Table:
    """The sanity floor: how many of the template's fixed strings a row contains, ties broken
    at random (a tie-break in [0, 0.5) never crosses a count; its own random stream, so that
    on a template-free pool it does not copy the ``random`` arm's pick)."""
    rng = np.random.default_rng([seed, 0x9E6E])
    hits = np.array([sum(s in e.prompt + "\n" + e.response for s in fixed) for e in pool], dtype=np.float64)
    return make_score_table([e.id for e in pool], hits + rng.random(len(pool)) * 0.5, np.zeros(len(pool), np.int64),
                            extra={"fixed_strings_found": hits}, meta={"method": "regex", "fixed_strings": list(fixed)})


class Arms:
    """Scores the pool with each arm; every table is cached on disk, keyed by the pool file's
    content and the arm's config, so a re-run skips the finished arms."""

    def __init__(self, exp: Experiment, seed: int, archive: Path | None = None) -> None:
        self.exp, self.seed, self.cfg = exp, seed, exp.cfg
        self.shared: dict[Any, Any] = {}  # embed and mona share one forward pass through it
        self.dir = exp.run_dir / "arms"
        self.folders = (self.dir, archive) if archive else (self.dir,)  # where tables are looked up and written

    def config(self, arm: str) -> dict[str, Any]:
        """What the arm's table depends on besides the pool (the cache key's other half)."""
        c = self.cfg
        out: dict[str, Any] = {"arm": arm, "options": c.baselines.get(arm, {})}
        if arm in ("random", "regex"):  # the others do not draw (IGDS's seed is in its method key)
            out["seed"] = self.seed
        if arm in NEEDS_MODEL:
            out.update(model=c.igds.model.name, max_length=c.finetune.max_length, chat=c.igds.use_chat_template)
        if arm in ("dsir", "bm25", *SAE_MEAN_ARMS) or arm in IGDS_ARMS or arm in IGDS_DERIVED:
            out["task_sha"] = source_fingerprint(self.exp.data()["task_data"].path)
        if arm in SAE_MEAN_ARMS:
            out["sae"] = self.exp.sae_key()
        if arm in IGDS_ARMS or arm in IGDS_DERIVED:
            out["igds"] = self.exp.method_key(arm, self.seed)
        if arm == "regex":
            out["fixed"] = template_fixed_strings(self.exp.the_task())
        return out

    def table(self, arm: str) -> pa.Table:
        """The arm's score table, from the run folder's cache or the archive when its key matches."""
        key = stable_hash({"pool": source_fingerprint(self.exp.data()["pool"].path), **self.config(arm)})
        for folder in self.folders:
            path, side = folder / f"{arm}.parquet", folder / f"{arm}.json"
            if path.exists() and side.exists() and read_json(side).get("key") == key:
                return read_score_table(path)
        print(f"mixed_pool: scoring the pool with {arm!r}", flush=True)
        t0 = time.perf_counter()
        table = self.score(arm)
        side_info = {"key": key, "arm": arm, "wall_s": round(time.perf_counter() - t0, 1), **self.stage1_facts(arm)}
        for folder in self.folders:
            write_score_table(folder / f"{arm}.parquet", table)
            atomic_write_json(folder / f"{arm}.json", side_info)
        return table

    def stage1_facts(self, arm: str) -> dict[str, Any]:
        """What an IGDS arm's Stage 1 kept (its features.json), for the table's notes."""
        if arm not in IGDS_ARMS:
            return {}
        fs = FeatureSet.load(method_dir(self.exp.run_dir, arm) / "features.json")
        return {"stage1": {"n_candidates": len(fs.candidates), "validated": fs.validated,
                           "filter_outcome": fs.info.filter_outcome, "seconds": fs.info.seconds}}

    def facts(self, arm: str) -> dict[str, Any]:
        """The side file of ``arm``'s cached table (wall time, Stage 1 facts)."""
        for folder in self.folders:
            if (folder / f"{arm}.json").exists():
                return read_json(folder / f"{arm}.json")
        return {}

    def score(self, arm: str) -> pa.Table:
        pool, exp = self.exp.pool(), self.exp
        if arm == "regex":
            return regex_scores(pool, template_fixed_strings(exp.the_task()), self.seed)
        if arm in IGDS_DERIVED:  # igds's own table read another way: no Stage 1 of its own
            features = exp.features() if SELECTORS[arm].reads_features else None  # igds's Stage 1, resumed
            return derive_table(arm, self.table("igds"), run_config(self.cfg, arm, exp.data()).select, features)
        options = dict(self.cfg.baselines.get(arm, {}))
        if arm == "zip":
            options.setdefault("ratio", RATIO)  # the greedy stops at the budget
        if arm in IGDS_ARMS:
            options.update(config=run_config(self.cfg, arm, exp.data()), run_dir=method_dir(exp.run_dir, arm))
        needs = SELECTORS[arm].needs
        task = read_examples(exp.data()["task_data"], "task_data") if "task" in needs else ()
        sae = next(iter(exp.saes().values())) if "sae" in needs else None
        ctx = SelectionContext(model=exp.model() if arm in NEEDS_MODEL else None, task=task, sae=sae,
                               seed=self.seed, max_length=self.cfg.finetune.max_length,
                               use_chat_template=self.cfg.igds.use_chat_template, options=options,
                               shared=self.shared)
        return run_selector(arm, pool, ctx)


def score_column(table: pa.Table, name: str = "score") -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)


def selection_rows(pool: Sequence[Example], labels: dict[str, int], tables: dict[str, pa.Table]
                   ) -> tuple[list[dict[str, Any]], str | None]:
    """One row per arm: relevance metrics of its selected half plus the diagnostics. Also names
    the table whose ``n_tokens`` the correlations use (the first model table with counts)."""
    grades = [labels[e.id] for e in pool]
    k = len(select_indices(next(iter(tables.values())), ratio=RATIO))
    n_from = next((a for a in ("igds", "embed", "mona", "loss", "ifd", "longest")
                   if a in tables and score_column(tables[a], "n_tokens").any()), None)
    n_tokens = score_column(tables[n_from], "n_tokens") if n_from else np.full(len(pool), np.nan)
    refs: dict[str, list[int]] = {}
    if "loss" in tables:
        loss = score_column(tables["loss"])
        refs.update(loss_top=top_indices(loss, k), loss_bottom=top_indices(-loss, k))
    if "longest" in tables:
        refs["longest"] = top_indices(score_column(tables["longest"]), k)
    rows = []
    for arm, table in tables.items():
        chosen = select_indices(table, ratio=RATIO)
        rows.append({"method": arm, "n_selected": len(chosen), **relevance_metrics(chosen, grades),
                     **selection_diagnostics(score_column(table), k, n_tokens, [len(e.response) for e in pool],
                                             refs)})
    return rows, n_from


# ====================================================================== main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool", required=True, choices=sorted(POOLS))
    ap.add_argument("--leaky", action="store_true",
                    help="LEAKY variant: wrap the task rows in the task template (only to show the leak)")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    ap.add_argument("--task-examples", type=int, default=100)
    ap.add_argument("--near-examples", type=int, default=100, help="math-near: MathQA + AQuA-RAT rows")
    ap.add_argument("--other-examples", type=int, default=None, help="T0 rows (default: 400 minus the others)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-finetune", action="store_true", help="selection table only")
    ap.add_argument("--out", help="default: benchmarks/results/NAME.md")
    ap.add_argument("--sae", help="the SAE every SAE arm reads (default: the one the quality config pins, v1); "
                                  "NAME gets the suffix -sae-<its folder or 'default'>")
    args = ap.parse_args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        ap.error(f"--arms: unknown {bad}; known: {list(ARMS)}")
    t0 = time.perf_counter()
    spec = POOLS[args.pool]
    exp, labels = pool_experiment(args)
    name, cfg, pool_path = exp.cfg.name, exp.cfg, Path(exp.cfg.igds.pool.path)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"{name}.md"
    pool = exp.pool()
    scorer = Arms(exp, args.seed, archive=ARCHIVE / name)
    tables = {arm: scorer.table(arm) for arm in arms}
    rows, n_from = selection_rows(pool, labels, tables)
    facts = {arm: scorer.facts(arm) for arm in arms}
    for row in rows:
        row["wall_s"] = facts[row["method"]].get("wall_s")
        if "stage1" in facts[row["method"]]:
            row["stage1"] = facts[row["method"]]["stage1"]
    counts = {g: sum(1 for v in labels.values() if v == g) for g in (TASK, NEAR, OFF)}
    results = {"name": name, "pool_variant": args.pool, "task": spec.task, "leaky": args.leaky,
               "length_matched": spec.length_matched, "pool": str(pool_path.relative_to(ROOT)), "n_pool": len(pool),
               "n_task": counts[TASK], "n_near": counts[NEAR], "n_off": counts[OFF],
               "task_share": counts[TASK] / len(pool), "selection": rows, "n_tokens_from": n_from,
               "fixed_strings": template_fixed_strings(exp.the_task()), "date": date.today().isoformat(),
               "command": command_line(args, arms),
               "median_response_chars": {
                   "task": statistics.median(len(e.response) for e in pool if labels[e.id] == TASK),
                   "other": statistics.median(len(e.response) for e in pool if labels[e.id] != TASK)}}
    if not args.no_finetune:
        exp_results = run_experiment(cfg)
        results["finetuned"] = {"metric": exp_results["metric"], "base": exp_results["base"]["metrics"],
                                "summary": exp_results["summary"]}
    results["wall_s_this_invocation"] = round(time.perf_counter() - t0, 1)
    write(results, out)
    print(f"wrote {out}")
    return 0


def pool_experiment(args: argparse.Namespace) -> tuple[Experiment, dict[str, int]]:
    """The pool of ``args`` (built, or rebuilt identically) and the experiment that scores and
    fine-tunes on it; with each pool row's relevance grade."""
    spec = POOLS[args.pool]
    n_near = args.near_examples if spec.math_near else 0
    n_other = args.other_examples if args.other_examples is not None else 400 - args.task_examples - n_near
    name = pool_name(args.pool, args.leaky)
    overrides = []
    if args.sae:
        name += "-sae-" + ("default" if args.sae == "default" else Path(args.sae).name)
        overrides.append(f"igds.sae.paths=[{args.sae}]")
    cfg = load_experiment_config(ROOT / "benchmarks" / "quality" / f"{spec.task}.yaml", overrides)
    run_dir = ROOT / "runs" / "bench" / name
    pool_path = run_dir / "data" / "mixed_pool.jsonl"
    labels = build_pool(spec, get_task(cfg.task), cfg.igds.pool.path, args.task_examples, n_near, n_other,
                        args.seed, pool_path, args.leaky)
    # A pool where no feature passes the causal filter still gets an igds row: scored with the
    # recalled features, and the notes under the table say so (as in the within-task protocol).
    igds = replace(cfg.igds, out=str(run_dir), pool=DataConfig(path=str(pool_path), dialect="messages"),
                   filter=replace(cfg.igds.filter, on_empty="recall_only"))
    cfg = replace(cfg, name=name, igds=igds, task_format=["task_data", "validation"], methods=list(FINETUNED),
                  seeds=[args.seed])
    check(cfg)
    return Experiment(cfg), labels


def command_line(args: argparse.Namespace, arms: list[str]) -> str:
    """The command that regenerates this table."""
    cmd = f"python benchmarks/mixed_pool.py --pool {args.pool}" + (" --leaky" if args.leaky else "")
    cmd += f" --sae {args.sae}" if args.sae else ""
    if arms != list(ARMS):
        cmd += f" --arms {','.join(arms)}"
    return cmd + (" --no-finetune" if args.no_finetune else "")


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def write(res: dict, out: Path) -> None:
    """Write the results (markdown + JSON) and splice the table into BENCHMARKS.md."""
    med = res["median_response_chars"]
    variant = ("LEAKY variant: the task rows are wrapped in the task template" if res["leaky"]
               else "template-free: every row in the plain pool dialect")
    lines = [f"Date: {res['date']}. Pool `{res['pool_variant']}` ({variant}): {res['n_pool']} rows, "
             f"{res['n_task']} {res['task']} training rows (grade 2, share {res['task_share']:.2f}), "
             f"{res['n_near']} near-task (grade 1), {res['n_off']} off-task (grade 0); off-task T0 rows "
             f"{'nearest in response length to the task rows' if res['length_matched'] else 'drawn at random'} "
             f"(median response: {med['task']:.0f} characters for the task's rows, {med['other']:.0f} for the "
             f"others). Each arm selects 50%. Precision / recall: of the grade-2 rows (chance precision "
             f"{res['task_share']:.2f}, best {min(1.0, res['n_task'] / (res['n_pool'] // 2)):.2f}); graded = mean "
             f"grade / 2; NDCG with gain 2^grade - 1. rho: Spearman of the score with n_tokens (from "
             f"`{res['n_tokens_from'] or 'none'}`) and with response characters; overlap: share of the pick also in "
             "Loss-top, Loss-bottom and longest's pick at the same budget.", "",
             "| method | task rows selected | precision | recall | graded | NDCG | rho n_tokens | rho resp. chars "
             "| ovl loss-top | ovl loss-bottom | ovl longest |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["selection"]:
        lines.append(f"| {r['method']} | {r['task_selected']} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['graded_precision']:.3f} | {r['ndcg']:.3f} | {_num(r['rho_n_tokens'], 2)} | "
                     f"{_num(r['rho_response_chars'], 2)} | {_num(r.get('overlap_loss_top'), 2)} | "
                     f"{_num(r.get('overlap_loss_bottom'), 2)} | {_num(r.get('overlap_longest'), 2)} |")
    stage1 = [r for r in res["selection"] if r.get("stage1")]
    if stage1:
        lines += ["", "Stage 1 of each IGDS arm (the derived arms igds_low / igds_quota / igds_coverage / "
                  "igds_zscore read igds's table):", ""]
        for r in stage1:
            st = r["stage1"]
            kept = ", ".join(st["validated"][:6]) + (" ..." if len(st["validated"]) > 6 else "")
            lines.append(f"- `{r['method']}`: {len(st['validated'])} of {st['n_candidates']} candidates scored "
                         f"({kept or 'none'}); {st['filter_outcome'] or 'no causal filter'}")
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
    splice(res["name"], "\n".join(lines))
    atomic_write_text(out, f"# Mixed pool ({res['name']}): `{res['command']}`\n\n" + "\n".join(lines))
    atomic_write_json(out.with_suffix(".json"), res)


if __name__ == "__main__":
    raise SystemExit(main())
