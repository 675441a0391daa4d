"""``igds run``: task features -> feature-resonant scores -> selection (-> report).

The one place the stages are sequenced: :func:`load_features` loads the model and SAEs
and runs Stage 1 (:func:`features`); :func:`stages` adds Stage 2 (:func:`scores`).
``igds features`` stops after the first, ``igds score``, :func:`run` and the experiment
runner (:func:`igds_scores`) go through the second.
Each step writes its artifacts into the run directory and is skipped when its
output already exists for the same inputs (a cache key over model, SAEs, data
content and the config that matters), so re-running a command resumes it.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import torch
import transformers

from . import __version__
from .artifacts import atomic_write_json, atomic_write_text, stable_hash
from .config import RunConfig, cache_view, dump_config, load_config
from .data import Example, iter_examples, tokenize_example, write_records
from .engines import score_features
from .features import FeatureSet, find_task_features
from .inputs import data_spec, load_saes, read_examples, resolve_source, split_task
from .model import LoadedModel, load_model
from .report import write_report
from .sae import SAE
from .scoring import Scores, source_fingerprint
from .selection import read_score_table, select_indices


def _features_key(cfg: RunConfig, lm: LoadedModel, saes: dict[int, SAE], sources: dict[str, str]) -> str:
    return stable_hash({"model": lm.name, "saes": [s.describe() for _, s in sorted(saes.items())],
                        "data": {k: source_fingerprint(v) for k, v in sources.items()},
                        "task": asdict(cfg.task_data), "validation": asdict(cfg.validation),
                        "reference": asdict(cfg.reference), "recall": asdict(cfg.recall),
                        "filter": cache_view(cfg.filter),
                        "chat": cfg.use_chat_template, "seed": cfg.seed})


def features(cfg: RunConfig, lm: LoadedModel, saes: dict[int, SAE], run_dir: Path) -> FeatureSet:
    """Stage 1, cached in ``RUN_DIR/features.json``."""
    sources = {"task": resolve_source(cfg.task_data, "task_data"), "reference": resolve_source(cfg.reference, "reference")}
    if cfg.validation.path:
        sources["validation"] = resolve_source(cfg.validation, "validation")
    key = _features_key(cfg, lm, saes, sources)
    path = run_dir / "features.json"
    if path.exists():
        cached = FeatureSet.load(path)
        if cached.info.get("cache_key") == key:
            print(f"features: reusing {path}")
            return cached
    tok = lm.tokenizer
    task = read_examples(cfg.task_data, "task_data", cfg.skip_bad)
    val_examples = read_examples(cfg.validation, "validation", cfg.skip_bad) if cfg.validation.path else None
    probe, val = split_task(task, cfg.recall.probe_size, cfg.filter.validation_size, cfg.seed, val_examples)
    reference = read_examples(cfg.reference, "reference", cfg.skip_bad, limit=cfg.recall.reference_size)
    L = cfg.score.max_length

    def toks(exs: Sequence[Example]) -> list[Any]:
        return [tokenize_example(tok, e, L, cfg.use_chat_template) for e in exs]

    started = time.time()
    fs = find_task_features(lm, saes, toks(probe), toks(reference), toks(val), cfg.recall, cfg.filter,
                            seed=cfg.seed, stats_path=run_dir / "feature_stats.parquet")
    fs.info.update({"cache_key": key, "seconds": round(time.time() - started, 2),
                    "task_source": sources["task"], "reference_source": sources["reference"]})
    fs.info["probe"]["source"] = sources["task"]
    fs.info["reference"]["source"] = sources["reference"]
    fs.save(path)
    return fs


def scores(cfg: RunConfig, lm: LoadedModel, saes: dict[int, SAE], fs: FeatureSet, run_dir: Path) -> Scores:
    """Stage 2 of ``cfg.pool`` on the configured engine, resumable in ``RUN_DIR/cache``."""
    return score_features(cfg, lm, saes, fs, run_dir)


def write_selection(run_dir: Path, cfg: RunConfig, table: pa.Table, ratio: float | None = None,
                    budget: int | None = None, out: Path | None = None) -> tuple[Path, int]:
    """Write the selected pool records (own dialect, best first) plus ``igds_score``."""
    chosen = select_indices(table, ratio=ratio, budget=budget)
    by_index = dict(zip(table.column("index").to_pylist(), table.column("score").to_pylist()))
    rank = {idx: r for r, idx in enumerate(chosen)}
    picked: list[tuple[int, Example]] = []
    stream = iter_examples(resolve_source(cfg.pool, "pool"), data_spec(cfg.pool), split=cfg.pool.split,
                           skip_bad=cfg.skip_bad)
    for i, ex in enumerate(stream):
        if cfg.pool.limit is not None and i >= cfg.pool.limit:
            break
        if i in rank:
            picked.append((rank[i], ex))
    picked.sort(key=lambda p: p[0])
    out = out or run_dir / "selection.jsonl"
    write_records(out, [ex for _, ex in picked], {ex.id: {"igds_score": by_index[i]} for i, ex in
                                                 ((chosen[r], ex) for r, ex in picked)})
    return out, len(picked)


def load_features(cfg: RunConfig, lm: LoadedModel | None = None, run_dir: str | Path | None = None, *,
                  timings: dict[str, float] | None = None) -> tuple[LoadedModel, dict[int, SAE], FeatureSet]:
    """Load the model (unless given) and the SAEs, then Stage 1, in ``run_dir`` (default ``cfg.out``).

    Seconds per step go into ``timings``."""
    run_dir = Path(cfg.out if run_dir is None else run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    timings = {} if timings is None else timings
    t = time.time()
    lm = lm or load_model(cfg.model.name, cfg.model.device, cfg.model.dtype, cfg.model.trust_remote_code)
    saes = load_saes(cfg, lm)
    timings["load"] = time.time() - t
    t = time.time()
    fs = features(cfg, lm, saes, run_dir)
    timings["features"] = time.time() - t
    return lm, saes, fs


@dataclass
class Staged:
    """What :func:`stages` produced: the model it used, Stage 1's features, Stage 2's scores."""

    lm: LoadedModel
    features: FeatureSet
    scores: Scores


def stages(cfg: RunConfig, lm: LoadedModel | None = None, run_dir: str | Path | None = None, *,
           timings: dict[str, float] | None = None) -> Staged:
    """:func:`load_features`, then Stage 2: the sequence ``igds score``, :func:`run` and the
    experiment runner share."""
    run_dir = Path(cfg.out if run_dir is None else run_dir)
    timings = {} if timings is None else timings
    lm, saes, fs = load_features(cfg, lm, run_dir, timings=timings)
    t = time.time()
    sc = scores(cfg, lm, saes, fs, run_dir)
    timings["scoring"] = time.time() - t
    return Staged(lm, fs, sc)


@dataclass
class RunResult:
    run_dir: Path
    features: FeatureSet
    scores: pa.Table
    selection: Path
    n_selected: int
    report: Path | None = None


def versions() -> dict[str, str]:
    """The versions that made a run, for ``run.json``."""
    return {"igds": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def run(cfg: RunConfig, lm: LoadedModel | None = None) -> RunResult:
    """Stage 1 + Stage 2 + selection (+ report), resumable in ``cfg.out``."""
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    torch.manual_seed(cfg.seed)
    timings: dict[str, float] = {}
    t0 = time.time()
    staged = stages(cfg, lm, run_dir, timings=timings)
    lm, fs, sc = staged.lm, staged.features, staged.scores
    selection, n = write_selection(run_dir, cfg, sc.table, cfg.select.ratio if cfg.select.budget is None else None,
                                   cfg.select.budget)
    info = {"versions": versions(), "timings_s": {k: round(v, 2) for k, v in timings.items()},
            "wall_s": round(time.time() - t0, 2), "model": lm.name, "device": str(lm.device),
            "dtype": str(lm.dtype).replace("torch.", ""), "n_validated": len(fs.validated),
            "n_selected": n, **sc.summary}
    atomic_write_json(run_dir / "run.json", info)
    report = write_report(run_dir) if cfg.report else None
    return RunResult(run_dir, fs, sc.table, selection, n, report)


def reselect(run_dir: str | Path, ratio: float | None = None, budget: int | None = None,
             scores: str | Path | None = None, out: str | Path | None = None) -> tuple[Path, int]:
    """``igds select``: take another ratio/budget from an existing score table."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    table = read_score_table(scores or run_dir / "scores.parquet")
    name = out or (run_dir / (f"selection_r{ratio}.jsonl" if ratio is not None else f"selection_n{budget}.jsonl"))
    return write_selection(run_dir, cfg, table, ratio, budget, Path(name))


def igds_scores(lm: LoadedModel, cfg: RunConfig, run_dir: str | Path) -> tuple[pa.Table, FeatureSet]:
    """Stage 1 + Stage 2 for the experiment runner: the IGDS score table of ``cfg.pool``."""
    staged = stages(cfg, lm, run_dir)
    return staged.scores.table, staged.features
