"""Fine-tune a causal LM on selected examples: LoRA (peft) or full, with the HF Trainer.

The loss counts response tokens only: prompts are tokenised with
:func:`igds.data.tokenize_example`, exactly as feature discovery and scoring saw
them, and every prompt and padding position gets label ``-100``.

Training goes through :class:`transformers.Trainer`, so ``accelerate launch`` and
``torchrun`` work unchanged. On CPU the expensive part of a small model's step is the
LM head over the whole vocabulary at every position; :class:`ResponseOnlyLoss`
computes logits only at the positions that predict a response token, which gives the
same loss (and gradients) as the full-logits loss (checked in ``tests/test_finetune.py``)
for a fraction of the head's cost.

Outputs under ``out_dir``::

    adapter/        peft adapter (LoRA) - or model/ (full fine-tuning, with tokenizer)
    finetune.json   config, example / token counts, train loss, steps, tokens/s, seconds
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .artifacts import atomic_dir, atomic_write_json
from .config import FinetuneConfig
from .data import Example, tokenize_example
from .losses import postprocess_logits
from .model import LoadedModel, load_model

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
MODEL_DIR = "model"


# --------------------------------------------------------------------- data
@dataclass
class TrainData:
    """Tokenised training rows plus the counts finetune.json reports."""

    rows: list[dict[str, Any]]
    n_examples: int
    n_truncated: int
    n_dropped: int  # no response token left after truncation
    n_tokens: int
    n_response_tokens: int


def build_train_data(tokenizer: Any, examples: Sequence[Example], max_length: int,
                     use_chat_template: bool = True) -> TrainData:
    """Tokenise (prompt, response) pairs; keep the prompt length to mask it later."""
    rows: list[dict[str, Any]] = []
    n_trunc = n_drop = n_tok = n_resp = 0
    for ex in examples:
        t = tokenize_example(tokenizer, ex, max_length=max_length, use_chat_template=use_chat_template)
        n_trunc += int(t.truncated)
        if len(t.ids) <= t.prompt_len:  # truncation removed the whole response: nothing to learn
            n_drop += 1
            continue
        rows.append({"input_ids": t.ids, "prompt_len": t.prompt_len})
        n_tok += len(t.ids)
        n_resp += len(t.ids) - t.prompt_len
    return TrainData(rows, len(examples), n_trunc, n_drop, n_tok, n_resp)


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.rows[i]


@dataclass
class ResponseCollator:
    """Right-pad a batch; labels are the token ids on response tokens, -100 elsewhere."""

    pad_token_id: int

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, r in enumerate(rows):
            n, p = len(r["input_ids"]), int(r["prompt_len"])
            ids[i, :n] = torch.as_tensor(r["input_ids"], dtype=torch.long)
            mask[i, :n] = 1
            labels[i, p:n] = ids[i, p:n]  # token t is predicted from position t-1 (HF shifts)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# --------------------------------------------------------------------- loss
def _causal_lm(model: nn.Module) -> nn.Module:
    """The HF *ForCausalLM inside a peft wrapper (LoRA layers are injected in place)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class ResponseOnlyLoss(nn.Module):
    """Wrap a causal LM so that its forward returns the response-token loss, computing
    logits only where a response token is predicted.

    Everything runs inside this module's ``forward`` so that DDP/FSDP wrappers built by
    the Trainer see a normal forward pass. The loss contract matches HF's causal-LM loss:
    shifted labels, ``-100`` ignored, sum divided by ``num_items_in_batch`` when the
    Trainer passes it (correct under gradient accumulation), the mean otherwise.
    Logit soft-capping (Gemma-2) and logit scales (Cohere, Granite) are applied as the
    models themselves do, by :func:`igds.losses.postprocess_logits` like every other loss."""

    accepts_loss_kwargs = True
    loss_type = "ForCausalLM"  # lets the Trainer count shifted labels for num_items_in_batch

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    @property
    def config(self) -> Any:
        return self.lm.config

    def gradient_checkpointing_enable(self, **kw: Any) -> None:
        self.lm.gradient_checkpointing_enable(**kw)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                num_items_in_batch: torch.Tensor | int | None = None, **_: Any) -> dict[str, torch.Tensor]:
        causal = _causal_lm(self.lm)
        hidden = causal.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                      use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        keep = targets.ne(-100)
        h = hidden[:, :-1][keep]  # (n_targets, d): only positions that predict a response token
        logits = postprocess_logits(causal.config, causal.get_output_embeddings()(h).float())
        total = F.cross_entropy(logits, targets[keep], reduction="sum")
        denom = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp_min(1)
        if torch.is_tensor(denom):
            denom = denom.to(total.device)
        return {"loss": total / denom}


