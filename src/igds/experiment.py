"""``igds experiment``: methods x ratios x seeds -> select -> fine-tune -> evaluate -> tables.

One experiment compares selection methods at equal budgets on one task:

* ``igds`` (the full method), ``igds_recall_only`` (no causal filter) and
  ``igds_random_candidates`` (random features through the causal filter): score tables
  from :func:`igds.pipeline.igds_scores`;
* ``random``, ``loss``, ``ifd``, ``zip``, ``longest``: :mod:`igds.baselines`;
* ``full``: the whole pool (one run per seed; its ratio is 1.0).

For every (method, ratio, seed) it selects ``round(ratio * n)`` pool examples, fine-tunes
(:mod:`igds.finetune`, seed = the run's seed; the random baseline also draws its subset
with that seed), evaluates the task metric and the teacher-forced reference loss
(:mod:`igds.evaluate`), and measures how much the validated IGDS features rose on the
task's evaluation prompts (*feature amplification*, below).

Run directory (``out``)::

    config.yaml, features.json, scores.parquet, ...   IGDS (igds.pipeline), as in docs/design.md
    data/pool.jsonl, data/task_data.jsonl, ...         sections read through the task (``task_format``)
    ablations/<method>/                                 IGDS ablation runs (same layout)
    baselines/<method>.parquet (+ .json cache key)      baseline score tables
    baselines/random-seeds/seed-<s>.parquet             random tables of the other seeds
    experiment/
      config.yaml                                       resolved experiment config
      base/result.json, base/feature_acts.npy           the model before fine-tuning
      runs/<method>-r<ratio>-s<seed>/
          selection.json                                chosen pool indices and ids
          finetune/adapter/, finetune/finetune.json     (igds.finetune)
          result.json                                   written last, atomically
      results.csv, results.json, results.md

Data in the task's format: the sections named in ``task_format`` (default: ``pool``,
``task_data``, ``validation``) are read through the task definition - its prompt template
and reference rendering, the very prompts the evaluation uses - and written once to
``RUN_DIR/data/<section>.jsonl`` (``messages`` dialect, original ids), which IGDS scoring
and fine-tuning then both read. Leave a section out of ``task_format`` for a pool in
another format (e.g. a general instruction pool); it is then read with its own
``DataConfig``. Task examples that also occur in the pool (same id) are dropped from
``task_data`` before its ``limit`` applies (``task_data_excludes_pool``), so feature
discovery never sees the examples it will score.

A run whose ``result.json`` exists with the same cache key is skipped, so an
interrupted experiment is finished by running the same command again. The key covers
everything the run's numbers depend on (model, task, data files' content, method
settings, fine-tuning and evaluation settings), not cosmetic options.

Feature amplification (ours; the paper reports that amplification correlates with task
gains but not how it measures it): for each validated feature j, ``m_j`` is its mean
activation over the evaluation prompts (per-prompt mean over prompt tokens,
``amplification.positions``). For a fine-tuned model,
``feature_log_ratio = mean_j log((m_j^ft + eps) / (m_j^base + eps))`` and
``feature_amplification = exp(feature_log_ratio) - 1``: the geometric-mean relative rise
(0.31 = the features fire 31% more). All runs use the features of the main ``igds``
run, so the numbers are comparable across methods. The correlation of amplification with
the task gain (headline metric minus the base model's) across all fine-tuned runs is
reported as Pearson and Spearman coefficients with their p-values and n.
"""

from __future__ import annotations

import csv
import gc
import io
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from .artifacts import atomic_write_json, atomic_write_text, read_json, stable_hash
from .config import (DataConfig, FilterConfig, ModelConfig, RecallConfig, RunConfig, SAEConfig, ScoreConfig,
                     dump_config, load_config)
from .data import Example, write_messages
from .evaluate import evaluate_task
from .finetune import FinetuneConfig, train_model
from .model import LoadedModel, load_model
from .selection import read_score_table, select_indices, write_score_table
from .tasks import Task, get_task

IGDS_METHODS = ("igds", "igds_recall_only", "igds_random_candidates")
BASELINE_METHODS = ("random", "loss", "ifd", "zip", "longest")
METHODS = IGDS_METHODS + BASELINE_METHODS + ("full",)
DATA_SECTIONS = ("pool", "task_data", "validation")


