"""``igds run``: task features -> feature-resonant scores -> selection (-> report).

The one place the stages are sequenced: :func:`load_features` loads the model and SAEs
and runs Stage 1 (:func:`features`); :func:`stages` adds Stage 2 (:func:`scores`).
``igds features`` stops after the first, ``igds score``, :func:`run` and the experiment
runner (:func:`igds_scores`) go through the second.
Each step writes its artifacts into the run directory and is skipped when its
output already exists for the same inputs (a cache key over model, SAEs, data
content and the config that matters), so re-running a command resumes it. Every entry point holds the run directory
(:func:`igds.artifacts.run_directory`: marker, lock, ``igds.log``) while it writes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import platform
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import pyarrow as pa
import torch
import transformers

from ._version import __version__
from .artifacts import RunInfo, atomic_write_json, atomic_write_jsonl, atomic_write_text, run_directory, stable_hash
from .config import RunConfig, cache_view, dump_config, load_config
from .data import Example, Rejects, iter_examples, tokenize_example, write_records
from .engines import score_features
from .feature_set import FeatureSet
from .features import find_task_features
from .inputs import (data_spec, load_saes, precision, read_examples, resolve_source, source_fingerprint,
                     split_task, weights_fingerprint)
from .model import LoadedModel, cache_dir, load_model
from .report import write_report
from .report.stats import correlations
from .sae import SAE
from .scoring import Scores
from .selection import check_pool_ids, read_score_table, select_rows, table_meta

log = logging.getLogger(__name__)


def _say(message: str) -> None:
    """A decision the user sees on stdout and ``igds.log`` keeps."""
    print(message)
    log.info(message)


def _features_key(cfg: RunConfig, lm: LoadedModel, saes: dict[int, SAE], sources: dict[str, str]) -> str:
    return stable_hash({"model": lm.name, "saes": [s.describe() for _, s in sorted(saes.items())],
                        "weights": weights_fingerprint(cfg),
                        "dtype": precision(lm.device, lm.dtype),
                        "max_length": cfg.score.max_length,
                        "data": {k: source_fingerprint(v) for k, v in sources.items()},
                        "task": asdict(cfg.task_data), "validation": asdict(cfg.validation),
                        "reference": asdict(cfg.reference), "recall": cache_view(cfg.recall),
                        "filter": cache_view(cfg.filter),
                        "chat": cfg.use_chat_template, "seed": cfg.seed})


def _reference_key(cfg: RunConfig, lm: LoadedModel, saes: dict[int, SAE], reference: Sequence[Any]) -> str:
    """What the reference's firing statistics depend on: model and SAE weights, precision, the
    reference's tokens (with their content flags) and the counted positions; not the task."""
    tokens = hashlib.sha256(json.dumps([[e.ids, e.prompt_len, e.content] for e in reference]).encode()).hexdigest()
    return stable_hash({"model": lm.name, "saes": [s.describe() for _, s in sorted(saes.items())],
                        "weights": weights_fingerprint(cfg), "dtype": precision(lm.device, lm.dtype),
                        "device": lm.device.type, "tokens": tokens, "positions": cfg.recall.positions})


def features(cfg: RunConfig, lm: LoadedModel, saes: dict[int, SAE], run_dir: Path) -> FeatureSet:
    """Stage 1, cached in ``RUN_DIR/features.json`` (with the task, validation and reference
    records skipped under ``--skip-bad``, in ``info.rejects``)."""
    sources = {"task": resolve_source(cfg.task_data, "task_data"),
               "reference": resolve_source(cfg.reference, "reference")}
    if cfg.validation.path:
        sources["validation"] = resolve_source(cfg.validation, "validation")
    key = _features_key(cfg, lm, saes, sources)
    path = run_dir / "features.json"
    if path.exists():
        cached = FeatureSet.load(path)
        if cached.info.cache_key == key:
            _say(f"features: reusing {path}")
            return cached
        log.info("features: %s was made from other inputs (key %s, now %s); recomputing", path,
                 cached.info.cache_key, key)
    tok = lm.tokenizer
    rejects = Rejects()
    task = read_examples(cfg.task_data, "task_data", cfg.skip_bad, rejects=rejects)
    val_examples = read_examples(cfg.validation, "validation", cfg.skip_bad, rejects=rejects) \
        if cfg.validation.path else None
    probe, val = split_task(task, cfg.recall.probe_size, cfg.filter.validation_size, cfg.seed, val_examples)
    reference = read_examples(cfg.reference, "reference", cfg.skip_bad, limit=cfg.recall.reference_size,
                              rejects=rejects)
    L = cfg.score.max_length

    def toks(exs: Sequence[Example]) -> list[Any]:
        return [tokenize_example(tok, e, L, cfg.use_chat_template) for e in exs]

    started = time.time()
    ref_tokens = toks(reference)
    ref_cache = None
    if cfg.recall.reference_cache:
        ref_key = _reference_key(cfg, lm, saes, ref_tokens)
        ref_cache = (cache_dir() / "reference-stats" / f"{ref_key}.npz", ref_key)
    fs = find_task_features(lm, saes, toks(probe), ref_tokens, toks(val), cfg.recall, cfg.filter,
                            seed=cfg.seed, stats_path=run_dir / "feature_stats.parquet", reference_cache=ref_cache)
    fs.info.cache_key, fs.info.seconds = key, round(time.time() - started, 2)
    fs.info.task_source, fs.info.reference_source = sources["task"], sources["reference"]
    fs.info.rejects = rejects.rows
    fs.info.probe.source = sources["task"]
    fs.info.reference.source = sources["reference"]
    fs.save(path)
    for warning in fs.warnings:
        log.warning("features: %s", warning)
    return fs


