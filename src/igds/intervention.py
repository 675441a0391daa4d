"""The error-preserving SAE edit, and re-running only the blocks above it.

Amplifying feature ``j`` by ``alpha`` at layer L replaces the residual ``h`` with

    h' = dec(f') + err,  err = h - dec(f),  f'_j = alpha * f_j
       = h + (alpha - 1) * f_j(h) * W_dec[j]

so everything the SAE fails to reconstruct is kept and only feature ``j`` changes.
With ``alpha = 1`` the model is untouched; ``alpha = 0`` removes the feature.

Where the edit may act (:func:`editable_positions`): never on special tokens (BOS, EOS,
padding, chat-template markers), whatever the caller's mask says, since the SAE never
saw them in training; and, with a norm guard, not on positions whose residual norm is
an outlier for its example (attention sinks, whose norm can be orders of magnitude
above the rest and whose SAE codes are out of distribution; method audit §3.6).

Because the edit happens at layer L, the residual below L is the same for every
feature: :func:`replay_from` computes it once and swaps blocks ``0..L`` for
pass-through modules that hand back the (edited) cached residual, so each edited
forward costs only the blocks above L. Several features are edited in one forward
by stacking copies of the batch. The loss is :func:`igds.losses.masked_losses`, which
applies the LM head only at the positions it needs.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from .activations import block_hidden, residuals
from .losses import masked_losses
from .model import LoadedModel
from .sae import SAE


class _Replay(nn.Module):
    """Stands in for a decoder block: returns its input, or a cached residual."""

    def __init__(self, original: nn.Module, replacement: torch.Tensor | None, as_tuple: bool):
        super().__init__()
        self.replacement = replacement
        self.as_tuple = as_tuple
        # Some model forwards read per-layer attributes (e.g. sliding-window type).
        for attr in ("attention_type", "layer_idx", "is_sliding"):
            if hasattr(original, attr):
                setattr(self, attr, getattr(original, attr))

    def forward(self, hidden_states: torch.Tensor | None = None, *args, **kwargs):
        if hidden_states is None:
            hidden_states = args[0]
        out = hidden_states if self.replacement is None else self.replacement
        return (out,) if self.as_tuple else out


@contextmanager
def replay_from(lm: LoadedModel, layer: int, residual: torch.Tensor, as_tuple: bool = False) -> Iterator[None]:
    """Within the context, a forward skips blocks ``0..layer`` and starts from ``residual``.

    ``as_tuple`` mirrors the block's own return type (tuple for GPT-2-style blocks)."""
    blocks = lm.blocks
    saved = [blocks[i] for i in range(layer + 1)]
    try:
        for i in range(layer + 1):
            blocks[i] = _Replay(saved[i], residual if i == layer else None, as_tuple)
        yield
    finally:
        for i, block in enumerate(saved):
            blocks[i] = block


def editable_positions(h: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       edit_mask: torch.Tensor, special_ids: Sequence[int] = (),
                       norm_guard: float | None = None) -> torch.Tensor:
    """``edit_mask`` (B, S) without special tokens and padding, and with ``norm_guard`` also
    without positions whose residual L2 norm exceeds ``norm_guard`` times the median norm
    over that example's non-special positions."""
    ids = input_ids.to(h.device)
    ordinary = attention_mask.to(h.device).bool()
    if special_ids:
        ordinary &= ~torch.isin(ids, torch.tensor(list(special_ids), dtype=ids.dtype, device=ids.device))
    keep = edit_mask.to(h.device).bool() & ordinary
    if norm_guard is not None:
        norms = h.float().norm(dim=-1)
        median = norms.masked_fill(~ordinary, float("nan")).nanmedian(dim=1).values  # (B,)
        keep &= ~(norms > norm_guard * median.unsqueeze(1))
    return keep


