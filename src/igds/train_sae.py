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
  them (``out_dir/activation_cache``, or the shared folder ``activation_cache``, which
  later runs with other SAE settings or fewer layers reuse), and train ``total_tokens`` over them in
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
``igds train-sae --help`` for the command line (flags from :class:`igds.config.TrainSAEConfig`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .artifacts import atomic_path, atomic_write_json, stable_hash
from .config import TrainSAEConfig
from .model import load_model
from .sae import SAE
from .sae_data import ActivationStream, collect, load_training_examples

CHECKPOINT = "checkpoint.pt"
CACHE_DIR = "activation_cache"


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
    info_path = _cache_dir(cfg, out_dir) / "meta.json"
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


def _cache_dir(cfg: TrainSAEConfig, out_dir: Path) -> Path:
    return Path(cfg.activation_cache) if cfg.activation_cache else out_dir / CACHE_DIR


def _checkpoint_step(out_dir: Path) -> int:
    ckpt = out_dir / CHECKPOINT
    if not ckpt.exists():
        return 0
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["position"]["step"])


def _load_or_collect_cache(cfg: TrainSAEConfig, stream: ActivationStream, layers: list[int], out_dir: Path
                           ) -> dict[Any, Any]:
    """Cache mode: the activation set, read back from ``cfg.activation_cache`` (default
    ``out_dir/activation_cache``) when it was collected from the same data and settings for these
    layers or more; else collected (again). A set collected for more layers holds the tokens the
    norm filter kept at *every* collected layer, so it may hold fewer than a collection of these
    layers alone would (none differ when no token exceeded a threshold, as ``dropped_by_norm`` says)."""
    cdir = _cache_dir(cfg, out_dir)
    meta_path = cdir / "meta.json"
    key = stable_hash({k: v for k, v in cfg.identity().items()
                       if k in ("model", "data", "max_length", "use_chat_template", "text_field",
                                "norm_filter", "forward_batch_tokens", "forward_batch_size", "activation_tokens",
                                "seed")})
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and set(layers) <= set(meta.get("layers", [])):
            cache: dict[Any, Any] = {L: torch.from_numpy(np.load(cdir / f"layer_{L}.npy")) for L in layers}
            cache["_seconds"] = 0.0
            cache["_thresholds"] = {int(L): v for L, v in meta["thresholds"].items() if int(L) in layers}
            print(f"[train_sae] reusing the activation cache in {cdir} (layers {meta['layers']})", file=sys.stderr)
            return cache
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
    atomic_write_json(meta_path, {"key": key, "layers": layers, "tokens": acts[layers[0]].shape[0],
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