def scores(cfg: RunConfig, lm: LoadedModel, saes: dict[int, SAE], fs: FeatureSet, run_dir: Path) -> Scores:
    """Stage 2 of ``cfg.pool`` on the configured engine, resumable in ``RUN_DIR/cache``."""
    return score_features(cfg, lm, saes, fs, run_dir)


def write_rejects(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """``RUN_DIR/rejects.jsonl``: every record this run skipped (``section`` says from which
    input); removed when there are none, so a clean re-run leaves no stale rejects."""
    path = run_dir / "rejects.jsonl"
    if rows:
        atomic_write_jsonl(path, rows)
        log.warning("%d records skipped under --skip-bad -> %s", len(rows), path)
    elif path.exists():
        path.unlink()


def write_selection(run_dir: Path, cfg: RunConfig, table: pa.Table, ratio: float | None = None,
                    budget: int | None = None, out: Path | None = None,
                    scores_path: str | Path | None = None, mode: str | None = None,
                    gate: float | None = None) -> tuple[Path, int]:
    """Write the selected pool records (own dialect, in pick order) plus ``igds_score``,
    ``igds_index`` and ``igds_id``, and next to them (``<stem>.meta.json``) how they were chosen.

    ``mode`` and ``gate`` (:func:`igds.selection.select_rows`) default to ``cfg.select``'s.
    The table's ids are checked row by row against the pool first (:func:`check_pool_ids`):
    a table that does not match the pool (``scores_path`` in the message) is refused."""
    scores_path = scores_path or run_dir / "scores.parquet"
    source = resolve_source(cfg.pool, "pool")
    mode = mode or cfg.select.mode
    gate = cfg.select.gate if gate is None else gate
    chosen = select_rows(table, ratio=ratio, budget=budget, mode=mode, gate=gate)
    rank = {idx: r for r, idx in enumerate(chosen)}
    picked: dict[int, Example] = {}
    stream = iter_examples(source, data_spec(cfg.pool), split=cfg.pool.split, skip_bad=cfg.skip_bad)
    if cfg.pool.limit is not None:
        stream = (ex for _, ex in zip(range(cfg.pool.limit), stream))

    def pool_ids() -> Iterator[str]:  # one pass over the pool: checked and picked together
        for i, ex in enumerate(stream):
            if i in rank:
                picked[i] = ex
            yield ex.id

    check_pool_ids(table, pool_ids(), scores_path, source)
    scored_on = table_meta(table).get("pool", {}).get("fingerprint")
    if scored_on is not None and scored_on != source_fingerprint(source):
        warnings.warn(f"{source} changed since {scores_path} was computed (same ids in the same order); "
                      "its scores may be stale: re-run `igds score` to refresh them", stacklevel=2)
    by_index = dict(zip(table.column("index").to_pylist(), table.column("score").to_pylist()))
    out = out or run_dir / "selection.jsonl"
    write_records(out, [picked[i] for i in chosen],
                  {picked[i].id: {"igds_score": by_index[i], "igds_index": i, "igds_id": picked[i].id} for i in chosen})
    atomic_write_json(out.with_name(out.stem + ".meta.json"),
                      {"mode": mode, "gate": gate if mode == "coverage" else None, "ratio": ratio, "budget": budget,
                       "n": len(chosen), "scores": str(scores_path)})
    return out, len(chosen)


def _load_features(cfg: RunConfig, lm: LoadedModel | None, run_dir: Path,
                   timings: dict[str, float]) -> tuple[LoadedModel, dict[int, SAE], FeatureSet]:
    t = time.time()
    lm = lm or load_model(cfg.model.name, cfg.model.device, cfg.model.dtype, cfg.model.trust_remote_code)
    saes = load_saes(cfg, lm)
    timings["load"] = time.time() - t
    log.info("loaded %s (%s, %s) and %d SAEs in %.1f s", lm.name, lm.device, lm.dtype, len(saes), timings["load"])
    t = time.time()
    fs = features(cfg, lm, saes, run_dir)
    timings["features"] = time.time() - t
    log.info("features: %d validated of %d candidates in %.1f s", len(fs.validated), len(fs.candidates),
             timings["features"])
    return lm, saes, fs


def load_features(cfg: RunConfig, lm: LoadedModel | None = None, run_dir: str | Path | None = None, *,
                  timings: dict[str, float] | None = None) -> tuple[LoadedModel, dict[int, SAE], FeatureSet]:
    """Load the model (unless given) and the SAEs, then Stage 1, in ``run_dir`` (default ``cfg.out``).

    Seconds per step go into ``timings``."""
    with run_directory(Path(cfg.out if run_dir is None else run_dir)) as rd:
        lm, saes, fs = _load_features(cfg, lm, rd, {} if timings is None else timings)
        write_rejects(rd, (fs.info.rejects or []))
        return lm, saes, fs


@dataclass
class Staged:
    """What :func:`stages` produced: the model it used, Stage 1's features, Stage 2's scores."""

    lm: LoadedModel
    features: FeatureSet
    scores: Scores


def _stages(cfg: RunConfig, lm: LoadedModel | None, run_dir: Path, timings: dict[str, float]) -> Staged:
    lm, saes, fs = _load_features(cfg, lm, run_dir, timings)
    t = time.time()
    sc = scores(cfg, lm, saes, fs, run_dir)
    timings["scoring"] = time.time() - t
    log.info("scores: %d rows in %.1f s", sc.summary.pool_size, timings["scoring"])
    write_rejects(run_dir, [*(fs.info.rejects or []), *sc.rejects])
    return Staged(lm, fs, sc)


def stages(cfg: RunConfig, lm: LoadedModel | None = None, run_dir: str | Path | None = None, *,
           timings: dict[str, float] | None = None) -> Staged:
    """:func:`load_features`, then Stage 2: the sequence ``igds score``, :func:`run` and the
    experiment runner share."""
    with run_directory(Path(cfg.out if run_dir is None else run_dir)) as rd:
        return _stages(cfg, lm, rd, {} if timings is None else timings)


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
    with run_directory(Path(cfg.out)) as run_dir:
        started_at = dt.datetime.now().astimezone().isoformat(timespec="seconds")
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
        torch.manual_seed(cfg.seed)
        timings: dict[str, float] = {}
        t0 = time.time()
        staged = _stages(cfg, lm, run_dir, timings)
        lm, fs, sc = staged.lm, staged.features, staged.scores
        t = time.time()
        selection, n = write_selection(run_dir, cfg, sc.table,
                                       cfg.select.ratio if cfg.select.budget is None else None, cfg.select.budget)
        timings["selection"] = time.time() - t
        rejected: dict[str, int] = {}
        for row in [*(fs.info.rejects or []), *sc.rejects]:
            rejected[row["section"]] = rejected.get(row["section"], 0) + 1
        _, rho, _ = correlations(sc.table.column("score").to_numpy(), sc.table.column("n_tokens").to_numpy())
        _say(f"scores: Spearman rho(score, n_tokens) = {rho:+.3f} (score.positions={cfg.score.positions}; "
             "near -1: the score ranks by inverse length)")
        info = RunInfo(versions=versions(), timings_s={k: round(v, 2) for k, v in timings.items()},
                       wall_s=round(time.time() - t0, 2), model=lm.name, device=str(lm.device),
                       dtype=str(lm.dtype).replace("torch.", ""), n_validated=len(fs.validated), n_selected=n,
                       **asdict(sc.summary), started_at=started_at, rejects=rejected,
                       score_length_spearman=None if math.isnan(rho) else round(rho, 4))
        info.save(run_dir / "run.json")
        log.info("selection: %d examples -> %s (%.1f s in all)", n, selection, info.wall_s)
        report = write_report(run_dir) if cfg.report else None
        return RunResult(run_dir, fs, sc.table, selection, n, report)


def reselect(run_dir: str | Path, ratio: float | None = None, budget: int | None = None,
             scores: str | Path | None = None, out: str | Path | None = None, mode: str | None = None,
             gate: float | None = None) -> tuple[Path, int]:
    """``igds select``: take another ratio/budget (``mode``, ``gate``: default the run's) from an
    existing score table."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    scores_path = Path(scores or run_dir / "scores.parquet")
    table = read_score_table(scores_path)
    mode = mode or cfg.select.mode
    size = f"r{ratio}" if ratio is not None else f"n{budget}"
    name = out or run_dir / (f"selection_{size}.jsonl" if mode == "top" else f"selection_{size}_{mode}.jsonl")
    return write_selection(run_dir, cfg, table, ratio, budget, Path(name), scores_path, mode, gate)


def igds_scores(lm: LoadedModel, cfg: RunConfig, run_dir: str | Path) -> tuple[pa.Table, FeatureSet]:
    """Stage 1 + Stage 2 for the experiment runner: the IGDS score table of ``cfg.pool``
    (``run_dir`` is the experiment's own method folder, so it is adopted as a run directory)."""
    with run_directory(Path(run_dir), adopt=True) as rd:
        staged = _stages(cfg, lm, rd, {})
    return staged.scores.table, staged.features
