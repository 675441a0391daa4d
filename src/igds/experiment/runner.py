"""The experiment runner: one :class:`Experiment` per config, each (method, ratio, seed)
selected, fine-tuned and evaluated, with every step cached on disk (see :mod:`igds.experiment`)."""

from __future__ import annotations

import gc
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ..artifacts import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_json, stable_hash
from ..config import (DATA_SECTIONS, IGDS_DERIVED, IGDS_METHODS, ConfigError, DataConfig, EvalConfig, ExperimentConfig,
                      RunConfig, cache_view, check, dump_config, key_view, load_config)
from ..data import Example, write_messages
from ..evaluate import evaluate_task
from ..feature_set import FeatureSet
from ..finetune import train_model
from ..inputs import load_saes, read_examples, resolve_source, sae_content
from ..model import LoadedModel, load_model
from ..pipeline import igds_scores
from ..report import write_report
from ..scoring import feature_activations, source_fingerprint
from ..sae import SAE
from ..selection import read_score_table, select_indices, write_score_table
from ..selectors import SELECTORS, SelectionContext, get_selector, run_selector
from ..selectors.frs import IGDSSelector, derive_table
from ..tasks import Task, get_task
from .results import (amplification, build_results, eval_name, flatten_metrics, headline_metric, results_markdown,
                      run_id, write_results)


def load_experiment_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
                           ) -> ExperimentConfig:
    """Defaults <- YAML file <- ``key=value`` overrides (``finetune.epochs=1``, ``methods=[igds,random]``),
    every value checked (:class:`igds.config.ConfigError`)."""
    cfg = load_config(path, overrides, cls=ExperimentConfig)
    check_methods(cfg, str(path) if path else "config")
    return cfg


def experiment_methods() -> list[str]:
    """What ``methods`` may name: ``full`` and every registered selector (:mod:`igds.selectors`)."""
    return ["full", *sorted(SELECTORS)]


def check_methods(cfg: ExperimentConfig, where: str = "config") -> None:
    """Unknown method names fail before any work, listing the known ones."""
    known = experiment_methods()
    bad = [m for m in cfg.methods if m not in known]
    if bad:
        raise ConfigError(f"{where}: methods: unknown method(s) {bad}; known: {known}")
    targeting = [m for m in cfg.methods if m != "full" and "task" in get_selector(m).needs]
    if targeting and not cfg.igds.task_data.path:
        raise ConfigError(f"{where}: igds.task_data.path: {targeting} score the pool against the task examples; "
                          "give them")
    select = cfg.igds.select
    if select.mode != "top":  # every arm's table already holds its order; a mode would apply to one of them
        raise ConfigError(f"{where}: igds.select.mode: experiments select the top of each arm's table; compare "
                          "the modes with the methods igds_quota and igds_coverage")
    if "igds_coverage" in cfg.methods and max(cfg.ratios) > select.gate:
        raise ConfigError(f"{where}: igds.select.gate: igds_coverage keeps only the top {select.gate} of the pool, "
                          f"less than the ratio {max(cfg.ratios)}")


def run_config(cfg: ExperimentConfig, method: str = "igds", data: dict[str, DataConfig] | None = None
               ) -> RunConfig:
    """The :class:`RunConfig` that IGDS (or one of its ablations) runs with; ``data`` holds
    the resolved (possibly task-formatted) pool / task_data / validation sections."""
    data, ig = data or {}, cfg.igds
    # the arm's own settings live on its selector (igds.selectors.frs): one definition for both paths
    arm = get_selector(method)
    if isinstance(arm, IGDSSelector):
        ig = arm.configure(ig)
    return replace(ig, task_data=data.get("task_data", ig.task_data), validation=data.get("validation", ig.validation),
                   pool=data.get("pool", ig.pool), select=replace(ig.select, ratio=max(cfg.ratios)),
                   report=False, out=str(method_dir(Path(ig.out), method)))


def placeless(section: DataConfig) -> dict[str, Any]:
    """A data section in a cache key: its settings without the path (the key holds its content's hash), so
    that finished runs stay valid in another checkout or run folder and the same rows elsewhere match."""
    return {**asdict(section), "path": None}


def method_dir(run_dir: Path, method: str) -> Path:
    """Where an IGDS arm's stages run: igds's own folder for igds and the arms derived from its table."""
    return run_dir if method == "igds" or method in IGDS_DERIVED else run_dir / "ablations" / method