# ====================================================================== config
@dataclass
class EvalConfig:
    """Evaluation data and generation settings (defaults ours)."""

    paths: list[str] = field(default_factory=list)  # eval files in the task's format; the first is the headline
    limit: int | None = 200  # first N examples of each file
    max_new_tokens: int | None = None  # None: the task's own cap (math 256, summarization 128, ...)
    batch_size: int = 16
    save_predictions: bool = True  # per-example predictions and losses next to each run's result
    options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for evaluate_task


@dataclass
class AmplificationConfig:
    enabled: bool = True
    n_prompts: int = 64  # evaluation prompts (of the headline eval file) the activations are measured on
    positions: str = "prompt"  # prompt | all (with the reference answer, teacher-forced) | response
    eps: float = 1e-6


@dataclass
class ExperimentConfig:
    """Everything ``igds experiment`` needs. Sections ``sae``, ``reference``, ``validation``,
    ``recall``, ``filter`` and ``score`` are IGDS's own (see :mod:`igds.config`)."""

    name: str = "experiment"
    out: str = "runs/experiment"
    model: ModelConfig = field(default_factory=ModelConfig)
    task: Any = "math"  # a built-in task name (igds.tasks) or a mapping that defines one
    pool: DataConfig = field(default_factory=DataConfig)  # the training pool to select from
    task_data: DataConfig = field(default_factory=DataConfig)  # task examples for IGDS feature discovery
    eval: EvalConfig = field(default_factory=EvalConfig)
    methods: list[str] = field(default_factory=lambda: ["igds", "random"])
    ratios: list[float] = field(default_factory=lambda: [0.5])
    seeds: list[int] = field(default_factory=lambda: [0])
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method keyword options
    amplification: AmplificationConfig = field(default_factory=AmplificationConfig)
    # IGDS sections, passed to igds.pipeline
    sae: SAEConfig = field(default_factory=SAEConfig)
    reference: DataConfig = field(default_factory=lambda: DataConfig(path="builtin:generic"))
    validation: DataConfig = field(default_factory=DataConfig)
    recall: RecallConfig = field(default_factory=RecallConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    igds_seed: int = 0  # seed of feature discovery (fixed across fine-tuning seeds)
    task_format: list[str] = field(default_factory=lambda: ["pool", "task_data", "validation"])
    task_data_excludes_pool: bool = True
    use_chat_template: bool = True
    skip_bad: bool = False
    report: bool = True


def load_experiment_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
                           ) -> ExperimentConfig:
    """Defaults <- YAML file <- ``key=value`` overrides (``finetune.epochs=1``, ``methods=[igds,random]``)."""
    try:
        cfg = load_config(path, overrides, cls=ExperimentConfig)
    except (KeyError, TypeError) as e:  # unknown keys in overrides
        raise ValueError(f"{path or 'overrides'}: {e.args[0]}") from None
    if isinstance(cfg.finetune, dict):  # pragma: no cover - load_config keeps sections as dataclasses
        cfg.finetune = FinetuneConfig.from_dict(cfg.finetune)
    check_config(cfg, str(path) if path else "config")
    return cfg


def check_config(cfg: ExperimentConfig, where: str = "config") -> None:
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad:
        raise ValueError(f"{where}: field 'methods': unknown method(s) {bad}; known: {list(METHODS)}")
    if not cfg.methods:
        raise ValueError(f"{where}: field 'methods': give at least one method")
    for r in cfg.ratios:
        if not isinstance(r, (int, float)) or not 0 < r <= 1:
            raise ValueError(f"{where}: field 'ratios': {r!r} is not in (0, 1]")
    if not cfg.seeds:
        raise ValueError(f"{where}: field 'seeds': give at least one seed")
    if not cfg.pool.path:
        raise ValueError(f"{where}: field 'pool.path': the training pool is required")
    if not cfg.eval.paths:
        raise ValueError(f"{where}: field 'eval.paths': at least one evaluation file is required")
    if any(m in IGDS_METHODS for m in cfg.methods) and not cfg.task_data.path:
        raise ValueError(f"{where}: field 'task_data.path': IGDS needs task examples to discover features")
    bad = [x for x in cfg.task_format if x not in DATA_SECTIONS]
    if bad:
        raise ValueError(f"{where}: field 'task_format': {bad} are not data sections; use {list(DATA_SECTIONS)}")
    if cfg.amplification.positions not in ("prompt", "all", "response"):
        raise ValueError(f"{where}: field 'amplification.positions': expected prompt, all or response")
    cfg.finetune.__post_init__()  # re-validate after YAML/overrides were applied


