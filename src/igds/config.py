"""Every igds default, in one place, and how YAML files and the command line override them.

A config is a tree of dataclasses: :class:`RunConfig` for ``igds run/features/score``,
:class:`ExperimentConfig` (which holds a whole ``RunConfig`` as its ``igds`` section),
:class:`TrainSAEConfig` and :class:`EvalSAEConfig`. ``load_config(path, overrides, cls)``
starts from these defaults, applies a YAML file, then ``section.key=value`` overrides
(values parsed as YAML, so ``recall.n_candidates=32`` is an int and ``sae.paths=[a,b]`` a
list), then checks every value (:func:`check`) before any work starts. The resolved
config is saved next to every run's outputs.

The comment on a knob is its ``--help`` text (:func:`field_help`). Field metadata says
more: ``cache=False`` marks knobs that do not change results (left out of cache keys,
:func:`cache_view`); ``ge``/``gt``/``le``/``lt`` are ranges; ``path`` marks values that
name local files which must exist. ``Literal`` annotations are the allowed choices.

Choices marked *ours* are not published by the IGDS paper (arXiv 2604.25167); they are
igds defaults, chosen for the reasons given, and every one can be changed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

# The machinery, re-exported: callers import everything config-related from here.
from .config_tools import (ConfigError, cache_view, check, dump_config, field_help, field_type, key_view, knob, load,
                           parse_override, set_key, to_dict)

# IGDS and its ablations run through the pipeline (features cached per method); every other
# experiment method is a selector of the registry in igds.selectors, which checks its name.
# The derived arms re-read igds's own score table (no second Stage 1): igds_low takes the lowest
# scores first (the direction check), igds_quota / igds_coverage its select modes quota / coverage,
# igds_zscore its features combined by score.combine=zscore (effect-weighted z-scores).
IGDS_DERIVED = ("igds_low", "igds_quota", "igds_coverage", "igds_zscore")
IGDS_METHODS = ("igds", "igds_filtered", "igds_recall_only", "igds_random_candidates", "igds_paper", "igds_content",
                *IGDS_DERIVED)

# Named bundles of settings (`igds run --preset NAME`, `preset: NAME` in a YAML), applied under the user's
# own file and flags. The experiment arm `igds_paper` is the igds section with the "paper" preset on top.
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's method as far as its abstract and summaries tell (its hyperparameters are unknown):
    # every token position, the frequency contrast for recall, the one-sided amplification edit as the
    # causal test, the plain mean of the validated features' resonance, top-k.
    "paper": {"recall.positions": "all", "recall.method": "frequency",
              "filter.enabled": True, "filter.positions": "all", "filter.estimator": "amplify",
              "score.positions": "all", "score.aggregation": "mean", "score.combine": "mean",
              "select.mode": "top"},
    # Every stage reads the record's own text only (ours): no system prompt, chat template or prompt_template
    # words, so format features neither get recalled nor score rows (the experiment arm igds_content).
    "content": {"recall.positions": "content", "filter.positions": "content", "score.positions": "content"},
}
DATA_SECTIONS = ("pool", "task_data", "validation")

# Which tokens count (igds.activations.count_mask): all | prompt | response | content. `content` is the
# record's own text, the question's fields and the response, without the system prompt, chat-template
# tokens or the fixed words a prompt_template adds (igds.content); a template-only feature scores 0 there.
Positions = Literal["all", "prompt", "response", "content"]


# ====================================================================== igds run
@dataclass
class ModelConfig:
    name: str = knob("smollm2-135m", path="model")  # HF id, local dir, .gguf file, or a built-in name
    device: str = "auto"  # auto = cuda if available else cpu
    dtype: str = "auto"  # auto = bf16 on CUDA, fp32 on CPU (bf16 is ~7x slower on CPU)
    trust_remote_code: bool = False  # run the model repository's own Python code (only for repos you trust)


@dataclass
class SAEConfig:
    # SAE folders/files, SAELens `release/sae_id`, or `default` (the SAE shipped for a built-in model).
    paths: list[str] = knob(factory=lambda: ["default"], path="sae")
    layers: list[int] | None = None  # only needed when an SAE does not say which layer it reads


@dataclass
class DataConfig:
    path: str | None = knob(None, path="data")  # JSONL / JSON / Parquet / dataset folder / hf:NAME[:SPLIT]
    dialect: str = "auto"  # auto | alpaca | sharegpt | messages | prompt_completion (igds.data)
    prompt_field: str | None = None  # column holding the prompt (when the dialect cannot tell)
    response_field: str | None = None  # column holding the response
    prompt_template: str | None = None  # Python format string over the record's fields, e.g. "Q: {question}"
    system_prompt: str | None = None  # system message put before every prompt
    id_field: str = "id"  # column with a stable example id (row number when missing)
    split: str | None = None  # split of a dataset folder or hf: dataset
    limit: int | None = knob(None, ge=1)  # read only the first N examples


@dataclass
class RecallConfig:
    """Stage 1a: frequency recall of task features (all defaults ours)."""

    probe_size: int = knob(256, ge=1)  # task examples used to measure firing statistics
    reference_size: int = knob(256, ge=1)  # generic examples for the contrast
    positions: Positions = "all"  # which tokens count: all | prompt | response | content
    # How eligible features (firing on the task more than on the reference) are ranked: "frequency" = the
    # recall score below (the paper's contrast); "attribution" (ours) = the t-statistic of their gradient
    # attribution on the probe set (igds.attribution: first-order effect of amplifying them on the task's
    # loss, every feature in one backward pass), so the causal filter confirms features already likely causal.
    method: Literal["frequency", "attribution"] = "frequency"
    n_candidates: int = knob(32, ge=1)  # candidates passed to the causal filter (each costs V edited forwards)
    min_example_freq: float = knob(0.25, ge=0, le=1)  # must fire in at least this share of task examples
    min_task_freq: float = knob(0.005, ge=0, le=1)  # ... and on at least this share of task tokens
    epsilon: float = knob(1e-3, gt=0)  # smoothing of the frequency ratio
    # keep the reference's firing statistics in $IGDS_CACHE/reference-stats, keyed by model and SAE weights,
    # reference tokens and positions, so that later runs (other tasks, other arms) skip the reference pass
    reference_cache: bool = knob(True, cache=False, late=True)


@dataclass
class FilterConfig:
    """Stage 1b: interventional (causal) filtering (all defaults ours; igds.features, igds.filter_stats)."""

    # off by default at this scale (ours, BENCHMARKS.md "Stage 1 diagnostics"): pooled over four tasks it kept
    # 6 of 96 recalled vs 1 of 96 random candidates (Fisher p = 0.06, the rule asked for < 0.05), and on the
    # template-free summarization pool its 2 survivors found fewer task rows than all 24 recalled features.
    # True = the paper's causal filter (the experiment arm igds_filtered; the "paper" preset turns it on)
    enabled: bool = False
    validation_size: int = knob(32, ge=1)  # task examples (disjoint from the probe set)
    # per-example effect, positive = helps: central = [L(2 - alpha) - L(alpha)] / 2, a symmetric difference
    # that cancels the loss's curvature (ours); amplify = L(1) - L(alpha), the paper's one-sided edit;
    # gradient = (alpha - 1) x the gradient attribution (ours): the first-order term, all candidates from one
    # backward pass, no edited forwards (the cheapest); screened = the gradient ranks the
    # candidates on the selecting half, and the confirm_top best are measured as central (ours; the default:
    # on four tasks it kept exactly central's features in a third of the time)
    estimator: Literal["central", "amplify", "gradient", "screened"] = "screened"
    confirm_top: int = knob(6, ge=1, late=True)  # screened: candidates that get the edit; the rest count as p = 1
    # the edit h' = h + (alpha - 1) f_j(h) W_dec[j]; central also edits at 2 - alpha (alpha=2: double vs remove).
    # On SmolLM2 + GSM8K, amplify at alpha=4 raised the reference loss for 24 of 24 candidates (BENCHMARKS.md).
    alpha: float = 2.0
    positions: Positions = "all"  # where the edit is applied (never on special tokens)
    # skip edit positions whose residual L2 norm exceeds this multiple of the example's median (attention
    # sinks); None = off
    norm_guard: float | None = knob(10.0, gt=1)
    q: float = knob(0.1, gt=0, lt=1)  # Benjamini-Hochberg false discovery rate over the candidates
    min_delta: float = 0.0  # the null of the one-sided test: keep only effects shown to exceed it
    # select on a seeded half of the validation examples, confirm (one-sided p <= q) and estimate on the other
    replication: bool = True
    max_features: int | None = knob(32, ge=1)  # keep at most this many (smallest p first)
    # when no candidate passes: stop with an error, or keep every candidate unfiltered (recorded and warned)
    on_empty: Literal["stop", "recall_only"] = "stop"
    features_per_forward: int = knob(8, ge=1, cache=False)  # edits batched into one forward pass
    random_candidates: bool = False  # ablation "no recall": random features go through the filter
    cached_prefix: bool = True  # re-run only the blocks above the SAE layer

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.alpha <= 1:  # below 1 the edit weakens the feature and every effect's sign would flip
            yield "alpha", f"alpha={self.alpha} does not amplify; give a factor above 1 (2 doubles the feature)"
        if self.enabled and self.replication and self.validation_size < 4:
            yield "validation_size", "replication splits the validation examples in two halves; give at least 4"


@dataclass
class ScoreConfig:
    """Stage 2: the Feature-Resonant Score (defaults ours)."""

    aggregation: Literal["mean", "sum", "max"] = "mean"  # over counted tokens (sum is length-biased)
    # divide each feature by its mean activation on the task probe set (no effect on zscore / rank, which a
    # positive per-feature scale leaves unchanged)
    normalize: bool = True
    # over validated features: mean or sum of the (normalised) features per row (the paper's combination), or
    # over the whole pool each feature's z-score (zscore) or percentile rank (rank), averaged with weights
    # max(0, the feature's Stage 1b effect), 1 for a feature with none (igds.scoring.combine_scores)
    combine: Literal["mean", "sum", "zscore", "rank"] = "mean"
    positions: Positions = "all"  # which tokens count: all | prompt | response | content
    max_length: int = knob(1024, ge=2)  # longer examples are truncated (and counted in run.json)
    batch_tokens: int = knob(8192, ge=1, cache=False)  # padded tokens per forward
    batch_size: int = knob(32, ge=1, cache=False)  # examples per forward (at most)
    # examples per resumable shard; the shard store's layout (scoring.score_cache_key keys on it), not the scores
    shard_size: int = knob(512, ge=1, cache=False)
    top_examples: int = knob(8, ge=0, cache=False)  # per validated feature, kept for the report
    engine: Literal["local", "ray"] = knob("local", cache=False)  # where shards are scored
    ray_address: str | None = knob(None, cache=False)  # Ray cluster address (None: start one locally)
    ray_actors: int = knob(1, ge=1, cache=False)  # scoring actors, each holding the model and SAEs
    ray_cpus_per_actor: float = knob(1.0, ge=0, cache=False)  # CPUs Ray reserves per actor
    ray_gpus_per_actor: float = knob(0.0, ge=0, cache=False)  # GPUs (or a fraction) per actor
    # retries of a shard whose worker died; -1 = without end (Ray's default)
    ray_max_retries: int = knob(3, ge=-1, cache=False)


@dataclass
class SelectConfig:
    """How the budget is taken from the score table (igds.selection.select_rows)."""

    ratio: float | None = knob(0.5, gt=0, le=1)  # share of the pool to keep (ignored when budget is set)
    budget: int | None = knob(None, ge=1)  # number of pool examples to keep
    # top = the highest scores (the paper's); quota = round-robin over the validated features, each taking
    # its best row left; coverage = greedy SAE-feature coverage among the rows the gate lets through (ours)
    mode: Literal["top", "quota", "coverage"] = "top"
    # coverage only: the top share of the pool by score that is eligible; must exceed the ratio for coverage
    # to choose (ours: 0.75 leaves the default ratio 0.5 a choice among three quarters of the pool)
    gate: float = knob(0.75, gt=0, le=1)

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.mode == "coverage" and self.budget is None and self.ratio is not None and self.ratio > self.gate:
            yield "gate", f"coverage keeps only the top {self.gate} of the pool, less than the ratio {self.ratio}"


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    sae: SAEConfig = field(default_factory=SAEConfig)
    task_data: DataConfig = field(default_factory=DataConfig)  # task examples for feature discovery
    validation: DataConfig = field(default_factory=DataConfig)  # optional separate validation file
    reference: DataConfig = field(default_factory=lambda: DataConfig(path="builtin:generic"))  # generic contrast
    pool: DataConfig = field(default_factory=DataConfig)  # the examples to score and select from
    recall: RecallConfig = field(default_factory=RecallConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    use_chat_template: bool = True  # format prompts with the tokenizer's chat template
    seed: int = 0  # seed of the probe/validation split and random candidates
    skip_bad: bool = False  # write bad input rows to RUN_DIR/rejects.jsonl instead of stopping
    report: bool = True  # write RUN_DIR/report.html at the end
    out: str = "runs/igds"  # the run directory (re-running into it resumes)
    preset: str | None = None  # a named bundle of settings (PRESETS: "paper"), under your own file and flags

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.preset is not None and self.preset not in PRESETS:
            yield "preset", f"unknown preset {self.preset!r}; choose from {sorted(PRESETS)}"

    def preset_layers(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [(self.preset, "", PRESETS[self.preset])] if self.preset in PRESETS else []

    RENAMED = {"task": "task_data"}  # run directories written before the rename


# ====================================================================== igds experiment
@dataclass
class FinetuneConfig:
    """How to fine-tune. The paper publishes no recipe; every value here is ours.

    Defaults are a common LoRA SFT recipe sized for small models and CPU runs:
    LoRA r=16, alpha=32 on every linear layer of every block, lr 2e-4 with a short
    warm-up and cosine decay, 3 epochs, batch 8, sequences up to 512 tokens.
    """

    method: Literal["lora", "full"] = "lora"  # "lora" (peft adapters) or "full" (every weight)
    lora_r: int = knob(16, ge=1)  # LoRA rank
    lora_alpha: int = knob(32, ge=1)  # LoRA scale numerator (scale = alpha / r)
    # 0 on purpose: dropout 0.05 costs 30-40% step time on CPU (our timing on 2 cores, not in a benchmark) and
    # a handful of epochs over a few thousand examples does not need it.
    lora_dropout: float = knob(0.0, ge=0, lt=1)
    # "all-linear" = every nn.Linear in the blocks (not the LM head), for any architecture;
    # or a list of module names such as ["q_proj", "v_proj"].
    target_modules: str | list[str] = "all-linear"
    # Only these decoder blocks get adapters (None = all). Negative numbers count from the
    # end, so [-1, -2, -3, -4] is "the top four blocks": no backward pass runs below them.
    layers_to_transform: list[int] | None = None
    learning_rate: float | None = knob(None, gt=0)  # None: 2e-4 for LoRA, 1e-5 for full fine-tuning
    epochs: float = 3.0  # passes over the selection
    max_steps: int = -1  # > 0 overrides epochs
    # Experiments only: every arm trains as many optimiser steps as Full does in `epochs` over the
    # whole pool (a 50% arm makes twice the passes over its subset), so "IGDS@50% >= Full" compares
    # selections at equal compute. False = fixed epochs: a 50% arm gets half of Full's steps.
    equal_steps: bool = False
    batch_size: int = knob(8, ge=1)  # examples per step (per accumulation)
    grad_accum: int = knob(1, ge=1)  # gradient accumulation steps
    warmup_ratio: float = knob(0.03, ge=0, le=1)  # share of steps with a linear warm-up
    lr_scheduler: str = "cosine"  # any transformers scheduler name
    weight_decay: float = knob(0.0, ge=0)  # AdamW weight decay
    max_grad_norm: float = knob(1.0, ge=0)  # gradient clipping
    max_length: int = knob(512, ge=1)  # longer examples are cut from the end (counted in finetune.json)
    use_chat_template: bool = True  # must match how features were discovered and examples scored
    group_by_length: bool = True  # batches of similar length: far less padding
    # Logits only at response positions (same loss; much cheaper on CPU). Off = the
    # model's own full-logits loss.
    response_logits_only: bool = True
    gradient_checkpointing: bool = False  # trade compute for memory
    seed: int = 0  # seed of initialisation and data order (the experiment sets it per run)
    dtype: str = "auto"  # "auto": bf16 on CUDA when supported, fp32 otherwise
    save: bool = knob(True, cache=False)  # write the adapter (LoRA) or the whole model (full) under out_dir
    logging_steps: int = knob(10, ge=1, cache=False)  # log every N steps
    progress: bool = knob(True, cache=False)  # tqdm bar and tokens/s log lines

    def __post_init__(self) -> None:
        check(self, prefix="finetune.")  # also when built in code, not only when loaded

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.epochs <= 0 and self.max_steps <= 0:
            yield "epochs", "give epochs > 0 or max_steps > 0"
        if self.equal_steps and self.max_steps > 0:
            yield "equal_steps", "equal_steps sets every arm's step count from Full's epochs; drop max_steps"

    def steps_for(self, n_examples: int) -> int:
        """Optimiser steps of ``epochs`` passes over ``n_examples`` (as the Trainer counts them)."""
        batches = math.ceil(n_examples / self.batch_size)
        return max(1, math.ceil(self.epochs * max(1, batches // self.grad_accum)))

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return float(self.learning_rate)
        return 2e-4 if self.method == "lora" else 1e-5


@dataclass
class EvalConfig:
    """Evaluation data and generation settings (defaults ours)."""

    # eval files in the task's format; the first is the headline
    paths: list[str] = knob(factory=list, path="data")
    limit: int | None = knob(200, ge=1)  # first N examples of each file
    max_new_tokens: int | None = knob(None, ge=1)  # None: the task's own cap (math 256, summarization 128, ...)
    batch_size: int = knob(16, ge=1)  # prompts per generation batch
    save_predictions: bool = True  # per-example predictions and losses next to each run's result
    # Reference loss only (teacher-forced, no generation) on these files, e.g. the validation split:
    # a finer-grained signal than the generated metric, cheap enough for hundreds of rows.
    # Reported as `<file name>/ref_loss`.
    loss_paths: list[str] = knob(factory=list, path="data")
    loss_limit: int | None = knob(500, ge=1)  # first N examples of each loss file
    options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for evaluate_task


@dataclass
class AmplificationConfig:
    enabled: bool = True  # measure how much the validated features rose after fine-tuning
    n_prompts: int = knob(64, ge=1)  # evaluation prompts (of the headline eval file) the activations are measured on
    positions: Positions = "prompt"  # prompt | all (with the reference answer, teacher-forced) | response | content
    eps: float = knob(1e-6, gt=0)  # smoothing of the activation ratio


@dataclass
class ExperimentConfig:
    """Everything ``igds experiment`` needs: an IGDS run (``igds``: its model, pool, data,
    SAEs and settings, whose ``out`` is the experiment's directory) plus what the
    experiment adds: methods x ratios x seeds, fine-tuning and evaluation."""

    name: str = "experiment"  # shown in results.md and the report
    task: Any = "math"  # the task definition: a built-in task name (igds.tasks) or a mapping that defines one
    # IGDS and everything the methods share (model, pool, data, out); igds.select is set from `ratios`
    igds: RunConfig = field(default_factory=lambda: RunConfig(out="runs/experiment"))
    eval: EvalConfig = field(default_factory=EvalConfig)
    methods: list[str] = field(default_factory=lambda: ["igds", "random"])  # "full" or selector names (igds.selectors)
    ratios: list[float] = field(default_factory=lambda: [0.5])  # shares of the pool, each in (0, 1]
    seeds: list[int] = field(default_factory=lambda: [0])  # fine-tuning seeds (and random-baseline draws)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method keyword options
    amplification: AmplificationConfig = field(default_factory=AmplificationConfig)
    # data sections read through the task definition (its prompt template and reference rendering)
    task_format: list[str] = field(default_factory=lambda: list(DATA_SECTIONS))
    task_data_excludes_pool: bool = True  # drop task examples whose id is also in the pool

    # keys of the flat layout before the `igds` section, for a pointing error
    MOVED = {**{k: f"igds.{k}" for k in ("model", "pool", "task_data", "validation", "reference", "sae", "recall",
                                          "filter", "score", "use_chat_template", "skip_bad", "report", "out")},
             "igds_seed": "igds.seed"}

    def preset_layers(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [(p, "igds.", PRESETS[p]) for p in (self.igds.preset,) if p in PRESETS]

    def problems(self) -> Iterator[tuple[str, str]]:
        if not self.methods:
            yield "methods", "give at least one method"
        for r in self.ratios:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r <= 1:
                yield "ratios", f"{r!r} is not in (0, 1]"
        if not self.seeds:
            yield "seeds", "give at least one seed"
        if not self.igds.pool.path:
            yield "igds.pool.path", "the training pool is required"
        if not self.eval.paths:
            yield "eval.paths", "at least one evaluation file is required"
        if any(m in IGDS_METHODS for m in self.methods) and not self.igds.task_data.path:
            yield "igds.task_data.path", "IGDS needs task examples to discover features"
        bad = [x for x in self.task_format if x not in DATA_SECTIONS]
        if bad:
            yield "task_format", f"{bad} are not data sections; use {list(DATA_SECTIONS)}"


# ====================================================================== SAE training and evaluation
@dataclass
class TrainSAEConfig:
    """Every knob of SAE training (:mod:`igds.train_sae`), with the defaults used for the shipped SAE.

    ``data`` entries are data-source specs (:mod:`igds.sae_data`): a file readable by
    :func:`igds.data.iter_records` or a ``.txt`` file, plus options after ``::``, e.g.
    ``gsm8k/train.jsonl::prompt_field=question,response_field=answer,limit=3000``.
    """

    model: str = knob("smollm2-135m", path="model")  # HF id, local dir or built-in name
    layers: list[int] = field(default_factory=lambda: [15])  # layer L = output of decoder block L
    # training files, repeatable; options after '::', e.g. FILE::limit=3000,prompt_field=q,response_field=a
    data: list[str] = knob(factory=list, path="source")
    out_dir: str = knob("sae-out", cache=False)  # output folder (SAEs in OUT/layer_L, checkpoint, log)
    d_sae: int | None = knob(None, ge=1)  # width; None -> expansion_factor * d_model
    expansion_factor: int = knob(8, ge=1)  # width = expansion_factor * d_model when d_sae is not set
    k: int = knob(32, ge=1)  # active latents per token (TopK)
    max_length: int = knob(512, ge=2)  # tokens per example (longer ones are cut; counted in the log)
    use_chat_template: bool = True  # as igds scoring sees prompts
    text_field: str = "text"  # column of raw-text records
    norm_filter: float = knob(10.0, ge=0)  # drop tokens with norm > norm_filter * median norm (0 = off)
    forward_batch_tokens: int = knob(8192, ge=1)  # padded tokens per model forward
    forward_batch_size: int = knob(32, ge=1)  # examples per model forward (at most)
    total_tokens: int = knob(3_000_000, ge=1)  # training tokens = steps * batch_tokens
    batch_tokens: int = knob(1024, ge=1)  # activation tokens per SAE step
    # cache mode: collect this many activation tokens once and train epochs over them
    activation_tokens: int | None = knob(None, ge=1)
    buffer_tokens: int = knob(131_072, ge=1)  # streaming mode: shuffle-buffer size (activations per layer)
    # cache mode: the activation set's folder (None -> OUT/activation_cache). Runs with other SAE settings
    # (k, width, lr...) or a subset of its layers can share one folder: the model's forward runs once
    activation_cache: str | None = knob(None, cache=False)
    lr: float | None = knob(None, gt=0)  # None -> 2e-4 / sqrt(d_sae / 16384) (sparsify's rule)
    warmup_steps: int = knob(100, ge=0)  # linear warm-up steps
    lr_end_frac: float = knob(0.1, ge=0, le=1)  # cosine decay ends at lr * lr_end_frac
    adam_betas: tuple[float, float] = (0.9, 0.999)  # Adam's (beta1, beta2)
    auxk_alpha: float = knob(1 / 32, ge=0)  # weight of the AuxK loss; 0 disables it
    dead_tokens: int = knob(200_000, ge=1)  # a latent is dead after this many training tokens without firing
    seed: int = 0  # seed of data order, subsets and initialisation
    checkpoint_every: int = knob(500, ge=0, cache=False)  # steps; 0 = only at the end
    log_every: int = knob(50, ge=1, cache=False)  # log every N steps
    # dtype of the saved SAE weights ("float16" halves the size)
    save_dtype: Literal["float32", "float16", "bfloat16"] = knob("float32", cache=False)
    device: str = knob("auto", cache=False)  # auto = cuda if available else cpu
    progress: bool = knob(True, cache=False)  # progress bars
    stop_after_steps: int | None = knob(None, ge=1, cache=False)  # stop (with a checkpoint) after this many steps

    def identity(self) -> dict[str, Any]:
        """What the trained weights depend on (the resume check)."""
        return cache_view(self)


@dataclass
class EvalSAEConfig:
    """``igds eval-sae``: an SAE's reconstruction, sparsity and loss on held-out text (:mod:`igds.eval_sae`)."""

    model: str = knob("smollm2-135m", path="model")  # HF id, local dir or built-in name
    sae: str = knob("default", path="sae")  # SAE folder, 'default' (shipped SAE) or release/sae_id
    data: list[str] = knob(factory=list, path="source")  # files, repeatable; FILE::limit=N,prompt_field=..
    layer: int | None = None  # the layer the SAE reads (when the SAE does not say)
    limit: int | None = knob(200, ge=1)  # records per file (seeded random subset)
    max_length: int = knob(512, ge=2)  # tokens per example
    seed: int = 0  # seed of the subsets
    device: str = "auto"  # auto = cuda if available else cpu

    def problems(self) -> Iterator[tuple[str, str]]:
        if not self.data:
            yield "data", "give at least one evaluation file (--data FILE)"


# ====================================================================== loading
def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
                cls: type = RunConfig, rules: bool = True) -> Any:
    """Defaults of ``cls`` <- YAML file <- ``key=value`` overrides, every value checked before
    any work starts (:class:`ConfigError`, one line naming the file and the key)."""
    return load(cls, path, overrides, rules)


def with_preset(cfg: RunConfig, name: str) -> RunConfig:
    """A copy of ``cfg`` with preset ``name``'s settings on top (the experiment arm ``igds_paper``)."""
    out = copy.deepcopy(cfg)
    for key, value in PRESETS[name].items():
        set_key(out, key, value, f"preset {name!r}")
    out.preset = name
    return out