# ====================================================================== task / evaluation seams
def task_examples(task: Task, path: str, limit: int | None) -> list[Example]:
    """Evaluation examples of ``path`` in the task's own format."""
    return task.load(path, limit=limit)


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
    return {str(k): float(v) for k, v in d.items()
            if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and math.isfinite(v)}


def baseline_table(method: str, lm: LoadedModel, pool: Sequence[Example], seed: int, options: dict[str, Any],
                   cfg: ExperimentConfig, task: Sequence[Example] = (), sae: SAE | None = None,
                   shared: dict[Any, Any] | None = None) -> pa.Table:
    """The score table of the registered selector ``method`` over ``pool``, as the experiment runs it.

    Loss and IFD truncate at ``finetune.max_length`` (the length every arm is trained at);
    ZIP's greedy stops at the largest ratio, whose pick order serves every smaller one;
    ``task`` and ``sae`` serve the targeting selectors (dsir, bm25, embed, mona), and
    ``shared`` lets embed and mona share one forward pass."""
    if method == "zip" and "ratio" not in options and "budget" not in options:
        options = {**options, "ratio": max(cfg.ratios)}
    ctx = SelectionContext(model=lm, task=task, sae=sae, seed=seed, max_length=cfg.finetune.max_length,
                           use_chat_template=cfg.igds.use_chat_template, options=options, progress=True,
                           shared={} if shared is None else shared)
    return run_selector(method, pool, ctx)


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
    _loss_evals: dict[str, list[Example]] | None = None
    _tables: dict[tuple[str, int], pa.Table] = field(default_factory=dict)
    _shared: dict[Any, Any] = field(default_factory=dict)  # work selectors share (embed and mona: one pass)
    _features: Any = None
    _saes: Any = None
    _sae_key: Any = None

    def __post_init__(self) -> None:
        self.run_dir = Path(self.cfg.igds.out)

    @property
    def exp_dir(self) -> Path:
        return self.run_dir / "experiment"

    # ---- lazily loaded inputs
    def model(self) -> LoadedModel:
        if self.lm is None:
            m = self.cfg.igds.model
            self.lm = load_model(m.name, m.device, m.dtype, m.trust_remote_code)
        return self.lm

    def the_task(self) -> Task:
        if self.task is None:
            self.task = get_task(self.cfg.task)
        return self.task

    def data(self) -> dict[str, DataConfig]:
        """The pool / task_data / validation sections as IGDS and fine-tuning read them."""
        if self._data is None:
            c, task_fmt = self.cfg, set(self.cfg.task_format)
            out: dict[str, DataConfig] = {}
            for name in DATA_SECTIONS:
                dc: DataConfig = getattr(c.igds, name)
                if not dc.path or name not in task_fmt:
                    out[name] = dc
                    continue
                exclude: set[str] = set()
                if name == "task_data" and c.task_data_excludes_pool:
                    exclude = {e.id for e in self.pool_from(out["pool"])}
                out[name] = materialize(self.the_task(), dc, self.run_dir / "data" / f"{name}.jsonl", c.igds.skip_bad,
                                        exclude)
            self._data = out
        return self._data

    def pool_from(self, dc: DataConfig) -> list[Example]:
        if self._pool is None:
            self._pool = read_examples(dc, "pool", self.cfg.igds.skip_bad)
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

    def loss_evals(self) -> dict[str, list[Example]]:
        """The reference-loss-only files (``eval.loss_paths``), named apart from the generation evals."""
        if self._loss_evals is None:
            self._loss_evals = {}
            for p in self.cfg.eval.loss_paths:
                name = eval_name(p, [*self.evals(), *self._loss_evals])
                self._loss_evals[name] = task_examples(self.the_task(), p, self.cfg.eval.loss_limit)
        return self._loss_evals

    # ---- cache keys
    def data_key(self) -> dict[str, Any]:
        c, pool = self.cfg, self.data()["pool"]
        return {"model": c.igds.model.name, "task": c.task,
                "pool": {**placeless(pool), "sha": source_fingerprint(resolve_source(pool, "pool"))},
                "chat": c.igds.use_chat_template, "skip_bad": c.igds.skip_bad}

    def eval_key(self) -> dict[str, Any]:
        e = self.cfg.eval
        return {"model": self.cfg.igds.model.name, "task": self.cfg.task, "eval": asdict(e),
                "files": [source_fingerprint(p) for p in [*e.paths, *e.loss_paths]]}

    def sae_key(self) -> dict[str, Any]:
        """The SAEs by content, not by path: a finished run stays valid when its SAE moves, and is
        redone when the SAE at its path is replaced (``default`` after an upgrade, a retrained file)."""
        if self._sae_key is None:
            self._sae_key = sae_content(run_config(self.cfg, "igds", self.data()))
        return self._sae_key

    def method_key(self, method: str, seed: int) -> dict[str, Any]:
        c = self.cfg
        if method in IGDS_METHODS:
            rc = run_config(c, method, self.data())
            # data sections without their paths (their content hashes are in the key), SAEs by content
            return {"sae": self.sae_key(), "task_data": placeless(rc.task_data), "validation": placeless(rc.validation),
                    "reference": asdict(rc.reference), "recall": key_view(rc.recall), "filter": key_view(rc.filter),
                    "score": cache_view(rc.score),
                    "task_sha": source_fingerprint(rc.task_data.path) if rc.task_data.path else None,
                    "validation_sha": source_fingerprint(rc.validation.path) if rc.validation.path else None,
                    "seed": rc.seed, **({"gate": rc.select.gate} if method == "igds_coverage" else {})}
        if method == "full":
            return {}
        opts = c.baselines.get(method, {})
        key: dict[str, Any] = {"options": opts, "max_length": c.finetune.max_length}
        needs = get_selector(method).needs
        if "task" in needs:
            task_data = self.data()["task_data"]
            key["task"] = {**placeless(task_data), "sha": source_fingerprint(resolve_source(task_data, "task_data"))}
        if "sae" in needs:
            key["sae"] = self.sae_key()
        return {**key, "seed": seed} if method == "random" else key

    def run_key(self, method: str, ratio: float, seed: int) -> str:
        ft = cache_view(self.cfg.finetune)
        return stable_hash({"method": method, "ratio": ratio, "seed": seed, "data": self.data_key(),
                            "method_key": self.method_key(method, seed), "finetune": ft,
                            "eval": self.eval_key(), "amplification": asdict(self.cfg.amplification)})

    # ---- score tables
    def table(self, method: str, seed: int) -> pa.Table:
        """The score table of ``method`` (cached on disk and in memory)."""
        mem = (method, seed if method == "random" else 0)
        if mem in self._tables:
            return self._tables[mem]
        if method in IGDS_DERIVED:  # igds's own table, re-read: no second Stage 1
            select = run_config(self.cfg, method, self.data()).select
            table = derive_table(method, self.table("igds", 0), select, self.features())
        elif method in IGDS_METHODS:
            rc = run_config(self.cfg, method, self.data())
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
                table = self.selector_table(method, seed)
                write_score_table(path, table)
                atomic_write_json(side, {"key": key, "method": method, "seed": seed if method == "random" else None})
        ids = table.column("id").to_pylist()
        if ids != [e.id for e in self.pool()]:
            raise RuntimeError(f"the {method} score table does not list the pool's examples in pool order "
                               f"({len(ids)} rows vs {len(self.pool())} pool examples)")
        self._tables[mem] = table
        return table

    def selector_table(self, method: str, seed: int) -> pa.Table:
        """A registered selector's table, with the task examples and SAE it needs."""
        needs = get_selector(method).needs
        task = read_examples(self.data()["task_data"], "task_data", self.cfg.igds.skip_bad) if "task" in needs else ()
        # the SAE-based selectors read the first SAE (the lowest layer) of the IGDS run
        sae = next(iter(sorted(self.saes().items())))[1] if "sae" in needs else None
        return baseline_table(method, self.model(), self.pool(), seed, self.cfg.baselines.get(method, {}), self.cfg,
                              task, sae, self._shared)

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
            if any(m == "igds" or m in IGDS_DERIVED for m in self.cfg.methods):
                self.table("igds", 0)
            elif path.exists():
                self._features = FeatureSet.load(path)
        return self._features

    def saes(self) -> Any:
        if self._saes is None:
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
        score_cfg = replace(self.cfg.igds.score, positions=self.cfg.amplification.positions, aggregation="mean",
                            top_examples=0)
        acts = feature_activations(lm, self.saes(), fs, self.amplification_examples(), score_cfg,
                                   use_chat_template=self.cfg.igds.use_chat_template)
        return np.asarray(acts, dtype=np.float64).mean(axis=0)

    # ---- the base model
    def base_result(self) -> dict[str, Any]:
        path = self.exp_dir / "base" / "result.json"
        key = stable_hash({"eval": self.eval_key(), "amplification": asdict(self.cfg.amplification),
                           "features": self._feature_key(), "sae": self.sae_key()})
        if path.exists():
            cached = read_json(path)
            if cached.get("key") == key:
                return cached
        print("experiment: evaluating the base model")
        t0 = time.perf_counter()
        metrics = self.evaluate(self.model(), path.parent)
        acts = self.feature_acts(self.model())
        res = {"key": key, "model": self.cfg.igds.model.name, "metrics_by_eval": metrics,
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
        metrics = {}
        for name, exs in self.evals().items():
            metrics[name], records = evaluate_model(lm, self.the_task(), exs, self.cfg.eval,
                                                    self.cfg.igds.use_chat_template)
            if self.cfg.eval.save_predictions and records:
                atomic_write_jsonl(out_dir / "predictions" / f"{name}.jsonl", records)
        for name, exs in self.loss_evals().items():
            out = evaluate_task(lm, self.the_task(), exs, generate=False, batch_size=self.cfg.eval.batch_size,
                                use_chat_template=self.cfg.igds.use_chat_template, progress=False)
            metrics[name] = {"ref_loss": out["metrics"]["ref_loss"]}
            if self.cfg.eval.save_predictions:
                atomic_write_jsonl(out_dir / "predictions" / f"{name}.jsonl",
                                   [{"id": r["id"], "ref_loss": r["ref_loss"]} for r in out["records"]])
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
        ft_cfg = replace(self.cfg.finetune, seed=seed)
        if ft_cfg.equal_steps:  # Full's step count for every arm: selections compared at equal compute
            ft_cfg = replace(ft_cfg, equal_steps=False, max_steps=ft_cfg.steps_for(len(pool)))
        # same rows in the same order, same seed and recipe: the same model (e.g. igds when no feature passes
        # the filter and on_empty=recall_only is igds_recall_only); its twin's metrics stand for it
        train_key = stable_hash({"ids": [e.id for e in selected], "finetune": cache_view(ft_cfg),
                                 "data": self.data_key(), "eval": self.eval_key(),
                                 "amplification": asdict(self.cfg.amplification)})
        twin = next((r for r in map(read_json, sorted(self.exp_dir.glob("runs/*/result.json")))
                     if r.get("train_key") == train_key and r["run"] != rid), None)
        if twin is not None:
            print(f"experiment: {rid}: the same training run as {twin['run']}; reusing its results")
            res = {**twin, "key": key, "run": rid, "method": method, "ratio": ratio, "same_training_as": twin["run"],
                   "finetune": {**twin["finetune"], "seconds": 0.0}, "eval_seconds": 0.0}  # nothing ran for it
            atomic_write_json(path, res)
            return res
        print(f"experiment: {rid}: fine-tuning on {len(selected)} examples"
              + (f" for {ft_cfg.max_steps} steps (equal_steps)" if ft_cfg.max_steps > 0 else ""))
        trained = train_model(self.model(), selected, ft_cfg, rdir / "finetune")
        print(f"experiment: {rid}: evaluating")
        t0 = time.perf_counter()
        metrics = self.evaluate(trained.lm, rdir)
        eval_s = time.perf_counter() - t0
        acts = self.feature_acts(trained.lm)
        del trained.lm
        gc.collect()
        res = {"key": key, "train_key": train_key, "run": rid, "method": method, "ratio": ratio, "seed": seed,
               "n_train": len(selected), "metrics_by_eval": metrics, "metrics": flatten_metrics(metrics),
               **amplification(base.get("feature_acts"), acts, self.cfg.amplification.eps),
               "finetune": {k: trained.stats.get(k) for k in ("steps", "train_loss", "seconds", "tokens_per_s",
                                                               "n_truncated", "n_dropped", "n_response_tokens")},
               "steps_mode": "equal_steps" if self.cfg.finetune.equal_steps else "epochs",
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
        if self.cfg.igds.report:
            write_report(self.run_dir)
        return results


def run_experiment(cfg: ExperimentConfig, lm: LoadedModel | None = None, task: Task | None = None) -> dict[str, Any]:
    """Run (or finish) an experiment; returns the results.json content."""
    check(cfg)  # again: code may have changed values since loading
    check_methods(cfg)
    return Experiment(cfg, lm=lm, task=task).run()


def run_from_config(config: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Load ``config`` with ``key=value`` overrides, run the experiment, print the table."""
    cfg = load_experiment_config(config, overrides)
    results = run_experiment(cfg)
    print(results_markdown(results))
    print(f"results: {Path(cfg.igds.out) / 'experiment'}")
    return results