def run_config(cfg: ExperimentConfig, method: str = "igds", data: dict[str, DataConfig] | None = None
               ) -> RunConfig:
    """The :class:`RunConfig` that IGDS (or one of its ablations) runs with; ``data`` holds
    the resolved (possibly task-formatted) pool / task_data / validation sections."""
    data = data or {}
    filt = FilterConfig(**asdict(cfg.filter))
    if method == "igds_recall_only":
        filt.enabled = False
    elif method == "igds_random_candidates":
        filt.random_candidates = True
    return RunConfig(model=cfg.model, sae=cfg.sae, task=data.get("task_data", cfg.task_data),
                     validation=data.get("validation", cfg.validation), reference=cfg.reference,
                     pool=data.get("pool", cfg.pool), recall=cfg.recall, filter=filt, score=cfg.score,
                     use_chat_template=cfg.use_chat_template, seed=cfg.igds_seed, skip_bad=cfg.skip_bad,
                     report=False, out=str(method_dir(Path(cfg.out), method)))


def method_dir(run_dir: Path, method: str) -> Path:
    return run_dir if method == "igds" else run_dir / "ablations" / method


# ====================================================================== task / evaluation seams
def resolve_task(spec: Any) -> Task:
    return get_task(spec)


def task_examples(task: Task, path: str, limit: int | None) -> list[Example]:
    """Evaluation examples of ``path`` in the task's own format."""
    return task.load(path, limit=limit)


def headline_metric(task: Task) -> str:
    return str(task.metric)


def evaluate_model(lm: LoadedModel, task: Task, examples: Sequence[Example], cfg: EvalConfig,
                   use_chat_template: bool = True) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(metrics, per-example records) of ``lm`` on ``examples`` (:func:`igds.evaluate.evaluate_task`)."""
    out = evaluate_task(lm, task, examples, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                        use_chat_template=use_chat_template, **cfg.options)
    return _numbers(out["metrics"]), out.get("records", [])


def materialize(task: Task, dc: DataConfig, out: Path, skip_bad: bool = False,
                exclude_ids: set[str] | frozenset[str] = frozenset()) -> DataConfig:
    """Write ``dc``'s examples, rendered by ``task``, to ``out`` (``messages`` dialect, original
    ids; rewritten only when the content changes) and return a DataConfig that reads it."""
    from .inputs import resolve_source

    exs: list[Example] = []
    for e in task.examples(resolve_source(dc, "data"), split=dc.split, skip_bad=skip_bad):
        if e.id in exclude_ids:
            continue
        exs.append(e)
        if dc.limit is not None and len(exs) >= dc.limit:
            break
    if not exs:
        raise ValueError(f"{dc.path}: no usable examples for task {task.name!r}")
    write_messages(out, exs)
    return DataConfig(path=str(out), dialect="messages")


def _numbers(d: dict[str, Any]) -> dict[str, float]:
    """Keep finite numeric entries (results.json holds numbers only)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and math.isfinite(v):
            out[str(k)] = float(v)
    return out


def baseline_table(method: str, lm: LoadedModel, pool: Sequence[Example], seed: int, options: dict[str, Any],
                   cfg: ExperimentConfig) -> pa.Table:
    from . import selectors as baselines

    common = {"max_length": cfg.finetune.max_length, "use_chat_template": cfg.use_chat_template}
    if method == "random":
        return baselines.random_scores(pool, seed=seed, **options)
    if method == "loss":
        return baselines.loss_scores(lm, pool, **{**common, **options})
    if method == "ifd":
        return baselines.ifd_scores(lm, pool, **{**common, **options})
    if method == "zip":
        # The greedy stops at the largest budget; its pick order serves every smaller ratio.
        if "ratio" not in options and "budget" not in options:
            options = {**options, "ratio": max(cfg.ratios)}
        return baselines.zip_scores(pool, **options)
    if method == "longest":
        return baselines.longest_scores(pool, tokenizer=lm.tokenizer, **options)
    raise ValueError(f"not a baseline: {method!r}")


