"""Reference computations the tests check the product against (never imported by igds)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_losses(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy per row over the positions in ``mask`` (B,), from full logits.

    Rows with no target positions get NaN, so they can never pass for a zero loss."""
    targets = input_ids[:, 1:]
    lp = logits[:, :-1].float()
    m = mask[:, :-1].to(lp.device)
    ce = F.cross_entropy(lp.reshape(-1, lp.shape[-1]), targets.reshape(-1).to(lp.device),
                         reduction="none").view(targets.shape)
    total = (ce * m).sum(dim=1)
    count = m.sum(dim=1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))
