"""Teacher-forced token losses, shared by the causal filter, the evaluators and baselines."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .data import TokenizedExample


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


def sequence_losses(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy per row over the positions in ``mask`` (B,).

    Rows with no target positions get NaN, so they can never pass for a zero loss."""
    targets = input_ids[:, 1:]
    lp = logits[:, :-1].float()
    m = mask[:, :-1].to(lp.device)
    ce = F.cross_entropy(lp.reshape(-1, lp.shape[-1]), targets.reshape(-1).to(lp.device),
                         reduction="none").view(targets.shape)
    total = (ce * m).sum(dim=1)
    count = m.sum(dim=1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))
