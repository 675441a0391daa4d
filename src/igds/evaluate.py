"""Evaluating a model on a task: batched greedy generation and the teacher-forced reference loss.

The metrics themselves (names, scales, scoring of predictions) live in :mod:`igds.metrics`.
``ref_loss`` (nats/token, lower is better) is the mean cross-entropy of the reference
response under teacher forcing (:func:`igds.losses.masked_losses`), averaged over
examples. It needs no generation and varies far less than generated-text metrics on
small evaluation sets.

Generation (ours): greedy decoding (``do_sample=False``, one beam) with left padding,
in batches of prompts sorted by length (stable by position), stopping at the
tokenizer's / generation config's EOS ids or after ``max_new_tokens``. Output is
decoded without special tokens and stripped. Batched output equals one-by-one output
up to floating-point ties (tested on the tiny model).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Sequence

import numpy as np
import torch

from .activations import length_batches, pad
from .data import Example, TokenizedExample, tokenize_example
from .losses import masked_losses, target_mask
from .metrics import GENERATION_METRICS, score_predictions
from .model import LoadedModel, pad_id
from .tasks import Task


# ====================================================================== generation
def _eos_ids(lm: LoadedModel) -> list[int]:
    ids: set[int] = set()
    tok_eos = getattr(lm.tokenizer, "eos_token_id", None)
    if tok_eos is not None:
        ids.add(int(tok_eos))
    cfg_eos = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    if isinstance(cfg_eos, int):
        ids.add(cfg_eos)
    elif cfg_eos:
        ids.update(int(i) for i in cfg_eos)
    return sorted(ids)


def _as_example(p: Example | str, i: int) -> Example:
    if isinstance(p, Example):
        return p
    return Example(id=str(i), messages=[{"role": "user", "content": str(p)}], response="", record={},
                   dialect="prompt_completion", source="<prompts>", line=i + 1)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", disable=not enabled, leave=False, file=sys.stderr)


@torch.no_grad()
def greedy_generate(lm: LoadedModel, prompts: Sequence[Example | str], max_new_tokens: int = 256,
                    batch_size: int = 16, use_chat_template: bool = True, max_prompt_length: int | None = None,
                    progress: bool = False) -> list[str]:
    """Greedy completions of ``prompts`` (Examples, or plain user-message strings), in order.

    Prompts longer than ``max_prompt_length`` tokens keep their *last* tokens (the
    end of the instruction and the assistant header) - ours, so that generation still
    starts where an answer belongs."""
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    tok = lm.tokenizer
    exs = [_as_example(p, i) for i, p in enumerate(prompts)]
    ids = [tokenize_example(tok, ex, max_length=10**9, use_chat_template=use_chat_template,
                            with_response=False).ids for ex in exs]
    if max_prompt_length is not None:
        ids = [x[-max_prompt_length:] for x in ids]
    eos = _eos_ids(lm)
    fill = pad_id(tok, eos[0] if eos else 0)
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                               eos_token_id=eos or None, pad_token_id=fill)
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    out: list[str] = [""] * len(ids)
    bar = _progress(len(ids), "generating", progress)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = torch.full((len(idx), width), fill, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):  # left padding: every prompt ends at the last column
                input_ids[r, width - len(ids[i]):] = torch.tensor(ids[i], dtype=torch.long)
                mask[r, width - len(ids[i]):] = 1
            seqs = lm.model.generate(input_ids=input_ids.to(lm.device), attention_mask=mask.to(lm.device),
                                     generation_config=gen_cfg)
            for r, i in enumerate(idx):
                new = seqs[r, width:].tolist()
                cut = next((j for j, t in enumerate(new) if t in eos), len(new))
                out[i] = tok.decode(new[:cut], skip_special_tokens=True).strip()
            bar.update(len(idx))
    finally:
        bar.close()
    return out



# ====================================================================== teacher-forced loss
@torch.no_grad()
def token_losses(lm: LoadedModel, tokenized: Sequence[TokenizedExample], max_tokens: int = 8192,
                 max_batch: int = 16, progress: bool = False, desc: str = "reference loss") -> np.ndarray:
    """Mean next-token CE over each example's response tokens (``[prompt_len, len)``), (n,).

    Batches are length-bucketed and right-padded; padding never enters a loss (causal
    attention plus the attention mask keep it out of every real position, and only
    response targets are counted). Examples with no response token left get NaN."""
    out = np.full(len(tokenized), np.nan, dtype=np.float64)
    if not tokenized:
        return out
    bar = _progress(len(tokenized), desc, progress)
    try:
        for idx in length_batches([len(t.ids) for t in tokenized], max_tokens, max_batch):
            group = [tokenized[i] for i in idx]
            ids, mask = pad(group, pad_id(lm.tokenizer))
            target = target_mask(group, ids.shape[1], "response")
            if target.any():
                out[idx] = masked_losses(lm, ids, mask, target).float().cpu().numpy()
            bar.update(len(idx))
    finally:
        bar.close()
    return out


def reference_losses(lm: LoadedModel, examples: Sequence[Example], max_length: int = 1024,
                     use_chat_template: bool = True, max_tokens: int = 8192, max_batch: int = 16,
                     progress: bool = False) -> np.ndarray:
    """Teacher-forced loss of each example's reference response given its prompt, (n,)."""
    tokenized = [tokenize_example(lm.tokenizer, ex, max_length, use_chat_template) for ex in examples]
    return token_losses(lm, tokenized, max_tokens, max_batch, progress)