def amplified_residuals(sae: SAE, h: torch.Tensor, features: Sequence[int], alpha: float | Sequence[float],
                        edit_mask: torch.Tensor) -> torch.Tensor:
    """Stack one edited copy of ``h`` (B, S, d) per feature: (len(features) * B, S, d).

    ``alpha`` is one factor for every feature, or one per feature."""
    acts = sae.encode(h, features)  # (B, S, F)
    dirs = torch.stack([sae.decoder_direction(j) for j in features])  # (F, d)
    factors = torch.as_tensor(alpha, dtype=acts.dtype, device=acts.device).expand(len(features))
    scale = sae.output_scale(h)
    acts = acts * edit_mask.unsqueeze(-1).to(acts.dtype)
    delta = ((factors - 1.0)[:, None, None, None] * acts.permute(2, 0, 1).unsqueeze(-1)
             * dirs[:, None, None, :])  # (F, B, S, d)
    if isinstance(scale, torch.Tensor):
        delta = delta * scale.unsqueeze(0)
    return (h.unsqueeze(0) + delta.to(h.dtype)).reshape(-1, *h.shape[1:])


Edit = tuple[int, float]  # (feature, alpha)


@torch.no_grad()
def edit_losses(lm: LoadedModel, sae: SAE, layer: int, edits: Sequence[Edit], input_ids: torch.Tensor,
                attention_mask: torch.Tensor, target: torch.Tensor, edit_mask: torch.Tensor, chunk: int = 8,
                cached_prefix: bool = True, special_ids: Sequence[int] = (),
                norm_guard: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of one batch unedited and under each ``(feature, alpha)`` edit, ``chunk`` edits per forward.

    The edit acts on :func:`editable_positions` of ``edit_mask``. Returns ``(base (B,), edited (E, B))``."""
    B = input_ids.shape[0]
    kind: list[bool] = []
    probe = lm.blocks[layer].register_forward_hook(lambda _m, _a, o: kind.append(isinstance(o, tuple)))
    try:
        h = residuals(lm, input_ids, attention_mask, [layer])[layer]
    finally:
        probe.remove()
    as_tuple = kind[0]
    where = editable_positions(h, input_ids, attention_mask, edit_mask, special_ids, norm_guard)
    if cached_prefix:
        with replay_from(lm, layer, h, as_tuple):
            base = masked_losses(lm, input_ids, attention_mask, target)
    else:
        base = masked_losses(lm, input_ids, attention_mask, target)
    out = torch.empty(len(edits), B, device=lm.device)
    for start in range(0, len(edits), chunk):
        group = list(edits[start:start + chunk])
        n = len(group)
        feats, alphas = [j for j, _ in group], [a for _, a in group]
        ids, mask, tgt = input_ids.repeat(n, 1), attention_mask.repeat(n, 1), target.repeat(n, 1)
        if cached_prefix:
            edited = amplified_residuals(sae, h, feats, alphas, where)
            with replay_from(lm, layer, edited, as_tuple):
                losses = masked_losses(lm, ids, mask, tgt)
        else:
            losses = _naive_losses(lm, sae, layer, group, ids, mask, tgt, where, B)
        out[start:start + n] = losses.view(n, B)
    return base, out


def feature_effects(lm: LoadedModel, sae: SAE, layer: int, features: Sequence[int], input_ids: torch.Tensor,
                    attention_mask: torch.Tensor, target: torch.Tensor, edit_mask: torch.Tensor, alpha: float,
                    chunk: int = 8, cached_prefix: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss of one batch before and after amplifying each feature by ``alpha``.

    Returns ``(base (B,), amplified (F, B))``."""
    return edit_losses(lm, sae, layer, [(j, alpha) for j in features], input_ids, attention_mask, target,
                       edit_mask, chunk, cached_prefix)


def _naive_losses(lm: LoadedModel, sae: SAE, layer: int, group: list[Edit], ids: torch.Tensor,
                  mask: torch.Tensor, tgt: torch.Tensor, where: torch.Tensor, batch: int) -> torch.Tensor:
    """The same edits applied by a hook inside a full forward (reference and benchmark).

    ``where`` is the (batch, S) mask of editable positions, the same for every edit."""

    def hook(_m, _a, output):
        h = block_hidden(output)
        rows = []
        for i, (j, alpha) in enumerate(group):
            sl = slice(i * batch, (i + 1) * batch)
            rows.append(amplified_residuals(sae, h[sl], [j], alpha, where.to(h.device)))
        edited = torch.cat(rows)
        return (edited,) + tuple(output[1:]) if isinstance(output, tuple) else edited

    handle = lm.blocks[layer].register_forward_hook(hook)
    try:
        return masked_losses(lm, ids, mask, tgt)
    finally:
        handle.remove()
