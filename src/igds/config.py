"""Every igds default, in one place, and how YAML files and the command line override them.

A config is a tree of dataclasses. ``load_config(path, overrides)`` starts from these
defaults, applies a YAML file, then ``section.key=value`` overrides (values parsed as
YAML, so ``recall.n_candidates=32`` is an int and ``sae.paths=[a,b]`` a list). The
resolved config is saved next to every run's outputs.

Choices marked *ours* are not published by the IGDS paper (arXiv 2604.25167); they are
igds defaults, chosen for the reasons given, and every one can be changed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class ModelConfig:
    name: str = "smollm2-135m"  # HF id, local dir, .gguf file, or a built-in name
    device: str = "auto"  # auto = cuda if available else cpu
    dtype: str = "auto"  # auto = bf16 on CUDA, fp32 on CPU (bf16 is ~7x slower on CPU)
    trust_remote_code: bool = False


@dataclass
class SAEConfig:
    # SAE folders/files, SAELens `release/sae_id`, or `default` (the SAE shipped for a built-in model).
    paths: list[str] = field(default_factory=lambda: ["default"])
    layers: list[int] | None = None  # only needed when an SAE does not say which layer it reads


@dataclass
class DataConfig:
    path: str | None = None  # JSONL / JSON / Parquet / dataset folder / hf:NAME[:SPLIT]
    dialect: str = "auto"
    prompt_field: str | None = None
    response_field: str | None = None
    prompt_template: str | None = None
    system_prompt: str | None = None
    id_field: str = "id"
    split: str | None = None
    limit: int | None = None


@dataclass
class RecallConfig:
    """Stage 1a: frequency recall of task features (all defaults ours)."""

    probe_size: int = 256  # task examples used to measure firing statistics
    reference_size: int = 256  # generic examples for the contrast
    positions: str = "all"  # which tokens count: all | prompt | response
    n_candidates: int = 32  # candidates passed to the causal filter (each costs V edited forwards)
    min_example_freq: float = 0.25  # must fire in at least this share of task examples
    min_task_freq: float = 0.005  # ... and on at least this share of task tokens
    epsilon: float = 1e-3  # smoothing of the frequency ratio


@dataclass
class FilterConfig:
    """Stage 1b: interventional (causal) filtering (all defaults ours)."""

    enabled: bool = True  # False = ablation "recall only": every candidate is kept
    validation_size: int = 32  # task examples (disjoint from the probe set)
    # amplification factor: h' = h + (alpha - 1) f_j(h) W_dec[j]. On SmolLM2 + GSM8K, alpha=4
    # raised the reference loss for 24 of 24 candidates; alpha=2 kept 5 (BENCHMARKS.md).
    alpha: float = 2.0
    positions: str = "all"  # where the edit is applied
    z: float = 1.0  # keep if mean_delta - z * se > min_delta
    min_delta: float = 0.0
    max_features: int | None = 32  # keep at most this many (largest lower bound first)
    fallback_top: int = 5  # if none passes, keep this many with positive mean effect (warned)
    features_per_forward: int = 8  # features batched into one forward pass
    random_candidates: bool = False  # ablation "no recall": random features go through the filter
    cached_prefix: bool = True  # re-run only the blocks above the SAE layer


@dataclass
class ScoreConfig:
    """Stage 2: the Feature-Resonant Score (defaults ours)."""

    aggregation: str = "mean"  # mean | sum | max over counted tokens (sum is length-biased)
    normalize: bool = True  # divide each feature by its mean activation on the task probe set
    combine: str = "mean"  # mean | sum over validated features
    positions: str = "all"
    max_length: int = 1024  # longer examples are truncated (and counted in run.json)
    batch_tokens: int = 8192  # padded tokens per forward
    batch_size: int = 32
    shard_size: int = 512  # examples per resumable shard
    top_examples: int = 8  # per validated feature, kept for the report
    engine: str = "local"  # local | ray
    ray_address: str | None = None
    ray_actors: int = 1
    ray_cpus_per_actor: float = 1.0
    ray_gpus_per_actor: float = 0.0
    ray_max_retries: int = 3  # retries of a shard whose worker died; -1 = without end (Ray's default)


@dataclass
class SelectConfig:
    ratio: float | None = 0.5
    budget: int | None = None


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    task: DataConfig = field(default_factory=DataConfig)
    validation: DataConfig = field(default_factory=DataConfig)  # optional separate validation file
    reference: DataConfig = field(default_factory=lambda: DataConfig(path="builtin:generic"))
    pool: DataConfig = field(default_factory=DataConfig)
    recall: RecallConfig = field(default_factory=RecallConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    use_chat_template: bool = True
    seed: int = 0
    skip_bad: bool = False
    report: bool = True
    out: str = "runs/igds"


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _apply(obj: Any, values: dict[str, Any], where: str) -> None:
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in names:
            raise KeyError(f"unknown config key {where}{key!r}; known: {sorted(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise TypeError(f"config key {where}{key} is a section; give a mapping")
            _apply(current, value, f"{where}{key}.")
        else:
            setattr(obj, key, value)


def set_key(cfg: Any, dotted: str, value: Any) -> None:
    """Set ``section.key`` on a config tree (raises KeyError on unknown keys)."""
    *parents, last = dotted.replace("-", "_").split(".")
    obj = cfg
    for i, p in enumerate(parents):
        if not hasattr(obj, p) or not dataclasses.is_dataclass(getattr(obj, p)):
            raise KeyError(f"unknown config section {'.'.join(parents[: i + 1])!r}")
        obj = getattr(obj, p)
    _apply(obj, {last: value}, ".".join(parents) + "." if parents else "")


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
                cls: type = RunConfig) -> Any:
    cfg = cls()
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config file must be a YAML mapping")
        try:
            _apply(cfg, data, "")
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: {e.args[0]}") from None
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides or [])
    for key, value in items:
        set_key(cfg, key, value)
    return cfg


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