# ====================================================================== the runner
@dataclass
class Experiment:
    """State shared by the runs of one experiment (loaded lazily, cached on disk)."""

    cfg: ExperimentConfig
    lm: LoadedModel | None = None
    task: Task | None = None
    run_dir: Path = field(init=False)
    _pool: list[Example] | None = None
    _data: dict[str, DataConfig] | None = None
    _evals: dict[str, list[Example]] | None = None
    _tables: dict[tuple[str, int], pa.Table] = field(default_factory=dict)
    _features: Any = None
    _saes: Any = None
    trainer: Callable[..., Any] | None = None  # default: igds.finetune.train_model

    def __post_init__(self) -> None:
        self.run_dir = Path(self.cfg.out)

    @property
    def exp_dir(self) -> Path:
        return self.run_dir / "experiment"

    # ---- lazily loaded inputs
    def model(self) -> LoadedModel:
        if self.lm is None:
            m = self.cfg.model
            self.lm = load_model(m.name, m.device, m.dtype, m.trust_remote_code)
        return self.lm

    def the_task(self) -> Task:
        if self.task is None:
            self.task = resolve_task(self.cfg.task)
        return self.task

    def data(self) -> dict[str, DataConfig]:
        """The pool / task_data / validation sections as IGDS and fine-tuning read them."""
        if self._data is None:
            c, task_fmt = self.cfg, set(self.cfg.task_format)
            out: dict[str, DataConfig] = {}
            for name in DATA_SECTIONS:
                dc: DataConfig = getattr(c, name)
                if not dc.path or name not in task_fmt:
                    out[name] = dc
                    continue
                exclude: set[str] = set()
                if name == "task_data" and c.task_data_excludes_pool:
                    exclude = {e.id for e in self.pool_from(out["pool"])}
                out[name] = materialize(self.the_task(), dc, self.run_dir / "data" / f"{name}.jsonl", c.skip_bad,
                                        exclude)
            self._data = out
        return self._data

    def pool_from(self, dc: DataConfig) -> list[Example]:
        if self._pool is None:
            from .inputs import read_examples

            self._pool = read_examples(dc, "pool", self.cfg.skip_bad)
        return self._pool

    def pool(self) -> list[Example]:
        return self.pool_from(self.data()["pool"])

    def evals(self) -> dict[str, list[Example]]:
        if self._evals is None:
            self._evals = {}
            for p in self.cfg.eval.paths:
                name = eval_name(p, list(self._evals))
                self._evals[name] = task_examples(self.the_task(), p, self.cfg.eval.limit)
        return self._evals

    # ---- cache keys
    def data_key(self) -> dict[str, Any]:
        from .inputs import resolve_source
        from .scoring import source_fingerprint

        c, pool = self.cfg, self.data()["pool"]
        return {"model": c.model.name, "task": c.task,
                "pool": {**asdict(pool), "sha": source_fingerprint(resolve_source(pool, "pool"))},
                "chat": c.use_chat_template, "skip_bad": c.skip_bad}

    def eval_key(self) -> dict[str, Any]:
        from .scoring import source_fingerprint

        e = self.cfg.eval
        return {"model": self.cfg.model.name, "task": self.cfg.task, "eval": asdict(e),
                "files": [source_fingerprint(p) for p in e.paths]}

    def method_key(self, method: str, seed: int) -> dict[str, Any]:
        c = self.cfg
        if method in IGDS_METHODS:
            rc = run_config(c, method, self.data())
            from .scoring import source_fingerprint

            return {"sae": asdict(rc.sae), "task_data": asdict(rc.task), "validation": asdict(rc.validation),
                    "reference": asdict(rc.reference), "recall": asdict(rc.recall), "filter": asdict(rc.filter),
                    "score": {k: v for k, v in asdict(rc.score).items() if k in
                              ("aggregation", "normalize", "combine", "positions", "max_length")},
                    "task_sha": source_fingerprint(rc.task.path) if rc.task.path else None,
                    "validation_sha": source_fingerprint(rc.validation.path) if rc.validation.path else None,
                    "seed": rc.seed}
        if method == "full":
            return {}
        opts = c.baselines.get(method, {})
        key = {"options": opts, "max_length": c.finetune.max_length}
        return {**key, "seed": seed} if method == "random" else key

    def run_key(self, method: str, ratio: float, seed: int) -> str:
        ft = {k: v for k, v in asdict(self.cfg.finetune).items() if k not in ("progress", "logging_steps", "save")}
        return stable_hash({"method": method, "ratio": ratio, "seed": seed, "data": self.data_key(),
                            "method_key": self.method_key(method, seed), "finetune": ft,
                            "eval": self.eval_key(), "amplification": asdict(self.cfg.amplification)})

    # ---- score tables
    def table(self, method: str, seed: int) -> pa.Table:
        """The score table of ``method`` (cached on disk and in memory)."""
        mem = (method, seed if method == "random" else 0)
        if mem in self._tables:
            return self._tables[mem]
        if method in IGDS_METHODS:
            from .pipeline import igds_scores

            rc = run_config(self.cfg, method, self.data())
            rc.select.ratio = max(self.cfg.ratios)  # what the report shows as "the" selection
            mdir = method_dir(self.run_dir, method)
            mdir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(mdir / "config.yaml", dump_config(rc))
            table, fs = igds_scores(self.model(), rc, mdir)
            if method == "igds":
                self._features = fs
        else:
            path = self.baseline_path(method, seed)
            side = path.with_suffix(".json")
            key = stable_hash({"data": self.data_key(), "method": method, **self.method_key(method, seed)})
            if path.exists() and side.exists() and read_json(side).get("key") == key:
                table = read_score_table(path)
            else:
                print(f"experiment: scoring the pool with baseline {method!r}" +
                      (f" (seed {seed})" if method == "random" else ""))
                table = baseline_table(method, self.model(), self.pool(), seed,
                                       self.cfg.baselines.get(method, {}), self.cfg)
                write_score_table(path, table)
                atomic_write_json(side, {"key": key, "method": method, "seed": seed if method == "random" else None})
        ids = table.column("id").to_pylist()
        if ids != [e.id for e in self.pool()]:
            raise RuntimeError(f"the {method} score table does not list the pool's examples in pool order "
                               f"({len(ids)} rows vs {len(self.pool())} pool examples)")
        self._tables[mem] = table
        return table

    def baseline_path(self, method: str, seed: int) -> Path:
        bdir = self.run_dir / "baselines"
        if method == "random" and seed != self.cfg.seeds[0]:
            return bdir / "random-seeds" / f"seed-{seed}.parquet"
        return bdir / f"{method}.parquet"

    # ---- IGDS features for the amplification analysis
    def features(self) -> Any:
        """The main IGDS run's validated features (None when there is no IGDS run)."""
        if self._features is None:
            path = self.run_dir / "features.json"
            if "igds" in self.cfg.methods:
                self.table("igds", 0)
            elif path.exists():
                from .features import FeatureSet

                self._features = FeatureSet.load(path)
        return self._features

    def saes(self) -> Any:
        if self._saes is None:
            from .inputs import load_saes

            self._saes = load_saes(run_config(self.cfg, "igds", self.data()), self.model())
        return self._saes

    def amplification_examples(self) -> list[Example]:
        first = next(iter(self.evals().values()))
        return first[: self.cfg.amplification.n_prompts]

    def feature_acts(self, lm: LoadedModel) -> np.ndarray | None:
        """(F,) mean activation of each validated feature over the evaluation prompts."""
        fs = self.features() if self.cfg.amplification.enabled else None
        if fs is None or not fs.validated:
            return None
        from .scoring import feature_activations

        score_cfg = ScoreConfig(**{**asdict(self.cfg.score), "positions": self.cfg.amplification.positions,
                                   "aggregation": "mean", "top_examples": 0})
        acts = feature_activations(lm, self.saes(), fs, self.amplification_examples(), score_cfg,
                                   use_chat_template=self.cfg.use_chat_template)
        return np.asarray(acts, dtype=np.float64).mean(axis=0)

    # ---- the base model
    def base_result(self) -> dict[str, Any]:
        path = self.exp_dir / "base" / "result.json"
        key = stable_hash({"eval": self.eval_key(), "amplification": asdict(self.cfg.amplification),
                           "features": self._feature_key()})
        if path.exists():
            cached = read_json(path)
            if cached.get("key") == key:
                return cached
        print("experiment: evaluating the base model")
        t0 = time.perf_counter()
        metrics = self.evaluate(self.model(), path.parent)
        acts = self.feature_acts(self.model())
        res = {"key": key, "model": self.cfg.model.name, "metrics_by_eval": metrics,
               "metrics": flatten_metrics(metrics), "feature_acts": acts.tolist() if acts is not None else None,
               "eval_seconds": round(time.perf_counter() - t0, 2)}
        atomic_write_json(path, res)
        return res

    def _feature_key(self) -> Any:
        if not self.cfg.amplification.enabled:
            return None
        fs = self.features()
        return [(c.key, c.scale) for c in fs.validated_features] if fs is not None else None

    def evaluate(self, lm: LoadedModel, out_dir: Path) -> dict[str, dict[str, float]]:
        """Metrics per eval file; per-example records to ``out_dir/predictions/<eval>.jsonl``."""
        from .artifacts import atomic_write_jsonl

        metrics = {}
        for name, exs in self.evals().items():
            metrics[name], records = evaluate_model(lm, self.the_task(), exs, self.cfg.eval,
                                                    self.cfg.use_chat_template)
            if self.cfg.eval.save_predictions and records:
                atomic_write_jsonl(out_dir / "predictions" / f"{name}.jsonl", records)
        return metrics

    # ---- one (method, ratio, seed)
    def run_one(self, method: str, ratio: float, seed: int, base: dict[str, Any]) -> dict[str, Any]:
        rid = run_id(method, ratio, seed)
        rdir = self.exp_dir / "runs" / rid
        path = rdir / "result.json"
        key = self.run_key(method, ratio, seed)
        if path.exists():
            cached = read_json(path)
            if cached.get("key") == key:
                return cached
            print(f"experiment: {rid}: settings changed since it ran; running it again")
        print(f"experiment: {rid}: selecting")
        pool = self.pool()
        chosen = list(range(len(pool))) if method == "full" else select_indices(self.table(method, seed), ratio=ratio)
        selected = [pool[i] for i in chosen]
        atomic_write_json(rdir / "selection.json", {"method": method, "ratio": ratio, "seed": seed,
                                                    "n": len(chosen), "indices": chosen,
                                                    "ids": [pool[i].id for i in chosen]})
        ft_cfg = FinetuneConfig(**{**asdict(self.cfg.finetune), "seed": seed})
        print(f"experiment: {rid}: fine-tuning on {len(selected)} examples")
        trained = (self.trainer or train_model)(self.model(), selected, ft_cfg, rdir / "finetune")
        print(f"experiment: {rid}: evaluating")
        t0 = time.perf_counter()
        metrics = self.evaluate(trained.lm, rdir)
        eval_s = time.perf_counter() - t0
        acts = self.feature_acts(trained.lm)
        del trained.lm
        gc.collect()
        flat = flatten_metrics(metrics)
        res = {"key": key, "run": rid, "method": method, "ratio": ratio, "seed": seed, "n_train": len(selected),
               "metrics_by_eval": metrics, "metrics": flat,
               **amplification(base.get("feature_acts"), acts, self.cfg.amplification.eps),
               "finetune": {k: trained.stats.get(k) for k in ("steps", "train_loss", "seconds", "tokens_per_s",
                                                               "n_truncated", "n_dropped", "n_response_tokens")},
               "eval_seconds": round(eval_s, 2),
               "adapter": str(trained.path) if trained.path else None}
        atomic_write_json(path, res)
        return res

    def plan(self) -> list[tuple[str, float, int]]:
        """Seeds outermost: an experiment stopped part-way has every method at the first seed."""
        out = []
        for seed in self.cfg.seeds:
            for method in self.cfg.methods:
                ratios = [1.0] if method == "full" else list(self.cfg.ratios)
                out.extend((method, float(ratio), int(seed)) for ratio in ratios)
        return out

    def run(self) -> dict[str, Any]:
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.exp_dir / "config.yaml", dump_config(self.cfg))
        t0 = time.perf_counter()
        plan = self.plan()
        # the base evaluation and IGDS features first: every run's amplification needs them
        base = self.base_result()
        runs = []
        for i, (method, ratio, seed) in enumerate(plan, start=1):
            print(f"experiment: run {i}/{len(plan)}: {run_id(method, ratio, seed)}")
            runs.append(self.run_one(method, ratio, seed, base))
        results = build_results(self.cfg, headline_metric(self.the_task()), base, runs)
        results["wall_s"] = round(time.perf_counter() - t0, 2)
        write_results(self.exp_dir, results)
        if self.cfg.report:
            try:
                from .report import write_report
            except ImportError:  # the report needs matplotlib (igds[report])
                write_report = None
            if write_report is not None:
                write_report(self.run_dir)
        return results