# --------------------------------------------------------------------- progress
def _tokens_per_s_callback() -> Any:
    from transformers import TrainerCallback

    class TokensPerSecond(TrainerCallback):
        """Log non-padding input tokens per second between log steps (and overall)."""

        def __init__(self) -> None:
            self.t0 = self.t_last = time.perf_counter()
            self.tok_last = 0
            self.history: list[dict[str, float]] = []

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            self.t0 = self.t_last = time.perf_counter()
            self.tok_last = 0

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            now, seen = time.perf_counter(), int(state.num_input_tokens_seen or 0)
            rate = (seen - self.tok_last) / max(now - self.t_last, 1e-9)
            self.t_last, self.tok_last = now, seen
            entry = {"step": state.global_step, "tokens": seen, "tokens_per_s": round(rate, 1)}
            if logs and "loss" in logs:
                entry["loss"] = float(logs["loss"])
            self.history.append(entry)
            if args.disable_tqdm is False and state.is_world_process_zero:
                log.info("step %d/%d  loss %s  %.0f tok/s", state.global_step, state.max_steps,
                         entry.get("loss", "-"), rate)

    return TokensPerSecond()


# --------------------------------------------------------------------- training
@dataclass
class TrainedModel:
    """A fine-tuned model ready for evaluation (LoRA merged), its stats and where it was saved."""

    lm: LoadedModel
    stats: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _resolve_layers(layers: list[int] | None, n_layers: int) -> list[int] | None:
    if layers is None:
        return None
    out = sorted({int(x) + n_layers if int(x) < 0 else int(x) for x in layers})
    bad = [x for x in out if not 0 <= x < n_layers]
    if bad:
        raise ValueError(f"finetune.layers_to_transform: {bad} out of range for {n_layers} blocks")
    return out


def _block_linear_names(lm: LoadedModel) -> list[str]:
    """Leaf names of the nn.Linear modules inside the decoder blocks ("all-linear", spelled
    out: peft needs a list once ``layers_to_transform`` is set)."""
    return sorted({name.rsplit(".", 1)[-1] for block in lm.blocks for name, mod in block.named_modules()
                   if isinstance(mod, nn.Linear)})


def _train_dtype(cfg: FinetuneConfig, device: torch.device) -> tuple[bool, bool]:
    """(bf16, fp16) mixed-precision flags for TrainingArguments."""
    if cfg.dtype in ("fp32", "float32"):
        return False, False
    if cfg.dtype in ("bf16", "bfloat16"):
        return True, False
    if cfg.dtype in ("fp16", "float16"):
        return False, True
    if cfg.dtype != "auto":
        raise ValueError(f"finetune.dtype must be auto, fp32, bf16 or fp16, got {cfg.dtype!r}")
    # bf16 on CPU runs several times slower than fp32 (our timing on 2 CPU cores; ModelConfig.dtype)
    return device.type == "cuda" and torch.cuda.is_bf16_supported(), False


def _save_atomic(obj: Any, dest: Path, tokenizer: Any = None) -> None:
    """save_pretrained into a temporary folder, then rename: a killed run leaves no half adapter."""
    with atomic_dir(dest) as tmp:
        obj.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)


