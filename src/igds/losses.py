"""Teacher-forced token losses: the one cross-entropy of the house.

The causal filter (:mod:`igds.intervention`), the reference loss (:mod:`igds.evaluate`),
the Loss/IFD selectors (:mod:`igds.selectors`), SAE evaluation (:mod:`igds.eval_sae`)
and fine-tuning (:mod:`igds.finetune`) all turn final hidden states into logits through
:func:`postprocess_logits`, so the loss that validates a feature is the loss that training
lowers, on every model family.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .activations import StopForward, block_hidden
from .data import TokenizedExample
from .model import LoadedModel


def target_mask(examples: Sequence[TokenizedExample], width: int, part: str = "response") -> torch.Tensor:
    """(B, width) bool: positions whose *next* token is a target of ``part``.

    Position t predicts token t+1, so the response tokens ``[prompt_len, len)`` are
    predicted from positions ``[prompt_len - 1, len - 1)``."""
    mask = torch.zeros((len(examples), width), dtype=torch.bool)
    for i, e in enumerate(examples):
        if part == "response":
            lo, hi = max(e.prompt_len - 1, 0), len(e.ids) - 1
        elif part == "all":
            lo, hi = 0, len(e.ids) - 1
        else:
            raise ValueError(f"part must be 'response' or 'all', got {part!r}")
        mask[i, lo:hi] = True
    return mask


def postprocess_logits(config: Any, logits: torch.Tensor) -> torch.Tensor:
    """What a model's own forward does to its LM-head output, read from its ``config``.

    Cohere multiplies by ``logit_scale``, Granite divides by ``logits_scaling``, and
    Gemma-2/3 soft-cap with ``final_logit_softcapping``; models without these fields
    (Llama, SmolLM2, ...) get ``logits`` back untouched."""
    if getattr(config, "logit_scale", None):  # Cohere
        logits = logits * config.logit_scale
    if getattr(config, "logits_scaling", None):  # Granite
        logits = logits / config.logits_scaling
    cap = getattr(config, "final_logit_softcapping", None)  # Gemma-2/3
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def _final_norm(lm: LoadedModel) -> nn.Module:
    norm, _ = lm.unembedding()
    if norm is None:
        raise ValueError(f"cannot find the final norm of {lm.name}")
    return norm


def logits_at(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              positions: torch.Tensor) -> torch.Tensor:
    """Float logits only at ``positions`` (bool (B, S)), as a flat (n, vocab) tensor.

    The forward is stopped after the final norm so the LM head runs on the needed rows only.
    Gradients follow the caller: every scorer calls this under ``torch.no_grad``, and
    :mod:`igds.attribution` differentiates the loss through it."""
    store: dict[str, torch.Tensor] = {}

    def hook(_m, _a, out):
        store["h"] = block_hidden(out)
        raise StopForward

    handle = _final_norm(lm).register_forward_hook(hook)
    try:
        lm.model(input_ids=input_ids.to(lm.device), attention_mask=attention_mask.to(lm.device), use_cache=False)
    except StopForward:
        pass
    finally:
        handle.remove()
    h = store["h"][positions.to(lm.device)]
    return postprocess_logits(lm.model.config, lm.model.get_output_embeddings()(h).float())


def token_ce(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             target: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """Next-token CE of the positions in ``target`` (bool (B, S)): flat (n,) in row-major order,
    or with ``reduction="sum"`` their sum (torch's own summation, not ``.sum()`` of the flat)."""
    logits = logits_at(lm, input_ids, attention_mask, target)
    nxt = torch.roll(input_ids.to(lm.device), shifts=-1, dims=1)[target.to(lm.device)]
    return F.cross_entropy(logits, nxt, reduction=reduction)


def masked_losses(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
    """Per-row mean next-token CE over the positions in ``target`` (B,), LM head on those rows only.

    Rows with no target positions get NaN, so they can never pass for a zero loss."""
    ce = token_ce(lm, input_ids, attention_mask, target)
    rows = torch.arange(input_ids.shape[0], device=lm.device).unsqueeze(1).expand_as(target)[target.to(lm.device)]
    total = torch.zeros(input_ids.shape[0], device=lm.device).index_add_(0, rows, ce)
    count = target.sum(dim=1).to(lm.device)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))