def run_id(method: str, ratio: float, seed: int) -> str:
    return f"{method}-r{ratio:g}-s{seed}"


def eval_name(path: str, taken: Sequence[str]) -> str:
    """A short file-name-safe name for an eval file: ``gsm8k/test.jsonl`` -> ``gsm8k-test``."""
    p = Path(path)
    name = p.stem if p.parent.name in ("", ".") else f"{p.parent.name}-{p.stem}"
    return name if name not in taken else f"{name}#{len(taken)}"


def flatten_metrics(by_eval: dict[str, dict[str, float]]) -> dict[str, float]:
    """Headline eval set's metrics under their own names; the others as ``<eval>/<metric>``."""
    out: dict[str, float] = {}
    for i, (name, metrics) in enumerate(by_eval.items()):
        for k, v in metrics.items():
            out[k if i == 0 else f"{name}/{k}"] = v
    return out


def amplification(base_acts: Sequence[float] | None, acts: np.ndarray | None, eps: float) -> dict[str, Any]:
    """Feature amplification of a fine-tuned model against the base (see the module docstring)."""
    if base_acts is None or acts is None:
        return {"feature_amplification": None, "feature_log_ratio": None, "feature_ratios": None}
    b = np.asarray(base_acts, dtype=np.float64)
    a = np.asarray(acts, dtype=np.float64)
    log_ratio = np.log((a + eps) / (b + eps))
    mean_log = float(log_ratio.mean())
    return {"feature_amplification": float(math.exp(mean_log) - 1.0), "feature_log_ratio": mean_log,
            "feature_ratios": [float(x) for x in np.exp(log_ratio)]}