def train_model(lm_or_name: LoadedModel | str, examples: Sequence[Example], cfg: FinetuneConfig | None = None,
                out_dir: str | Path | None = None) -> TrainedModel:
    """Fine-tune a copy of the model (the caller's model is never modified).

    Returns the trained model (LoRA merged into the weights, eval mode) with its stats;
    with ``cfg.save`` and an ``out_dir`` the adapter / model is saved there first."""
    from transformers import Trainer, TrainingArguments, set_seed

    cfg = cfg or FinetuneConfig()
    if cfg.equal_steps:
        raise ValueError("finetune.equal_steps sets each arm's steps from Full's in `igds experiment`; "
                         "for one fine-tuning run give finetune.max_steps or finetune.epochs")
    base = load_model(lm_or_name) if isinstance(lm_or_name, str) else lm_or_name
    tok = base.tokenizer
    if getattr(tok, "pad_token_id", None) is None:
        raise ValueError(f"the tokenizer of {base.name} has no pad token; set one before fine-tuning")
    data = build_train_data(tok, examples, cfg.max_length, cfg.use_chat_template)
    if not data.rows:
        raise ValueError(f"no trainable examples: {data.n_dropped} of {data.n_examples} lost every response "
                         f"token to max_length={cfg.max_length}")

    set_seed(cfg.seed)  # LoRA A matrices are initialised randomly
    model = base.model if isinstance(lm_or_name, str) else copy.deepcopy(base.model)
    model.train()
    n_trainable = n_total = 0
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        layers = _resolve_layers(cfg.layers_to_transform, base.n_layers)
        targets = cfg.target_modules
        if layers is not None and targets == "all-linear":
            targets = _block_linear_names(base)
        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=targets, layers_to_transform=layers,
                          bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, lcfg)
    for p in model.parameters():
        n_total += p.numel()
        n_trainable += p.numel() if p.requires_grad else 0
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if cfg.method == "lora":
            model.enable_input_require_grads()
    trained_module: nn.Module = ResponseOnlyLoss(model) if cfg.response_logits_only else model

    bf16, fp16 = _train_dtype(cfg, base.device)
    work = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="igds-ft-"))
    args = TrainingArguments(
        output_dir=str(work / "trainer"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        warmup_steps=cfg.warmup_ratio,  # a float < 1 is a ratio of the total steps in transformers 5
        lr_scheduler_type=cfg.lr_scheduler,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        data_seed=cfg.seed,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        remove_unused_columns=False,  # the collator needs prompt_len
        include_num_input_tokens_seen="non_padding",
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=not cfg.progress,
        bf16=bf16,
        fp16=fp16,
        use_cpu=base.device.type == "cpu",
        dataloader_pin_memory=base.device.type == "cuda",
    )
    speed = _tokens_per_s_callback()
    trainer = Trainer(model=trained_module, args=args, train_dataset=ListDataset(data.rows),
                      data_collator=ResponseCollator(int(tok.pad_token_id)), callbacks=[speed])
    t0 = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t0
    tokens_seen = int(trainer.state.num_input_tokens_seen or 0)
    model.eval()

    stats = {
        "model": base.name,
        "config": asdict(cfg),
        "learning_rate": cfg.lr,
        "n_examples": data.n_examples,
        "n_trained": len(data.rows),
        "n_truncated": data.n_truncated,
        "n_dropped": data.n_dropped,
        "n_tokens": data.n_tokens,
        "n_response_tokens": data.n_response_tokens,
        "n_parameters": n_total,
        "n_trainable": n_trainable,
        "steps": int(out.global_step),
        "train_loss": float(out.training_loss) if out.training_loss is not None else math.nan,
        "tokens_seen": tokens_seen,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens_seen / max(seconds, 1e-9), 1),
        "log": speed.history,
    }
    path: Path | None = None
    if cfg.save and out_dir is not None:
        if cfg.method == "lora":
            path = work / ADAPTER_DIR
            _save_atomic(model, path)
        else:
            path = work / MODEL_DIR
            _save_atomic(model, path, tokenizer=tok)
    if out_dir is not None:
        atomic_write_json(work / "finetune.json", {**stats, "path": str(path) if path else None})
    shutil.rmtree(work / "trainer", ignore_errors=True)
    if out_dir is None:
        shutil.rmtree(work, ignore_errors=True)

    merged = model.merge_and_unload() if cfg.method == "lora" else model
    merged.eval()
    suffix = f"+{cfg.method}" if path is None else f"+{path.parent.name}"
    trained = LoadedModel(model=merged, tokenizer=tok, name=f"{base.name}{suffix}", device=base.device,
                          dtype=base.dtype)
    return TrainedModel(lm=trained, stats=stats, path=path)


def finetune(lm_or_name: LoadedModel | str, examples: Sequence[Example], cfg: FinetuneConfig | None = None,
             out_dir: str | Path = "finetune") -> Path:
    """Fine-tune and save; returns the adapter folder (LoRA) or model folder (full).

    Load it back for evaluation with :func:`load_finetuned`."""
    cfg = cfg or FinetuneConfig()
    if not cfg.save:
        raise ValueError("finetune() saves its result; use train_model() for an unsaved in-memory model")
    result = train_model(lm_or_name, examples, cfg, out_dir)
    assert result.path is not None
    return result.path


def load_finetuned(base: LoadedModel | str, path: str | Path, merge: bool = True) -> LoadedModel:
    """Base model + adapter (merged for fast generation), or a fully fine-tuned model folder.

    ``path`` may be the adapter/model folder or the ``out_dir`` given to :func:`finetune`."""
    path = Path(path)
    if not (path / "adapter_config.json").exists() and not (path / "config.json").exists():
        for sub in (ADAPTER_DIR, MODEL_DIR):
            if (path / sub).exists():
                path = path / sub
                break
    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        lm = load_model(base) if isinstance(base, str) else base
        model = PeftModel.from_pretrained(copy.deepcopy(lm.model), str(path))
        model = model.merge_and_unload() if merge else model
        model.eval()
        return LoadedModel(model=model, tokenizer=lm.tokenizer, name=f"{lm.name}+{path.parent.name}",
                           device=lm.device, dtype=lm.dtype)
    if (path / "config.json").exists():
        device = base.device if isinstance(base, LoadedModel) else None
        return load_model(str(path), device=device)
    raise FileNotFoundError(f"{path}: neither a peft adapter (adapter_config.json) nor a model (config.json)")