# ====================================================================== one task
def evaluate_task(lm: LoadedModel, task: Task, examples: Sequence[Example], generate: bool = True,
                  max_new_tokens: int | None = None, batch_size: int = 16, ref_loss: bool = True,
                  max_length: int = 1024, use_chat_template: bool = True, max_prompt_length: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Evaluate ``lm`` on ``examples`` of ``task`` (resolve a name with :func:`igds.tasks.get_task`).

    Returns ``{"task", "metrics": {name: mean}, "stats": {...}, "records": [...]}``; each
    record holds ``id``, ``prediction``, ``references``, ``gold``, ``scores`` (per-example
    metric values) and ``ref_loss``. ``metrics`` holds only metric values, so that it
    can go straight into results tables."""
    if not examples:
        raise ValueError(f"task {task.name!r}: no examples to evaluate")
    metrics: dict[str, float] = {}
    stats: dict[str, Any] = {"n": len(examples)}
    preds: list[str | None] = [None] * len(examples)
    per: list[dict[str, float]] = [{} for _ in examples]
    if generate and any(m in GENERATION_METRICS for m in task.metrics):
        t0 = time.perf_counter()
        preds = list(greedy_generate(lm, examples, max_new_tokens or task.max_new_tokens, batch_size,
                                     use_chat_template, max_prompt_length, progress))
        dt = time.perf_counter() - t0
        stats.update(generate_seconds=round(dt, 3), generate_examples_per_s=round(len(examples) / max(dt, 1e-9), 3))
        means, per = score_predictions(task, examples, preds)
        metrics.update(means)
    losses = np.full(len(examples), np.nan)
    if ref_loss:
        t0 = time.perf_counter()
        losses = reference_losses(lm, examples, max_length, use_chat_template, max_batch=batch_size,
                                  progress=progress)
        stats["ref_loss_seconds"] = round(time.perf_counter() - t0, 3)
        finite = losses[np.isfinite(losses)]
        metrics["ref_loss"] = float(finite.mean()) if len(finite) else math.nan
        stats["ref_loss_n"] = int(len(finite))
    records = [{"id": ex.id, "prediction": p, "references": task.references(ex), "gold": task.gold(ex),
                "scores": s, "ref_loss": None if math.isnan(l) else float(l)}
               for ex, p, s, l in zip(examples, preds, per, losses)]
    return {"task": task.name, "metrics": metrics, "stats": stats, "records": records}
