"""Train TopK sparse autoencoders on a model's residual stream, where no SAE exists.

One pass of the (stopped) forward feeds one SAE per requested layer. The recipe
follows the TopK SAE literature (Gao et al. 2024; EleutherAI ``sparsify``), written
here in plain PyTorch:

* inputs are residuals at *layer L = output of decoder block L* (HF
  ``hidden_states[L+1]``), never position 0, special tokens or padding, and never
  tokens whose norm exceeds ``norm_filter`` x the median norm (attention-sink
  tokens reach ~25,000 where the median is ~150 on SmolLM2);
* inputs are multiplied by a stored scale ``s = sqrt(d) / mean_norm`` estimated on
  the first chunk, so one learning rate fits every model and layer;
* ``z = topk(relu((x s - b_dec) W_enc + b_enc))``, ``x_hat = z W_dec + b_dec``;
  decoder rows stay unit-norm (the gradient component along each row is removed
  before the step, the rows are renormalised after it);
* loss = FVU (squared error / total variance of the batch) plus ``auxk_alpha`` x
  the AuxK loss: the ``d_in/2`` largest pre-activations of *dead* latents (no
  activation in the last ``dead_tokens`` tokens) must reconstruct the residual
  error, which revives them;
* Adam, linear warm-up, cosine decay to ``lr_end_frac`` x lr.

Two data modes:

* ``activation_tokens = N`` (cache mode): collect N activation tokens once, keep
  them (``out_dir/activation_cache``), and train ``total_tokens`` over them in
  epochs with a fresh seeded permutation each epoch. On CPUs the forward is several
  times slower than an SAE step (SmolLM2 layer 15 on 2 cores: ~300-1,400 tokens/s
  collected vs ~1,500-3,000 tokens/s trained at 8x width, batch 1,024; see
  ``benchmarks/results/sae_training.md``), so reusing activations for a few epochs
  is the cheap way to train.
* ``activation_tokens = None`` (streaming): fill a buffer of ``buffer_tokens``
  activations, permute it, train through it once, refill. When the data is used
  up a new pass starts with a new example order (logged).

Saved SAEs are SAELens folders (``igds.sae.SAE.save``) with the input scale folded
into the weights (``W_enc s``, ``W_dec / s``, ``b_dec / s``), so they read raw
residuals, and ``sae_lens.SAE.load_from_disk`` encodes them identically.

Checkpoints (``out_dir/checkpoint.pt``: SAEs, Adam states, dead-latent counters,
RNG state, data position) are written atomically every ``checkpoint_every``
steps; a rerun with the same config resumes exactly where the last one stopped.

Entry points: :func:`train_sae` (model + data files) and
:func:`train_on_activations` (a tensor you already have);
``python -m igds.train_sae --help`` for the command line.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from .artifacts import atomic_path, atomic_write_json, stable_hash
from .data import DataError, DataSpec, TokenizedExample, detect_dialect, parse_record, tokenize_example
from .readers import iter_records
from .sae import SAE

CHECKPOINT = "checkpoint.pt"
CACHE_DIR = "activation_cache"


@dataclass
class TrainSAEConfig:
    """Every knob of SAE training, with the defaults used for the shipped SAE.

    ``data`` entries are paths readable by :func:`igds.data.iter_records` (JSONL,
    JSON, Parquet, dataset folders) or ``.txt`` files (one document per blank-line
    separated paragraph). Records in a known dialect (Alpaca, ShareGPT, messages,
    prompt/completion) become chat-formatted prompt + response; records with a
    ``text_field`` become raw text. Options per source follow ``::`` as
    comma-separated ``key=value`` pairs: ``limit`` (seeded random subset of that
    many records), ``prompt_field``, ``response_field``, ``text_field``; e.g.
    ``gsm8k/train.jsonl::prompt_field=question,response_field=answer,limit=3000``.
    """

    model: str = "smollm2-135m"
    layers: list[int] = field(default_factory=lambda: [15])
    data: list[str] = field(default_factory=list)
    out_dir: str = "sae-out"
    # --- architecture
    d_sae: int | None = None  # width; None -> expansion_factor * d_model
    expansion_factor: int = 8
    k: int = 32
    # --- data
    max_length: int = 512  # tokens per example (longer ones are cut; counted in the log)
    use_chat_template: bool = True  # as igds scoring sees prompts
    text_field: str = "text"
    norm_filter: float = 10.0  # drop tokens with norm > norm_filter * median norm (0 = off)
    forward_batch_tokens: int = 8192  # padded tokens per model forward
    forward_batch_size: int = 32
    # --- optimisation
    total_tokens: int = 3_000_000  # training tokens = steps * batch_tokens
    batch_tokens: int = 1024
    activation_tokens: int | None = None  # cache mode: collect this many once, train epochs over them
    buffer_tokens: int = 131_072  # streaming mode: shuffle-buffer size (activations per layer)
    lr: float | None = None  # None -> 2e-4 / sqrt(d_sae / 16384) (sparsify's rule)
    warmup_steps: int = 100
    lr_end_frac: float = 0.1  # cosine decay ends at lr * lr_end_frac
    adam_betas: tuple[float, float] = (0.9, 0.999)
    auxk_alpha: float = 1 / 32  # 0 disables AuxK
    dead_tokens: int = 200_000  # a latent is dead after this many training tokens without firing
    seed: int = 0
    # --- bookkeeping
    checkpoint_every: int = 500  # steps; 0 = only at the end
    log_every: int = 50
    save_dtype: str = "float32"  # dtype of the saved SAE weights ("float16" halves the size)
    device: str = "auto"
    progress: bool = True
    stop_after_steps: int | None = None  # stop (with a checkpoint) after this many steps in this call

    # fields that do not change the trained weights (excluded from the resume check)
    _NON_IDENTITY = ("out_dir", "checkpoint_every", "log_every", "save_dtype", "device", "progress",
                     "stop_after_steps")

    def identity(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in self._NON_IDENTITY}


# ====================================================================== data
@dataclass
class DataSource:
    path: str
    limit: int | None = None
    prompt_field: str | None = None
    response_field: str | None = None
    text_field: str | None = None


def parse_source(spec: str, default_text_field: str = "text") -> DataSource:
    """``PATH[::key=value,...]`` -> :class:`DataSource` (keys: limit, prompt_field, response_field, text_field)."""
    path, _, opts = spec.partition("::")
    src = DataSource(path=path, text_field=default_text_field)
    for item in filter(None, (o.strip() for o in opts.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in ("limit", "prompt_field", "response_field", "text_field"):
            raise ValueError(f"bad data option {item!r} in {spec!r}; use limit=N, prompt_field=F, "
                             "response_field=F or text_field=F")
        setattr(src, key, int(value) if key == "limit" else value)
    return src


def _source_texts(src: DataSource, tokenizer: Any, cfg: TrainSAEConfig, rng: random.Random
                  ) -> list[TokenizedExample]:
    """Tokenise one source (a seeded subset of ``limit`` records)."""
    path = Path(src.path).expanduser()
    if path.suffix == ".txt":
        if not path.exists():
            raise FileNotFoundError(f"data file not found: {path}")
        paras = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
        items: list[Any] = [("text", p) for p in paras]
    else:
        spec = DataSpec(prompt_field=src.prompt_field, response_field=src.response_field)
        items = []
        for line, rec in iter_records(path):
            dialect = detect_dialect(rec, spec)
            if dialect is None and src.text_field and isinstance(rec.get(src.text_field), str):
                if rec[src.text_field].strip():
                    items.append(("text", rec[src.text_field]))
                continue
            items.append(("example", parse_record(rec, spec, str(path), line, dialect)))
    if src.limit is not None and len(items) > src.limit:
        items = [items[i] for i in sorted(rng.sample(range(len(items)), src.limit))]
    out = []
    for kind, item in items:
        if kind == "text":
            ids = tokenizer(item, add_special_tokens=True)["input_ids"]
            out.append(TokenizedExample(ids=ids[: cfg.max_length], prompt_len=0, truncated=len(ids) > cfg.max_length))
        else:
            out.append(tokenize_example(tokenizer, item, cfg.max_length, cfg.use_chat_template))
    return out


def load_training_examples(cfg: TrainSAEConfig, tokenizer: Any) -> list[TokenizedExample]:
    """All sources, tokenised, in file order (shuffled later, per pass)."""
    if not cfg.data:
        raise ValueError("no training data: give at least one data file (TrainSAEConfig.data / --data)")
    rng = random.Random(cfg.seed)
    examples: list[TokenizedExample] = []
    for spec in cfg.data:
        examples += _source_texts(parse_source(spec, cfg.text_field), tokenizer, cfg, rng)
    examples = [e for e in examples if len(e.ids) >= 2]
    if not examples:
        raise ValueError(f"no usable examples in {cfg.data}")
    return examples


def plan_pass(lengths: Sequence[int], seed: int, max_tokens: int, max_batch: int, window: int = 512
              ) -> list[list[int]]:
    """Forward batches for one pass: seeded example order, length-grouped within windows.

    Windows keep padding low while the stream stays a mix of sources and lengths."""
    from .activations import length_batches

    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    batches: list[list[int]] = []
    for w in range(0, len(order), window):
        ids = order[w : w + window]
        for b in length_batches([lengths[i] for i in ids], max_tokens, max_batch):
            batches.append([ids[j] for j in b])
    return batches


class ActivationStream:
    """Counted, norm-filtered residuals of several layers, batch by batch, restartable at any batch."""

    def __init__(self, lm: Any, examples: list[TokenizedExample], layers: list[int], cfg: TrainSAEConfig):
        self.lm, self.examples, self.layers, self.cfg = lm, examples, layers, cfg
        lengths = [len(e.ids) for e in examples]
        self._plans: dict[int, list[list[int]]] = {}
        self._lengths = lengths
        self.batches_per_pass = len(self._plan(0))
        self.thresholds: dict[int, float] | None = None  # per-layer norm ceilings, fixed on first use
        self.n_seen = 0
        self.n_dropped = 0

    def _plan(self, p: int) -> list[list[int]]:
        if p not in self._plans:
            self._plans = {p: plan_pass(self._lengths, self.cfg.seed + 1000 * p, self.cfg.forward_batch_tokens,
                                        self.cfg.forward_batch_size)}
        return self._plans[p]

    def calibrate(self, min_tokens: int = 4096) -> dict[int, float] | None:
        """Fix the per-layer norm ceilings from the first batches of pass 0 (the same on every resume)."""
        if not self.cfg.norm_filter or self.cfg.norm_filter <= 0:
            return None
        from .activations import iter_activation_batches

        norms: dict[int, list[torch.Tensor]] = {L: [] for L in self.layers}
        got = 0
        for ab in iter_activation_batches(self.lm, self.examples, self.layers, max_tokens=self.cfg.forward_batch_tokens,
                                          max_batch=self.cfg.forward_batch_size, batches=self._plan(0)):
            for L in self.layers:
                norms[L].append(ab.resid[L][ab.counted].float().norm(dim=-1).cpu())
            got += int(ab.counted.sum())
            if got >= min_tokens:
                break
        if got == 0:
            raise ValueError("the data yielded no usable activation tokens (after removing the first token, "
                             "special tokens and padding)")
        self.thresholds = {L: float(torch.cat(v).median()) * self.cfg.norm_filter for L, v in norms.items()}
        return self.thresholds

    def iter_from(self, batch_index: int) -> Iterator[tuple[int, dict[int, torch.Tensor]]]:
        """Yield ``(next batch index, {layer: (n, d) float32 cpu})`` forever (passes repeat, reshuffled)."""
        from .activations import iter_activation_batches

        while True:
            p, i = divmod(batch_index, self.batches_per_pass)
            if i == 0 and p > 0:
                print(f"[train_sae] data pass {p + 1} begins (the data has been used once already)",
                      file=sys.stderr)
            plan = self._plan(p)[i:]
            for ab in iter_activation_batches(self.lm, self.examples, self.layers, max_tokens=self.cfg.forward_batch_tokens,
                                              max_batch=self.cfg.forward_batch_size, batches=plan):
                batch_index += 1
                counted = ab.counted & ab.attention_mask.bool().to(ab.counted.device)
                acts = {L: ab.resid[L][counted].float().cpu() for L in self.layers}
                n = next(iter(acts.values())).shape[0]
                if n == 0:
                    yield batch_index, acts
                    continue
                if self.cfg.norm_filter and self.cfg.norm_filter > 0:
                    norms = {L: a.norm(dim=-1) for L, a in acts.items()}
                    if self.thresholds is None:
                        self.calibrate()
                    assert self.thresholds is not None
                    keep = torch.ones(n, dtype=torch.bool)
                    for L in self.layers:
                        keep &= norms[L] <= self.thresholds[L]
                    acts = {L: a[keep] for L, a in acts.items()}
                    self.n_dropped += int((~keep).sum())
                self.n_seen += n
                yield batch_index, acts


def collect(stream_iter: Iterator[tuple[int, dict[int, torch.Tensor]]], layers: list[int], n_tokens: int,
            max_empty_batches: int = 1000, bar: Any = None) -> tuple[dict[int, torch.Tensor], int]:
    """Pull at least ``n_tokens`` activations (whole forward batches) from a stream."""
    parts: dict[int, list[torch.Tensor]] = {L: [] for L in layers}
    got, empty, next_batch = 0, 0, 0
    for next_batch, acts in stream_iter:
        n = acts[layers[0]].shape[0]
        empty = empty + 1 if n == 0 else 0
        if empty >= max_empty_batches:
            break
        for L in layers:
            parts[L].append(acts[L])
        got += n
        if bar is not None:
            bar.update(n)
        if got >= n_tokens:
            break
    if got == 0:
        raise ValueError("the data yielded no usable activation tokens (after removing the first token, "
                         "special tokens, padding and extreme-norm tokens)")
    return {L: torch.cat(parts[L]) for L in layers}, next_batch


# ====================================================================== the SAE being trained
class TopKTrainer:
    """One TopK SAE in normalised input space, its Adam state and its dead-latent counters."""

    def __init__(self, d_in: int, d_sae: int, k: int, cfg: TrainSAEConfig, generator: torch.Generator,
                 device: torch.device):
        self.d_in, self.d_sae, self.k, self.cfg, self.device = d_in, d_sae, k, cfg, device
        W_dec = torch.randn(d_sae, d_in, generator=generator)
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        self.W_enc = W_dec.T.clone().contiguous().to(device).requires_grad_(True)  # tied init
        self.W_dec = W_dec.to(device).requires_grad_(True)
        self.b_enc = torch.zeros(d_sae, device=device, requires_grad=True)
        self.b_dec = torch.zeros(d_in, device=device, requires_grad=True)
        self.scale = 1.0
        self.params = [self.W_enc, self.b_enc, self.W_dec, self.b_dec]
        self.opt = torch.optim.Adam(self.params, lr=1e-3, betas=cfg.adam_betas)
        # training tokens since each latent last fired
        self.since_fired = torch.zeros(d_sae, dtype=torch.long, device=device)

    def init_from_data(self, x: torch.Tensor) -> None:
        """Set the input scale and start ``b_dec`` at the data mean (normalised space)."""
        mean_norm = float(x.norm(dim=-1).mean())
        self.scale = self.d_in**0.5 / mean_norm
        with torch.no_grad():
            self.b_dec.copy_((x.to(self.device) * self.scale).mean(0))

    def step(self, x: torch.Tensor, lr: float) -> dict[str, float]:
        """One Adam step on a raw batch ``x`` (B, d_in); returns batch metrics."""
        cfg = self.cfg
        x = x.to(self.device, torch.float32) * self.scale
        # (x - b_dec) W_enc written as x W_enc - b_dec W_enc: x needs no gradient, so the
        # (B, d_sae) x (d_sae, d_in) input-gradient matmul is never computed (a third of the work)
        pre = (x @ self.W_enc + (self.b_enc - self.b_dec @ self.W_enc)).relu()
        vals, idx = pre.topk(self.k, dim=-1, sorted=False)
        recon = F.embedding_bag(idx, self.W_dec, per_sample_weights=vals, mode="sum") + self.b_dec
        err = x - recon
        total_var = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
        fvu = err.pow(2).sum() / total_var
        loss = fvu
        dead = self.since_fired >= cfg.dead_tokens
        n_dead = int(dead.sum())
        aux = torch.zeros(())
        if cfg.auxk_alpha > 0 and n_dead > 0:
            k_aux = min(self.d_in // 2, n_dead)
            aux_pre = pre.masked_fill(~dead, -torch.inf)
            a_vals, a_idx = aux_pre.topk(k_aux, dim=-1, sorted=False)
            e_hat = F.embedding_bag(a_idx, self.W_dec, per_sample_weights=a_vals, mode="sum")
            aux = (e_hat - err.detach()).pow(2).sum() / total_var
            loss = loss + cfg.auxk_alpha * min(n_dead / k_aux, 1.0) * aux
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            # keep decoder rows on the unit sphere: drop the gradient along each row, renormalise after
            g = self.W_dec.grad
            g -= (g * self.W_dec).sum(-1, keepdim=True) * self.W_dec
            self.opt.step()
            self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            fired = torch.zeros(self.d_sae, dtype=torch.bool, device=self.device)
            fired[idx[vals > 0]] = True
            self.since_fired += x.shape[0]
            self.since_fired[fired] = 0
        return {"fvu": float(fvu.detach()), "auxk": float(aux.detach()), "dead_frac": n_dead / self.d_sae,
                "l0": float((vals > 0).sum(-1).float().mean())}

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"W_enc": self.W_enc.detach().cpu(), "b_enc": self.b_enc.detach().cpu(),
                "W_dec": self.W_dec.detach().cpu(), "b_dec": self.b_dec.detach().cpu(),
                "scale": torch.tensor(self.scale, dtype=torch.float64), "opt": self.opt.state_dict(),
                "since_fired": self.since_fired.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
                getattr(self, name).copy_(state[name])
        self.scale = float(state["scale"])
        self.opt.load_state_dict(state["opt"])
        self.since_fired.copy_(state["since_fired"])

    def to_sae(self, metadata: dict[str, Any]) -> SAE:
        """The trained SAE in raw residual space: the input scale folded into the weights.

        With ``x' = s x``: ``(s x - b) W + c = (x - b/s)(s W) + c`` and
        ``(z W_dec + b) / s = z (W_dec/s) + b/s``: identical codes, raw-space output."""
        s = self.scale
        sae = SAE(self.d_in, self.d_sae, architecture="topk", k=self.k, apply_b_dec_to_input=True,
                  metadata=metadata)
        with torch.no_grad():
            sae.W_enc.copy_(self.W_enc.detach().cpu() * s)
            sae.b_enc.copy_(self.b_enc.detach().cpu())
            sae.W_dec.copy_(self.W_dec.detach().cpu() / s)
            sae.b_dec.copy_(self.b_dec.detach().cpu() / s)
        return sae.eval().requires_grad_(False)


def lr_at(step: int, total_steps: int, base_lr: float, warmup: int, end_frac: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to ``base_lr * end_frac``."""
    if warmup > 0 and step < warmup:
        return base_lr * (step + 1) / warmup
    span = max(1, total_steps - warmup)
    t = min(1.0, (step - warmup) / span)
    return base_lr * (end_frac + (1 - end_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def default_lr(d_sae: int) -> float:
    return 2e-4 / math.sqrt(d_sae / 2**14)


# ====================================================================== the loop
def _validate(cfg: TrainSAEConfig, n_layers: int | None, d_model: int) -> int:
    if not cfg.layers:
        raise ValueError("give at least one layer to train an SAE on")
    if len(set(cfg.layers)) != len(cfg.layers):
        raise ValueError(f"duplicate layers in {cfg.layers}")
    if n_layers is not None:
        for L in cfg.layers:
            if not 0 <= L < n_layers:
                raise ValueError(f"layer {L} is out of range for {cfg.model}: it has {n_layers} decoder blocks, "
                                 f"so layers 0..{n_layers - 1} (layer L = output of block L)")
    d_sae = cfg.d_sae if cfg.d_sae is not None else cfg.expansion_factor * d_model
    if d_sae <= 0:
        raise ValueError(f"SAE width must be positive, got d_sae={d_sae}")
    if not 0 < cfg.k <= d_sae:
        raise ValueError(f"k={cfg.k} must satisfy 0 < k <= width (d_sae={d_sae})")
    if cfg.batch_tokens <= 0 or cfg.total_tokens < cfg.batch_tokens:
        raise ValueError(f"need 0 < batch_tokens ({cfg.batch_tokens}) <= total_tokens ({cfg.total_tokens})")
    if cfg.activation_tokens is not None and cfg.activation_tokens < cfg.batch_tokens:
        raise ValueError(f"activation_tokens ({cfg.activation_tokens}) must be >= batch_tokens ({cfg.batch_tokens})")
    if cfg.activation_tokens is None and cfg.buffer_tokens < cfg.batch_tokens:
        raise ValueError(f"buffer_tokens ({cfg.buffer_tokens}) must be >= batch_tokens ({cfg.batch_tokens})")
    if cfg.save_dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"save_dtype must be float32, float16 or bfloat16, got {cfg.save_dtype!r}")
    return d_sae


ChunkFn = Callable[[int, int], tuple[dict[int, torch.Tensor], int]]


def _run(cfg: TrainSAEConfig, layers: list[int], d_in: int, d_sae: int, get_chunk: ChunkFn,
         out_dir: Path | None, device: torch.device) -> dict[int, TopKTrainer]:
    """The training loop shared by both entry points: chunk -> permutation -> steps; checkpoints."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    trainers = {L: TopKTrainer(d_in, d_sae, cfg.k, cfg, gen, device) for L in layers}
    total_steps = cfg.total_tokens // cfg.batch_tokens
    base_lr = cfg.lr if cfg.lr is not None else default_lr(d_sae)
    pos = {"step": 0, "chunk": 0, "step_in_chunk": 0, "chunk_start_batch": 0}
    ident = stable_hash(cfg.identity())
    ckpt = out_dir / CHECKPOINT if out_dir is not None else None
    initialised = False
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state["config_hash"] != ident:
            raise ValueError(f"{ckpt} belongs to a different configuration; use another out_dir or delete it "
                             f"(checkpoint config: {state['config']})")
        for L in layers:
            trainers[L].load_state_dict(state["saes"][L])
        pos = dict(state["position"])
        torch.set_rng_state(state["torch_rng"])
        initialised = True
        print(f"[train_sae] resuming from {ckpt} at step {pos['step']}/{total_steps}", file=sys.stderr)

    def save_checkpoint() -> None:
        if ckpt is None:
            return
        state = {"config_hash": ident, "config": json.dumps(cfg.identity(), default=str),
                 "saes": {L: t.state_dict() for L, t in trainers.items()}, "position": dict(pos),
                 "torch_rng": torch.get_rng_state()}
        with atomic_path(ckpt) as tmp:
            torch.save(state, tmp)

    log_path = out_dir / "train_log.jsonl" if out_dir is not None else None
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps * cfg.batch_tokens, initial=pos["step"] * cfg.batch_tokens, unit="tok",
               unit_scale=True, desc=f"train SAE L{','.join(map(str, layers))}", disable=not cfg.progress,
               mininterval=2.0, file=sys.stderr)
    steps_this_call = 0
    t0 = time.perf_counter()
    window: dict[int, list[dict[str, float]]] = {L: [] for L in layers}
    while pos["step"] < total_steps:
        chunk, next_batch = get_chunk(pos["chunk"], pos["chunk_start_batch"])
        n = chunk[layers[0]].shape[0]
        if not initialised:
            for L in layers:
                trainers[L].init_from_data(chunk[L])
            initialised = True
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + pos["chunk"]))
        steps_in_chunk = n // cfg.batch_tokens
        if steps_in_chunk == 0:
            raise ValueError(f"a data chunk holds {n} tokens, fewer than batch_tokens={cfg.batch_tokens}")
        while pos["step_in_chunk"] < steps_in_chunk and pos["step"] < total_steps:
            j = pos["step_in_chunk"]
            sel = perm[j * cfg.batch_tokens : (j + 1) * cfg.batch_tokens]
            lr = lr_at(pos["step"], total_steps, base_lr, cfg.warmup_steps, cfg.lr_end_frac)
            for L in layers:
                window[L].append(trainers[L].step(chunk[L][sel], lr))
            pos["step"] += 1
            pos["step_in_chunk"] += 1
            steps_this_call += 1
            bar.update(cfg.batch_tokens)
            if cfg.log_every and pos["step"] % cfg.log_every == 0:
                rec = {"step": pos["step"], "tokens": pos["step"] * cfg.batch_tokens, "lr": lr,
                       "seconds": round(time.perf_counter() - t0, 2)}
                for L in layers:
                    w = window[L]
                    rec[f"L{L}"] = {m: sum(r[m] for r in w) / len(w) for m in w[0]}
                    window[L] = []
                first = rec[f"L{layers[0]}"]
                bar.set_postfix(fve=f"{1 - first['fvu']:.3f}", dead=f"{first['dead_frac']:.3f}", refresh=False)
                if log_path is not None:
                    with open(log_path, "a", encoding="utf-8") as f:
                        f.write(json.dumps(rec) + "\n")
            if cfg.checkpoint_every and pos["step"] % cfg.checkpoint_every == 0:
                save_checkpoint()
            if cfg.stop_after_steps is not None and steps_this_call >= cfg.stop_after_steps \
                    and pos["step"] < total_steps:
                save_checkpoint()
                bar.close()
                return trainers
        if pos["step_in_chunk"] >= steps_in_chunk:
            pos.update(chunk=pos["chunk"] + 1, step_in_chunk=0, chunk_start_batch=next_batch)
    bar.close()
    save_checkpoint()
    return trainers


def _metadata(cfg: TrainSAEConfig, L: int, scale: float, extra: dict[str, Any]) -> dict[str, Any]:
    return {"layer": L, "hook_name": f"blocks.{L}.hook_resid_post", "hf_hook_name": f"model.layers.{L}",
            "model_name": cfg.model, "k": cfg.k, "trained_by": "igds.train_sae",
            "input_scale_folded": scale, "normalization": "x * input_scale_folded (folded into W_enc, W_dec, b_dec)",
            "norm_filter": cfg.norm_filter, "training_tokens": (cfg.total_tokens // cfg.batch_tokens) * cfg.batch_tokens,
            "seed": cfg.seed, **extra}


def _save_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def train_sae(cfg: TrainSAEConfig, lm: Any = None) -> dict[int, Path]:
    """Train one TopK SAE per layer in ``cfg.layers``; returns ``{layer: saved SAELens folder}``.

    ``lm`` may be an already loaded :class:`igds.model.LoadedModel` (else ``cfg.model``
    is loaded). Reruns with the same config resume from ``out_dir/checkpoint.pt``."""
    from .model import load_model

    if lm is None:
        lm = load_model(cfg.model, device=cfg.device)
    layers = list(cfg.layers)
    d_sae = _validate(cfg, lm.n_layers, lm.d_model)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "train_config.json", asdict(cfg))
    examples = load_training_examples(cfg, lm.tokenizer)
    stream = ActivationStream(lm, examples, layers, cfg)
    stream.calibrate()
    n_trunc = sum(e.truncated for e in examples)
    info: dict[str, Any] = {"examples": len(examples), "truncated_examples": n_trunc,
                            "example_tokens": sum(len(e.ids) for e in examples)}
    t_start = time.perf_counter()
    collect_seconds = 0.0

    if cfg.activation_tokens is not None:
        cache = _load_or_collect_cache(cfg, stream, layers, out_dir)
        collect_seconds = cache.pop("_seconds")  # type: ignore[arg-type]
        thresholds = cache.pop("_thresholds")  # type: ignore[arg-type]
        n_cache = cache[layers[0]].shape[0]
        info.update(activation_tokens=n_cache, epochs=round(cfg.total_tokens / n_cache, 2))

        def get_chunk(chunk_idx: int, start_batch: int) -> tuple[dict[int, torch.Tensor], int]:
            return cache, 0  # every epoch reads the same cache, through a new permutation
    else:
        thresholds = None

        def get_chunk(chunk_idx: int, start_batch: int) -> tuple[dict[int, torch.Tensor], int]:
            nonlocal collect_seconds
            t = time.perf_counter()
            acts, nxt = collect(stream.iter_from(start_batch), layers, cfg.buffer_tokens)
            collect_seconds += time.perf_counter() - t
            return acts, nxt

    trainers = _run(cfg, layers, lm.d_model, d_sae, get_chunk, out_dir, lm.device)
    thresholds = thresholds or stream.thresholds or {}
    wall = time.perf_counter() - t_start
    done = _checkpoint_step(out_dir) >= cfg.total_tokens // cfg.batch_tokens
    info.update(wall_seconds_this_call=round(wall, 1), collect_seconds_this_call=round(collect_seconds, 1),
                norm_thresholds={str(L): v for L, v in thresholds.items()})
    if not done:
        print(f"[train_sae] stopped at step {_checkpoint_step(out_dir)}; rerun to resume", file=sys.stderr)
        return {}
    paths = {}
    for L, tr in trainers.items():
        meta = _metadata(cfg, L, tr.scale, {"norm_threshold": thresholds.get(L, thresholds.get(str(L)))})  # type: ignore[arg-type]
        sae = tr.to_sae(meta)
        paths[L] = sae.save(out_dir / f"layer_{L}", dtype=_save_dtype(cfg.save_dtype))
    atomic_write_json(out_dir / "train_info.json", info)
    return paths


def export_checkpoint(out_dir: str | Path, dest: str | Path | None = None, save_dtype: str | None = None
                      ) -> dict[int, Path]:
    """Save the SAEs of an unfinished run as they stand in ``out_dir/checkpoint.pt``.

    For a look at a long run before it ends (the learning rate has not finished
    decaying, so a finished run will be better). Writes ``dest/layer_L`` (default
    ``out_dir/partial``); the step is recorded in ``metadata.training_tokens``."""
    out_dir = Path(out_dir)
    raw = json.loads((out_dir / "train_config.json").read_text())
    raw["adam_betas"] = tuple(raw["adam_betas"])
    cfg = TrainSAEConfig(**raw)
    state = torch.load(out_dir / CHECKPOINT, map_location="cpu", weights_only=True)
    step = int(state["position"]["step"])
    info_path = out_dir / CACHE_DIR / "meta.json"
    thresholds = json.loads(info_path.read_text())["thresholds"] if info_path.exists() else {}
    paths = {}
    for L, sd in state["saes"].items():
        d_sae, d_in = sd["W_dec"].shape
        tr = TopKTrainer(d_in, d_sae, cfg.k, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
        tr.load_state_dict(sd)
        meta = _metadata(cfg, int(L), tr.scale, {"norm_threshold": thresholds.get(str(L))})
        meta["training_tokens"] = step * cfg.batch_tokens
        sae = tr.to_sae(meta)
        folder = Path(dest) if dest is not None else out_dir / "partial"
        paths[int(L)] = sae.save(folder / f"layer_{L}", dtype=_save_dtype(save_dtype or cfg.save_dtype))
    return paths


def _checkpoint_step(out_dir: Path) -> int:
    ckpt = out_dir / CHECKPOINT
    if not ckpt.exists():
        return 0
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["position"]["step"])


def _load_or_collect_cache(cfg: TrainSAEConfig, stream: ActivationStream, layers: list[int], out_dir: Path
                           ) -> dict[Any, Any]:
    """Cache mode: the activation set, read back from ``out_dir/activation_cache`` when present."""
    import numpy as np

    cdir = out_dir / CACHE_DIR
    meta_path = cdir / "meta.json"
    key = stable_hash({k: v for k, v in cfg.identity().items()
                       if k in ("model", "layers", "data", "max_length", "use_chat_template", "text_field",
                                "norm_filter", "forward_batch_tokens", "forward_batch_size", "activation_tokens",
                                "seed")})
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key:
            cache: dict[Any, Any] = {L: torch.from_numpy(np.load(cdir / f"layer_{L}.npy")) for L in layers}
            cache["_seconds"] = 0.0
            cache["_thresholds"] = {int(L): v for L, v in meta["thresholds"].items()}
            print(f"[train_sae] reusing the activation cache in {cdir}", file=sys.stderr)
            return cache
    from tqdm.auto import tqdm

    t = time.perf_counter()
    bar = tqdm(total=cfg.activation_tokens, unit="tok", unit_scale=True, desc="collect activations",
               disable=not cfg.progress, mininterval=2.0, file=sys.stderr)
    acts, _ = collect(stream.iter_from(0), layers, int(cfg.activation_tokens or 0), bar=bar)
    bar.close()
    acts = {L: a[: cfg.activation_tokens].contiguous() for L, a in acts.items()}
    seconds = time.perf_counter() - t
    cdir.mkdir(parents=True, exist_ok=True)
    for L in layers:
        with atomic_path(cdir / f"layer_{L}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, acts[L].numpy())
    atomic_write_json(meta_path, {"key": key, "tokens": acts[layers[0]].shape[0],
                                  "thresholds": {str(L): v for L, v in (stream.thresholds or {}).items()},
                                  "seen": stream.n_seen, "dropped_by_norm": stream.n_dropped,
                                  "collect_seconds": round(seconds, 1),
                                  "tokens_per_second": round(stream.n_seen / max(seconds, 1e-9), 1)})
    return {**acts, "_seconds": seconds, "_thresholds": dict(stream.thresholds or {})}


def train_on_activations(acts: torch.Tensor | dict[int, torch.Tensor], cfg: TrainSAEConfig,
                         out_dir: str | Path | None = None, device: str | torch.device = "cpu") -> dict[int, SAE]:
    """Train on activations you already hold: ``(N, d)`` (layer ``cfg.layers[0]``) or ``{layer: (N, d)}``.

    The tensor is the cache (epochs, seeded permutations); ``out_dir`` enables
    checkpoints and resume. No norm filter is applied here. Returns ``{layer: SAE}``."""
    if isinstance(acts, torch.Tensor):
        if len(cfg.layers) != 1:
            raise ValueError("a single activation tensor needs exactly one layer in cfg.layers")
        acts = {cfg.layers[0]: acts}
    layers = list(cfg.layers)
    if set(acts) != set(layers):
        raise ValueError(f"activations are given for layers {sorted(acts)}, config asks for {layers}")
    n, d_in = acts[layers[0]].shape
    if n == 0:
        raise ValueError("no activations to train on (empty tensor)")
    d_sae = _validate(cfg, None, d_in)
    if n < cfg.batch_tokens:
        raise ValueError(f"{n} activation tokens, fewer than batch_tokens={cfg.batch_tokens}")
    data = {L: a.float().cpu() for L, a in acts.items()}
    od = Path(out_dir) if out_dir is not None else None
    if od is not None:
        od.mkdir(parents=True, exist_ok=True)
    trainers = _run(cfg, layers, d_in, d_sae, lambda c, b: (data, 0), od, torch.device(device))
    return {L: t.to_sae(_metadata(cfg, L, t.scale, {})) for L, t in trainers.items()}


# ====================================================================== command line
def build_parser() -> argparse.ArgumentParser:
    d = TrainSAEConfig()
    p = argparse.ArgumentParser(prog="python -m igds.train_sae", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=d.model)
    p.add_argument("--layers", default="15", help="comma-separated layers (layer L = output of block L)")
    p.add_argument("--data", action="append", required=True,
                   help="data file; repeatable; options after '::', e.g. FILE::limit=3000,prompt_field=q,response_field=a")
    p.add_argument("--out", default=d.out_dir, help="output folder (SAEs in OUT/layer_L, checkpoint, log)")
    p.add_argument("--d-sae", type=int, default=None, help="width (default: expansion factor x d_model)")
    p.add_argument("--expansion-factor", type=int, default=d.expansion_factor)
    p.add_argument("-k", "--k", type=int, default=d.k)
    p.add_argument("--total-tokens", type=int, default=d.total_tokens)
    p.add_argument("--batch-tokens", type=int, default=d.batch_tokens)
    p.add_argument("--activation-tokens", type=int, default=None,
                   help="cache mode: collect this many activation tokens once and train epochs over them")
    p.add_argument("--buffer-tokens", type=int, default=d.buffer_tokens)
    p.add_argument("--lr", type=float, default=None, help="default: 2e-4 / sqrt(d_sae / 16384)")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--lr-end-frac", type=float, default=d.lr_end_frac)
    p.add_argument("--auxk-alpha", type=float, default=d.auxk_alpha)
    p.add_argument("--dead-tokens", type=int, default=d.dead_tokens)
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--norm-filter", type=float, default=d.norm_filter)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--save-dtype", default=d.save_dtype, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--device", default=d.device)
    p.add_argument("--stop-after-steps", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> TrainSAEConfig:
    return TrainSAEConfig(
        model=args.model, layers=[int(x) for x in str(args.layers).split(",") if x.strip()], data=list(args.data),
        out_dir=args.out, d_sae=args.d_sae, expansion_factor=args.expansion_factor, k=args.k,
        total_tokens=args.total_tokens, batch_tokens=args.batch_tokens, activation_tokens=args.activation_tokens,
        buffer_tokens=args.buffer_tokens, lr=args.lr, warmup_steps=args.warmup_steps, lr_end_frac=args.lr_end_frac,
        auxk_alpha=args.auxk_alpha, dead_tokens=args.dead_tokens, max_length=args.max_length,
        use_chat_template=not args.no_chat_template, norm_filter=args.norm_filter, seed=args.seed,
        checkpoint_every=args.checkpoint_every, save_dtype=args.save_dtype, device=args.device,
        stop_after_steps=args.stop_after_steps, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        paths = train_sae(config_from_args(args))
    except (ValueError, FileNotFoundError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for L, path in paths.items():
        print(f"layer {L}: {path}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