# ====================================================================== results
def mean_std(values: Sequence[float]) -> tuple[float, float | None, int]:
    """Mean, sample standard deviation (ddof=1; None for one value) and n."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return math.nan, None, 0
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None), int(len(v))


def correlation(x: Sequence[float | None], y: Sequence[float | None]) -> dict[str, Any]:
    """Pearson and Spearman correlation (scipy) over the pairs where both are known."""
    pairs = [(a, b) for a, b in zip(x, y) if a is not None and b is not None and math.isfinite(a)
             and math.isfinite(b)]
    out: dict[str, Any] = {"pearson": None, "pearson_p": None, "spearman": None, "spearman_p": None,
                           "n": len(pairs)}
    if len(pairs) < 3:
        out["note"] = "fewer than 3 runs with both numbers"
        return out
    a, b = np.array(pairs).T
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        out["note"] = "one of the two is constant across runs"
        return out
    from scipy import stats

    p = stats.pearsonr(a, b)
    s = stats.spearmanr(a, b)
    out.update(pearson=float(p.statistic), pearson_p=float(p.pvalue), spearman=float(s.statistic),
               spearman_p=float(s.pvalue))
    return out


def build_results(cfg: ExperimentConfig, metric: str, base: dict[str, Any], runs: list[dict[str, Any]]
                  ) -> dict[str, Any]:
    """results.json: the report's schema (task, metric, base, runs, correlation) plus a summary."""
    base_metrics = base.get("metrics", {})
    rows = []
    for r in runs:
        row = {k: r.get(k) for k in ("run", "method", "ratio", "seed", "n_train", "metrics", "feature_amplification",
                                     "feature_log_ratio")}
        gain = None
        if metric in r.get("metrics", {}) and metric in base_metrics:
            gain = r["metrics"][metric] - base_metrics[metric]
        row["task_gain"] = gain
        row["finetune_seconds"] = (r.get("finetune") or {}).get("seconds")
        rows.append(row)
    summary = summarize(rows, metric)
    corr = correlation([r["feature_amplification"] for r in rows], [r["task_gain"] for r in rows])
    return {"name": cfg.name, "task": cfg.task if isinstance(cfg.task, str) else cfg.task.get("name", "custom"),
            "metric": metric, "model": cfg.model.name,
            "base": {"metrics": base_metrics, "metrics_by_eval": base.get("metrics_by_eval", {})},
            "runs": rows, "summary": summary, "correlation": corr,
            "amplification_definition": "exp(mean over validated features of log((ft + eps) / (base + eps))) - 1, "
                                        "feature activations averaged over evaluation prompts"}


