"""The ``igds`` command. Each subcommand mirrors one Python entry point.

    igds run       --config FILE.yaml [--model M --task-data T --pool P --ratio R --out DIR] [key=value ...]
    igds features  (same options)          Stage 1 only: RUN_DIR/features.json
    igds score     (same options)          Stage 1 (cached) + Stage 2: RUN_DIR/scores.parquet
    igds select    RUN_DIR --ratio R | --budget N [--scores TABLE] [--output FILE]
    igds report    RUN_DIR
    igds train-sae / eval-sae / experiment / quickstart / examples

Every config key is also a flag: ``--recall.n-candidates 32`` or ``recall.n_candidates=32``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from .config import RunConfig, load_config, set_key

# Short flags for the keys people set most; every key also has its long --section.key form.
ALIASES = {
    "model": "model.name", "task-data": "task.path", "validation-data": "validation.path",
    "pool": "pool.path", "reference": "reference.path", "layer": "sae.layers", "ratio": "select.ratio",
    "budget": "select.budget", "out": "out", "seed": "seed", "engine": "score.engine",
    "device": "model.device", "dtype": "model.dtype", "aggregation": "score.aggregation",
}


def _leaf_keys(obj: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys += _leaf_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (defaults: igds.config)")
    p.add_argument("--sae", action="append", dest="sae_paths", metavar="SAE",
                   help="SAE folder/file, SAELens release/sae_id, or 'default' (repeat for several layers)")
    p.add_argument("--skip-bad", action="store_true", default=None,
                   help="write bad input rows to RUN_DIR/rejects.jsonl instead of stopping")
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    for flag, key in ALIASES.items():
        p.add_argument(f"--{flag}", dest=f"cfg:{key}", metavar=key.split(".")[-1].upper(), help=f"= {key}")
    for key in _leaf_keys(RunConfig()):
        flag = "--" + key.replace("_", "-")
        if flag[2:] in ALIASES or key in ("skip_bad", "report", "sae.paths"):
            continue
        p.add_argument(flag, dest=f"cfg:{key}", metavar="V", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. recall.n_candidates=32")


def _config_from_args(args: argparse.Namespace) -> RunConfig:
    cfg = load_config(args.config, args.overrides)
    for dest, raw in vars(args).items():
        if dest.startswith("cfg:") and raw is not None:
            key = dest[4:]
            value = yaml.safe_load(raw)
            if key == "sae.layers" and isinstance(value, int):
                value = [value]
            if key in ("model.name", "task.path", "pool.path", "reference.path", "validation.path", "out"):
                value = raw  # paths and names stay strings
            set_key(cfg, key, value)
    if args.sae_paths:
        cfg.sae.paths = args.sae_paths
    if args.skip_bad:
        cfg.skip_bad = True
    if getattr(args, "no_report", False):
        cfg.report = False
    if getattr(args, "cfg:select.budget", None) is not None:
        cfg.select.ratio = None
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import run

    result = run(_config_from_args(args))
    print(f"\nvalidated features: {len(result.features.validated)} -> {result.run_dir / 'features.json'}")
    print(f"score table:        {result.scores.num_rows} examples -> {result.run_dir / 'scores.parquet'}")
    print(f"selection:          {result.n_selected} examples -> {result.selection}")
    if result.report:
        print(f"report:             {result.report}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from .pipeline import load_features

    cfg = _config_from_args(args)
    _, _, fs = load_features(cfg)
    print(f"{len(fs.validated)} validated of {len(fs.candidates)} candidates -> {Path(cfg.out) / 'features.json'}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from .pipeline import stages

    cfg = _config_from_args(args)
    table = stages(cfg).scores.table
    print(f"{table.num_rows} examples scored -> {Path(cfg.out) / 'scores.parquet'}")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from .pipeline import reselect

    path, n = reselect(args.run_dir, args.ratio, args.budget, args.scores, args.output)
    print(f"{n} examples -> {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(write_report(args.run_dir))
    return 0


def cmd_examples(args: argparse.Namespace) -> int:
    from .quickstart import write_example_data

    for name, path in write_example_data(args.out_dir, seed=args.seed).items():
        print(f"{name}: {path}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Generate the shipped example data and run the whole selection on the built-in model."""
    from .quickstart import write_example_data

    out = Path(args.out)
    files = write_example_data(out / "data", seed=0)
    argv = ["run", "--model", args.model, "--task-data", str(files["task"]), "--pool", str(files["pool"]),
            "--ratio", "0.5", "--out", str(out / "run")] + list(args.overrides)
    print("igds " + " ".join(argv))
    return main(argv)


