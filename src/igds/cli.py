"""The ``igds`` command. Each subcommand mirrors one Python entry point.

    igds run       --config FILE.yaml [--model M --task-data T --pool P --ratio R --out DIR] [key=value ...]
    igds features  (same options)          Stage 1 only: RUN_DIR/features.json
    igds score     (same options)          Stage 1 (cached) + Stage 2: RUN_DIR/scores.parquet
    igds select    RUN_DIR --ratio R | --budget N [--mode top|quota|coverage] [--gate G] [--scores TABLE]
                   [--output FILE]
    igds report    RUN_DIR
    igds experiment / train-sae / eval-sae  [--config FILE.yaml] [--key value ...] [key=value ...]
    igds config show [--for run|experiment|train-sae|eval-sae] [--config FILE] [key=value ...]
    igds quickstart / examples / baseline / evaluate

Every config key is also a flag, generated from the dataclasses in :mod:`igds.config` (one
generator, :func:`add_config_options`): ``--recall.n-candidates 32`` or
``recall.n_candidates=32``; ``igds COMMAND --help`` lists them all with their comments.
Values are checked when loaded, before any model is read.

Errors: every failure a user can fix is one line on stderr, ``igds: error: WHERE: WHAT``,
naming the file (or ``command line``) and the key or line. Exit codes:

    0    success
    1    a failure while working: a missing optional extra (the line names the
         ``pip install 'igds[EXTRA]'`` to run), a model or SAE that does not load, a numeric failure
    2    a usage, config or input error: unknown flag or key, bad value, missing file or run
         directory, a bad data row; fix what the line names and run again
    130  interrupted (Ctrl-C): finished steps are cached in the run directory; the message
         lists them and the command that resumes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from .artifacts import atomic_write_json
from .config import (IGDS_METHODS, EvalSAEConfig, ExperimentConfig, RunConfig, SelectConfig, TrainSAEConfig,
                     dump_config, field_help, field_type, load_config)
from .data import DataError
from .eval_sae import run_eval, summary_lines
from .evaluate import evaluate_task
from .experiment import results_markdown, run_experiment
from .inputs import load_saes, read_examples
from .model import load_model
from .pipeline import load_features, reselect, run, stages
from .quickstart import write_example_data
from .report import write_report
from .selection import write_score_table
from .selectors import SELECTORS, SelectionContext, get_selector, run_selector
from .tasks import get_task
from .train_sae import train_sae

# Short flags for the keys people set most; every key also has its long --section.key form.
# A (key, value) pair is a switch that sets the key to that value.
RUN_ALIASES: dict[str, Any] = {
    "model": "model.name", "task-data": "task_data.path", "validation-data": "validation.path",
    "pool": "pool.path", "reference": "reference.path", "sae": "sae.paths", "layer": "sae.layers",
    "ratio": "select.ratio", "budget": "select.budget", "engine": "score.engine", "device": "model.device",
    "dtype": "model.dtype", "aggregation": "score.aggregation", "no-report": ("report", False),
}
BASELINE_ALIASES: dict[str, Any] = {**{k: v for k, v in RUN_ALIASES.items() if k not in ("ratio", "budget", "no-report")},
                                    "max-length": "score.max_length"}
TRAIN_SAE_ALIASES: dict[str, Any] = {"out": "out_dir", "no-chat-template": ("use_chat_template", False),
                                     "no-progress": ("progress", False)}
CONFIGS: dict[str, tuple[type, dict[str, Any]]] = {
    "run": (RunConfig, RUN_ALIASES), "experiment": (ExperimentConfig, {}),
    "train-sae": (TrainSAEConfig, TRAIN_SAE_ALIASES), "eval-sae": (EvalSAEConfig, {}),
}
# The optional extra that provides each lazily imported package.
EXTRAS = {"ray": "ray", "peft": "finetune", "accelerate": "finetune", "rouge_score": "finetune",
          "sacrebleu": "finetune", "scipy": "finetune", "matplotlib": "report", "datasets": "hf",
          "sae_lens": "saelens", "data_selection": "select", "bm25s": "select"}


class UsageError(ValueError):
    """A bad command line (argparse's complaints, a missing run directory)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is raised (and printed as one line by :func:`main`)."""

    def error(self, message: str) -> typing.NoReturn:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


# ====================================================================== flags from the config tree
def leaves(cls: type, prefix: str = "") -> list[tuple[str, type, dataclasses.Field]]:
    """(dotted key, owning dataclass, field) of every leaf of a config tree, in declaration order."""
    out = []
    for f in dataclasses.fields(cls):
        tp = field_type(cls, f.name)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += leaves(tp, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", cls, f))
    return out


def _is_list(tp: Any) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return typing.get_origin(tp) is list or any(typing.get_origin(a) is list for a in args) and len(args) == 1


def _keeps_text(tp: Any) -> bool:
    """Values of ``str`` (or ``list[str]``) fields stay as typed: a path or name is never YAML-parsed."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    return all(a is str or a == list[str] for a in args)


def add_config_options(p: argparse.ArgumentParser, cls: type, aliases: dict[str, Any]) -> None:
    """``--config``, the aliases, one ``--section.key`` flag per config leaf (help = the knob's
    comment) and ``key=value`` overrides."""
    p.add_argument("--config", help="YAML config file (defaults: igds.config)")
    defaults = cls()
    for flag, target in aliases.items():
        if isinstance(target, tuple):
            p.add_argument(f"--{flag}", dest=f"cfg:{target[0]}", action="append_const", const=target[1],
                           help=f"= --{target[0].replace('_', '-')} {str(target[1]).lower()}")
        else:
            p.add_argument(f"--{flag}", dest=f"cfg:{target}", action="append", metavar=target.split(".")[-1].upper(),
                           help=f"= --{target.replace('_', '-')}")
    groups: dict[str, Any] = {}
    taken = {f"--{flag}" for flag in aliases}
    for key, owner, f in leaves(cls):
        section = key.rpartition(".")[0]
        group = groups.get(section) or groups.setdefault(section, p.add_argument_group(section or "settings"))
        flag = "--" + key.replace("_", "-")
        if flag in taken:
            continue
        default = _get(defaults, key)
        text = field_help(owner).get(f.name, "")
        switch = {"nargs": "?", "const": True} if field_type(owner, f.name) is bool else {}  # --skip-bad alone = true
        group.add_argument(flag, dest=f"cfg:{key}", action="append", metavar="V", **switch,
                           help=f"{text} (default: {json.dumps(default, default=str)})".replace("%", "%%"))
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. recall.n_candidates=32")


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _flag_value(cls: type, key: str, raws: list[Any]) -> Any:
    *parents, name = key.split(".")
    owner = cls
    for part in parents:
        owner = field_type(owner, part)
    tp = field_type(owner, name)
    values: list[Any] = []
    for raw in raws:
        v = raw if not isinstance(raw, str) or _keeps_text(tp) else yaml.safe_load(raw)
        values += v if isinstance(v, list) and _is_list(tp) else [v]
    # one flag given once sets the value; a list flag given several times collects them
    return values if _is_list(tp) and len(values) > 1 else values[-1]


def config_from_args(args: argparse.Namespace, cls: type) -> Any:
    """The config of ``cls``: defaults <- ``--config`` <- ``key=value`` <- flags, checked."""
    overrides = dict(parse_kv(o) for o in args.overrides)
    for dest, raws in vars(args).items():
        if dest.startswith("cfg:") and raws is not None:
            overrides[dest[4:]] = _flag_value(cls, dest[4:], raws)
    if cls is RunConfig and "select.budget" in overrides and "select.ratio" not in overrides:
        overrides["select.ratio"] = None  # a budget replaces the default ratio
    cfg = load_config(args.config, overrides, cls=cls)
    args.cfg = cfg  # for the Ctrl-C message
    return cfg


# ====================================================================== commands
def cmd_run(args: argparse.Namespace) -> int:
    result = run(config_from_args(args, RunConfig))
    print(f"\nvalidated features: {len(result.features.validated)} -> {result.run_dir / 'features.json'}")
    print(f"score table:        {result.scores.num_rows} examples -> {result.run_dir / 'scores.parquet'}")
    print(f"selection:          {result.n_selected} examples -> {result.selection}")
    if result.report:
        print(f"report:             {result.report}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, RunConfig)
    _, _, fs = load_features(cfg)
    print(f"{len(fs.validated)} validated of {len(fs.candidates)} candidates -> {Path(cfg.out) / 'features.json'}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, RunConfig)
    table = stages(cfg).scores.table
    print(f"{table.num_rows} examples scored -> {Path(cfg.out) / 'scores.parquet'}")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    cfg = config_from_args(args, ExperimentConfig)
    results = run_experiment(cfg)
    print(results_markdown(results))
    print(f"results: {Path(cfg.igds.out) / 'experiment'}")
    return 0


def cmd_train_sae(args: argparse.Namespace) -> int:
    for layer, path in train_sae(config_from_args(args, TrainSAEConfig)).items():
        print(f"layer {layer}: {path}")
    return 0


def cmd_eval_sae(args: argparse.Namespace) -> int:
    res = run_eval(config_from_args(args, EvalSAEConfig), progress=not args.json)
    print(json.dumps(res, indent=2) if args.json else "\n".join(summary_lines(res)))
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    cls = CONFIGS[args.command_for][0]
    overrides = dict(parse_kv(o) for o in args.overrides)
    print(dump_config(load_config(args.config, overrides, cls=cls, rules=False)), end="")
    return 0


def parse_kv(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise UsageError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def _run_dir(path: str) -> Path:
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise UsageError(f"{path}: run directory not found; give the --out folder of an `igds run`")
    return run_dir


def cmd_select(args: argparse.Namespace) -> int:
    run_dir = _run_dir(args.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UsageError(f"{run_dir}: not an igds run directory (no config.yaml); run `igds run --out {run_dir}` first")
    path, n = reselect(run_dir, args.ratio, args.budget, args.scores, args.output, args.mode, args.gate)
    print(f"{n} examples -> {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    print(write_report(_run_dir(args.run_dir)))
    return 0


def cmd_examples(args: argparse.Namespace) -> int:
    for name, path in write_example_data(args.out_dir, seed=args.seed).items():
        print(f"{name}: {path}")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    """Generate the shipped example data and run the whole selection on the built-in model."""
    out = Path(args.out)
    files = write_example_data(out / "data", seed=0)
    argv = ["run", "--model", args.model, "--task-data", str(files["task"]), "--pool", str(files["pool"]),
            "--ratio", "0.5", "--out", str(out / "run")] + list(args.overrides)
    print("igds " + " ".join(argv))
    return main(argv)


def cmd_baseline(args: argparse.Namespace) -> int:
    """``igds baseline NAME``: score the pool with a registered selector (:mod:`igds.selectors`)
    into a score table that ``igds select --scores`` reads."""
    cfg = config_from_args(args, RunConfig)
    if not cfg.out.endswith(".parquet"):
        raise UsageError(f"--out {cfg.out}: give the score table's file name, ending in .parquet")
    selector = get_selector(args.method)
    pool = read_examples(cfg.pool, "pool", cfg.skip_bad)
    task = read_examples(cfg.task_data, "task_data", cfg.skip_bad) if "task" in selector.needs else ()
    # a model also for `longest`, which then counts tokens of this model's tokenizer
    wants_model = bool({"model", "sae"} & set(selector.needs)) or args.method == "longest"
    lm = load_model(cfg.model.name, cfg.model.device, cfg.model.dtype, cfg.model.trust_remote_code) \
        if wants_model else None
    # the SAE-based selectors read the first (lowest-layer) SAE, as in `igds experiment`
    sae = next(iter(sorted(load_saes(cfg, lm).items())))[1] if "sae" in selector.needs else None
    options = dict(parse_kv(o) for o in args.options)
    if args.keep is not None:
        options["keep"] = args.keep
    ctx = SelectionContext(model=lm, task=task, sae=sae, seed=cfg.seed, max_length=cfg.score.max_length,
                           use_chat_template=cfg.use_chat_template, options=options, progress=True)
    table = run_selector(args.method, pool, ctx)
    write_score_table(cfg.out, table)
    print(f"{table.num_rows} examples scored by {args.method} -> {cfg.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a model (optionally with a LoRA adapter) on a task's data."""
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


# ====================================================================== parser
COMMANDS = (("run", cmd_run, "features -> scores -> selection (-> report)"),
            ("features", cmd_features, "Stage 1: recall + causal filter"),
            ("score", cmd_score, "Stage 2: score the pool"),
            ("experiment", cmd_experiment, "methods x ratios x seeds -> fine-tune -> evaluate"),
            ("train-sae", cmd_train_sae, "train TopK SAEs on a model's residual stream"),
            ("eval-sae", cmd_eval_sae, "variance explained, L0, dead latents, loss recovered"))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="igds", description="Interpretability-guided data selection",
                    epilog="exit codes: 0 ok, 1 failure while working, 2 usage/config/input error, 130 interrupted")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, text in COMMANDS:
        cls, aliases = CONFIGS.get(name, CONFIGS["run"])
        p = sub.add_parser(name, help=text, description=text)
        add_config_options(p, cls, aliases)
        if name == "eval-sae":
            p.add_argument("--json", action="store_true", help="print the result as JSON")
        p.set_defaults(fn=fn)
    p = sub.add_parser("config", help="show the resolved config")
    p.add_argument("action", choices=["show"])
    p.add_argument("--for", dest="command_for", choices=list(CONFIGS), default="run",
                   help="which command's config (default: run)")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(fn=cmd_config_show)
    p = sub.add_parser("select", help="re-select any ratio/budget from a score table")
    p.add_argument("run_dir")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--ratio", type=float)
    g.add_argument("--budget", type=int)
    select_help = field_help(SelectConfig)
    p.add_argument("--mode", choices=typing.get_args(field_type(SelectConfig, "mode")),
                   help=f"{select_help['mode']} (default: the run's select.mode)")
    p.add_argument("--gate", type=float, help=f"{select_help['gate']} (default: the run's select.gate)")
    p.add_argument("--scores", help="another score table (e.g. a baseline's); default RUN_DIR/scores.parquet")
    p.add_argument("--output", help="output JSONL (default RUN_DIR/selection_r<ratio>[_<mode>].jsonl)")
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
    p = sub.add_parser("baseline", help="score a pool with any registered selector (same table as IGDS)",
                       description="Score --pool with one selector of igds.selectors into --out TABLE.parquet; "
                                   "take any ratio or budget from it with `igds select RUN_DIR --scores TABLE`. "
                                   "Every run key applies (pool.*, task_data.*, model.*, sae.*, seed, "
                                   "score.max_length).")
    p.add_argument("method", choices=sorted(n for n in SELECTORS if n not in IGDS_METHODS),
                   help="the selector; dsir, bm25, embed and mona target --task-data")
    p.add_argument("--opt", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the selector (see its module in igds.selectors), e.g. --opt aggregate=max")
    p.add_argument("--keep", choices=["high", "low"], help="= --opt keep=...: Loss keeps the hard (high) or easy end")
    add_config_options(p, RunConfig, BASELINE_ALIASES)
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


# ====================================================================== errors
def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(e).__name__


def _run_dir_of(args: argparse.Namespace | None) -> Path | None:
    cfg = getattr(args, "cfg", None)
    if isinstance(cfg, ExperimentConfig):
        return Path(cfg.igds.out)
    if isinstance(cfg, TrainSAEConfig):
        return Path(cfg.out_dir)
    if isinstance(cfg, RunConfig):
        return Path(cfg.out)
    return None


def cached_summary(run_dir: Path) -> str:
    """What a re-run into ``run_dir`` will reuse, in words."""
    found = [name for name in ("features.json", "scores.parquet", "checkpoint.pt", "activation_cache")
             if (run_dir / name).exists()]
    shards = len(list(run_dir.glob("cache/scores-*/shard-*.parquet")))
    if shards:
        found.append(f"{shards} scored shard(s) in cache/")
    runs = len(list(run_dir.glob("experiment/runs/*/result.json")))
    if runs:
        found.append(f"{runs} finished experiment run(s)")
    return ", ".join(found) or "nothing yet"


def interrupted(args: argparse.Namespace | None, argv: Sequence[str]) -> str:
    """The Ctrl-C message: what is cached where, and the command that resumes."""
    run_dir = _run_dir_of(args)
    where = f"; cached in {run_dir}: {cached_summary(run_dir)}" if run_dir is not None else ""
    return f"igds: interrupted{where}. Resume with the same command: igds {shlex.join(argv)}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``igds`` command; returns the exit code (module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = None
    try:
        args = parse(argv)
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        print(interrupted(args, argv), file=sys.stderr)
        return 130
    except ImportError as e:
        extra = EXTRAS.get((e.name or "").split(".")[0]) if isinstance(e, ModuleNotFoundError) else None
        if extra is not None:
            print(f"igds: error: this needs the optional package {e.name!r}; install it with: "
                  f"pip install 'igds[{extra}]'", file=sys.stderr)
        elif isinstance(e.__cause__, ModuleNotFoundError) and "pip install" in str(e):
            print(f"igds: error: {_one_line(e)}", file=sys.stderr)  # igds's own message naming the extra
        else:
            raise
        return 1
    except (ValueError, KeyError, FileNotFoundError, NotADirectoryError, IsADirectoryError, DataError) as e:
        print(f"igds: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError, FloatingPointError) as e:
        print(f"igds: error: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