def summarize(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """One cell per (method, ratio): mean, std and n of every metric, the gain and amplification."""
    cells: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["method"], float(r["ratio"])), []).append(r)
    out = []
    for (method, ratio), rs in cells.items():
        names = sorted({k for r in rs for k in r["metrics"]}, key=lambda k: (k != metric, k))
        cell: dict[str, Any] = {"method": method, "ratio": ratio, "n": len(rs), "seeds": [r["seed"] for r in rs],
                                "n_train": rs[0].get("n_train"), "metrics": {}}
        for k in names:
            m, s, n = mean_std([r["metrics"].get(k) for r in rs])
            cell["metrics"][k] = {"mean": m, "std": s, "n": n}
        for k in ("task_gain", "feature_amplification"):
            m, s, n = mean_std([r.get(k) for r in rs])
            cell[k] = {"mean": m if n else None, "std": s, "n": n}
        out.append(cell)
    return out


def fmt_cell(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def results_markdown(results: dict[str, Any]) -> str:
    metric = results["metric"]
    summary = results["summary"]
    base = results["base"]["metrics"]
    names = sorted({k for c in summary for k in c["metrics"]} | set(base), key=lambda k: (k != metric, k))
    head = ["method", "ratio", "n seeds", "n train", *names, f"gain ({metric})", "feature amplification"]
    lines = [f"# {results.get('name', 'experiment')}: {results['task']} on {results.get('model', '')}", "",
             f"Headline metric: `{metric}`. Cells: mean ± sample std (ddof=1) over seeds; "
             "no ± when there is one seed.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| base (no fine-tuning) | – | – | – | " +
                 " | ".join(fmt_cell(base.get(k), None) for k in names) + " | – | – |")
    for c in summary:
        vals = [fmt_cell(c["metrics"][k]["mean"], c["metrics"][k]["std"]) if k in c["metrics"] else "–"
                for k in names]
        g, a = c["task_gain"], c["feature_amplification"]
        lines.append(f"| {c['method']} | {c['ratio']:g} | {c['n']} | {c['n_train']} | " + " | ".join(vals) +
                     f" | {fmt_cell(g['mean'], g['std'])} | {fmt_cell(a['mean'], a['std'])} |")
    corr = results["correlation"]
    lines += ["", "## Feature amplification vs task gain", "",
              f"Amplification: {results['amplification_definition']}.", ""]
    if corr.get("pearson") is None:
        lines.append(f"Correlation not computed (n = {corr['n']}: {corr.get('note', '')}).")
    else:
        lines.append(f"Pearson r = {corr['pearson']:.3f} (p = {corr['pearson_p']:.3g}), "
                     f"Spearman ρ = {corr['spearman']:.3f} (p = {corr['spearman_p']:.3g}), n = {corr['n']} runs.")
    lines += ["", "## Runs", "", "| run | n train | " + " | ".join(names) + " | gain | amplification |",
              "|" + "---|" * (len(names) + 4)]
    for r in results["runs"]:
        lines.append(f"| {r['run']} | {r['n_train']} | " +
                     " | ".join(fmt_cell(r["metrics"].get(k), None) for k in names) +
                     f" | {fmt_cell(r['task_gain'], None)} | {fmt_cell(r['feature_amplification'], None)} |")
    return "\n".join(lines) + "\n"


def results_csv(results: dict[str, Any]) -> str:
    names = sorted({k for r in results["runs"] for k in r["metrics"]})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "method", "ratio", "seed", "n_train", *names, "task_gain", "feature_amplification",
                "feature_log_ratio", "finetune_seconds"])
    for r in results["runs"]:
        w.writerow([r["run"], r["method"], r["ratio"], r["seed"], r["n_train"],
                    *[r["metrics"].get(k, "") for k in names],
                    *["" if r.get(k) is None else r[k] for k in ("task_gain", "feature_amplification",
                                                                  "feature_log_ratio", "finetune_seconds")]])
    return buf.getvalue()


