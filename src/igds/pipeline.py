"""``igds run``: task features -> feature-resonant scores -> selection (-> report).

Each step writes its artifacts into the run directory and is skipped when its
output already exists for the same inputs (a cache key over model, SAEs, data
content and the config that matters), so re-running a command resumes it.
"""

from __future__ import annotations

import platform
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import pyarrow as pa
import torch

from .artifacts import atomic_write_json, atomic_write_text, read_json, stable_hash
from .config import DataConfig, RunConfig, dump_config, load_config
from .data import DataSpec, Example, iter_examples, load_examples, tokenize_example, write_records
from .features import FeatureSet, find_task_features
from .model import LoadedModel, load_model
from .sae import SAE, check_compatible, load_sae
from .scoring import source_fingerprint
from .selection import read_score_table, select_indices

BUILTIN_REFERENCE = Path(__file__).parent / "assets" / "reference" / "generic_instructions.jsonl"


def data_spec(dc: DataConfig) -> DataSpec:
    return DataSpec(dialect=dc.dialect, prompt_field=dc.prompt_field, response_field=dc.response_field,
                    prompt_template=dc.prompt_template, id_field=dc.id_field, system_prompt=dc.system_prompt)


def resolve_source(dc: DataConfig, what: str) -> str:
    if not dc.path:
        raise ValueError(f"no {what} data given (set {what}.path, or --{what.replace('_', '-')} on the CLI)")
    if dc.path == "builtin:generic":
        return str(BUILTIN_REFERENCE)
    return dc.path


def read_examples(dc: DataConfig, what: str, skip_bad: bool = False, limit: int | None = None) -> list[Example]:
    limit = dc.limit if limit is None else (limit if dc.limit is None else min(limit, dc.limit))
    return load_examples(resolve_source(dc, what), data_spec(dc), split=dc.split, skip_bad=skip_bad, limit=limit)


def load_saes(cfg: RunConfig, lm: LoadedModel) -> dict[int, SAE]:
    """Load every configured SAE, keyed by the layer it reads, and check it fits the model."""
    layers = cfg.sae.layers or [None] * len(cfg.sae.paths)
    if len(layers) != len(cfg.sae.paths):
        raise ValueError(f"sae.layers has {len(layers)} entries but sae.paths has {len(cfg.sae.paths)}")
    saes: dict[int, SAE] = {}
    for path, layer in zip(cfg.sae.paths, layers):
        sae = load_sae(path, model_name=lm.name, layer=layer, device=lm.device, dtype=torch.float32)
        check_compatible(sae, lm.d_model, lm.n_layers, source=f"SAE {path}")
        if sae.layer in saes:
            raise ValueError(f"two SAEs read layer {sae.layer}; give one SAE per layer")
        saes[sae.layer] = sae  # type: ignore[index]
    return saes


def split_task(examples: Sequence[Example], probe_size: int, validation_size: int, seed: int,
               validation: Sequence[Example] | None = None) -> tuple[list[Example], list[Example]]:
    """Disjoint probe and validation sets (a seeded shuffle of the task file)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    if validation is not None:
        return [examples[i] for i in order[:probe_size]], list(validation)[:validation_size]
    if len(examples) < 2:
        raise ValueError("the task data needs at least 2 examples (probe and validation)")
    n_val = min(validation_size, len(examples) // 2)
    val = [examples[i] for i in order[:n_val]]
    probe = [examples[i] for i in order[n_val:n_val + probe_size]]
    return probe, val


def _features_key(cfg: RunConfig, lm: LoadedModel, saes: dict[int, SAE], sources: dict[str, str]) -> str:
    return stable_hash({"model": lm.name, "saes": [s.describe() for _, s in sorted(saes.items())],
                        "data": {k: source_fingerprint(v) for k, v in sources.items()},
                        "task": asdict(cfg.task), "validation": asdict(cfg.validation),
                        "reference": asdict(cfg.reference), "recall": asdict(cfg.recall),
                        "filter": {k: v for k, v in asdict(cfg.filter).items() if k != "features_per_forward"},
                        "chat": cfg.use_chat_template, "seed": cfg.seed})


def find_features(cfg: RunConfig, lm: LoadedModel, saes: dict[int, SAE], run_dir: Path) -> FeatureSet:
    """Stage 1, cached in ``RUN_DIR/features.json``."""
    sources = {"task": resolve_source(cfg.task, "task"), "reference": resolve_source(cfg.reference, "reference")}
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
    task = read_examples(cfg.task, "task", cfg.skip_bad)
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


def write_selection(run_dir: Path, cfg: RunConfig, table: pa.Table, ratio: float | None = None,
                    budget: int | None = None, out: Path | None = None) -> tuple[Path, int]:
    """Write the selected pool records (own dialect, best first) plus ``igds_score``."""
    chosen = select_indices(table, ratio=ratio, budget=budget)
    scores = dict(zip(table.column("index").to_pylist(), table.column("score").to_pylist()))
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
    write_records(out, [ex for _, ex in picked], {ex.id: {"igds_score": scores[i]} for i, ex in
                                                 ((chosen[r], ex) for r, ex in picked)})
    return out, len(picked)


@dataclass
class RunResult:
    run_dir: Path
    features: FeatureSet
    scores: pa.Table
    selection: Path
    n_selected: int
    report: Path | None = None


def versions() -> dict[str, str]:
    import transformers

    from . import __version__
    return {"igds": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def run(cfg: RunConfig, lm: LoadedModel | None = None) -> RunResult:
    """Stage 1 + Stage 2 + selection (+ report), resumable in ``cfg.out``."""
    from .engines import score_features

    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    torch.manual_seed(cfg.seed)
    timings: dict[str, float] = {}
    t0 = time.time()
    lm = lm or load_model(cfg.model.name, cfg.model.device, cfg.model.dtype, cfg.model.trust_remote_code)
    saes = load_saes(cfg, lm)
    timings["load"] = time.time() - t0
    t = time.time()
    fs = find_features(cfg, lm, saes, run_dir)
    timings["features"] = time.time() - t
    t = time.time()
    table = score_features(cfg, lm, saes, fs, run_dir)
    timings["scoring"] = time.time() - t
    selection, n = write_selection(run_dir, cfg, table, cfg.select.ratio if cfg.select.budget is None else None,
                                   cfg.select.budget)
    summary = read_json(next((run_dir / "cache").glob("scores-*/summary.json")))
    info = {"versions": versions(), "timings_s": {k: round(v, 2) for k, v in timings.items()},
            "wall_s": round(time.time() - t0, 2), "model": lm.name, "device": str(lm.device),
            "dtype": str(lm.dtype).replace("torch.", ""), "n_validated": len(fs.validated),
            "n_selected": n, **summary}
    atomic_write_json(run_dir / "run.json", info)
    report = None
    if cfg.report:
        try:
            from .report import write_report
        except ImportError:
            write_report = None  # the report needs matplotlib (igds[report])
        if write_report is not None:
            report = write_report(run_dir)
    return RunResult(run_dir, fs, table, selection, n, report)


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
    from .engines import score_features

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    saes = load_saes(cfg, lm)
    fs = find_features(cfg, lm, saes, run_dir)
    return score_features(cfg, lm, saes, fs, run_dir), fs