def cmd_baseline(args: argparse.Namespace) -> int:
    """Score a pool with one of the paper's baselines (same table shape as IGDS)."""
    from . import selectors as baselines
    from .data import DataSpec, load_examples
    from .selection import write_score_table

    spec = DataSpec(prompt_field=args.prompt_field, response_field=args.response_field)
    pool = load_examples(args.pool, spec)
    if args.method in ("loss", "ifd"):
        from .model import load_model
        lm = load_model(args.model)
        table = (baselines.loss_scores(lm, pool, keep=args.keep, max_length=args.max_length) if args.method == "loss"
                 else baselines.ifd_scores(lm, pool, max_length=args.max_length))
    elif args.method == "random":
        table = baselines.random_scores(pool, seed=args.seed)
    elif args.method == "zip":
        table = baselines.zip_scores(pool)
    else:
        table = baselines.longest_scores(pool)
    write_score_table(args.out, table)
    print(f"{table.num_rows} examples scored by {args.method} -> {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a model (optionally with a LoRA adapter) on a task's data."""
    from .artifacts import atomic_write_json
    from .evaluate import evaluate_task
    from .model import load_model
    from .tasks import get_task

    task = get_task(args.task)
    lm = load_model(args.model)
    if args.adapter:
        from peft import PeftModel
        lm.model = PeftModel.from_pretrained(lm.model, args.adapter).merge_and_unload().eval()
    result = evaluate_task(lm, task, task.load(args.data, limit=args.limit), generate=not args.no_generate,
                           max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    if args.out:
        atomic_write_json(args.out, result)
    print(json.dumps(result["metrics"], indent=2))
    return 0


# Subcommands whose modules own their full argument parsers: argv is handed over as is.
PASSTHROUGH = {
    "train-sae": ("train_sae", "train TopK SAEs on a model's residual stream"),
    "eval-sae": ("eval_sae", "variance explained, L0, dead latents, loss recovered"),
    "experiment": ("experiment", "methods x ratios x seeds -> fine-tune -> evaluate"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="igds", description="Interpretability-guided data selection")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, text in (("run", cmd_run, "features -> scores -> selection (-> report)"),
                           ("features", cmd_features, "Stage 1: recall + causal filter"),
                           ("score", cmd_score, "Stage 2: score the pool")):
        p = sub.add_parser(name, help=text, description=text)
        _add_config_options(p)
        p.set_defaults(fn=fn)
    p = sub.add_parser("select", help="re-select any ratio/budget from a score table")
    p.add_argument("run_dir")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--ratio", type=float)
    g.add_argument("--budget", type=int)
    p.add_argument("--scores", help="another score table (e.g. a baseline's); default RUN_DIR/scores.parquet")
    p.add_argument("--output", help="output JSONL (default RUN_DIR/selection_r<ratio>.jsonl)")
    p.set_defaults(fn=cmd_select)
    p = sub.add_parser("report", help="write RUN_DIR/report.html")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("examples", help="write the shipped example task set and pool")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_examples)
    p = sub.add_parser("quickstart", help="example data + `igds run` on the built-in model, offline")
    p.add_argument("--out", default="runs/quickstart")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(fn=cmd_quickstart)
    p = sub.add_parser("baseline", help="score a pool with Random/Loss/IFD/ZIP/longest (same table as IGDS)")
    p.add_argument("method", choices=["random", "loss", "ifd", "zip", "longest"])
    p.add_argument("--pool", required=True)
    p.add_argument("--out", required=True, help="score table (.parquet); select from it with `igds select --scores`")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", choices=["high", "low"], default="high", help="Loss baseline: hard (high) or easy end")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--prompt-field")
    p.add_argument("--response-field")
    p.set_defaults(fn=cmd_baseline)
    p = sub.add_parser("evaluate", help="task metric + reference loss of a model (or base + LoRA adapter)")
    p.add_argument("--task", required=True, help="math | summarization | translation | task.yaml")
    p.add_argument("--data", required=True)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--adapter")
    p.add_argument("--limit", type=int)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-generate", action="store_true", help="reference loss only")
    p.add_argument("--out")
    p.set_defaults(fn=cmd_evaluate)
    for name, (_module, text) in PASSTHROUGH.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; ``key=value`` overrides may sit anywhere, also between flags."""
    parser = build_parser()
    # argparse fills a nargs="*" positional from one run of words only; later runs come back
    # as unknown arguments, and are overrides when they look like key=value.
    args, extras = parser.parse_known_args(argv)
    stray = [x for x in extras if not OVERRIDE.match(x)]
    if stray or (extras and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extras)}")
    if extras:
        args.overrides = [*args.overrides, *extras]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        import importlib

        module = importlib.import_module(f"igds.{PASSTHROUGH[argv[0]][0]}")
        return int(module.main(argv[1:]) or 0)
    args = parse(argv)
    try:
        return int(args.fn(args) or 0)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError, FloatingPointError) as e:
        from .data import DataError
        if isinstance(e, DataError) or type(e) in (ValueError, FileNotFoundError, KeyError, RuntimeError,
                                                   FloatingPointError):
            print(f"igds {args.command}: error: {e.args[0] if e.args else e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