def write_results(exp_dir: Path, results: dict[str, Any]) -> None:
    atomic_write_json(exp_dir / "results.json", results)
    atomic_write_text(exp_dir / "results.csv", results_csv(results))
    atomic_write_text(exp_dir / "results.md", results_markdown(results))


def run_experiment(cfg: ExperimentConfig, lm: LoadedModel | None = None, task: Task | None = None) -> dict[str, Any]:
    """Run (or finish) an experiment; returns the results.json content."""
    check_config(cfg)
    return Experiment(cfg, lm=lm, task=task).run()


def run_from_config(config: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Load ``config`` with ``key=value`` overrides, run the experiment, print the table."""
    cfg = load_experiment_config(config, overrides)
    results = run_experiment(cfg)
    print(results_markdown(results))
    print(f"results: {Path(cfg.out) / 'experiment'}")
    return results


def main(argv: list[str] | None = None) -> int:
    """``igds experiment --config exp.yaml [key=value ...]``."""
    import argparse
    import sys

    from .data import DataError

    parser = argparse.ArgumentParser(prog="igds experiment", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="experiment YAML (see examples/experiment_gsm8k_small.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. seeds=[0,1,2] finetune.epochs=1")
    args, extras = parser.parse_known_args(argv)  # overrides may also follow --config
    stray = [x for x in extras if "=" not in x or x.startswith("-")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    try:
        run_from_config(args.config, [*args.overrides, *extras])
    except (ValueError, FileNotFoundError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
