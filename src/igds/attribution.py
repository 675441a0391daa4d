"""Gradient attribution: every SAE feature's first-order effect on the reference loss, in one backward pass.

The causal filter (:mod:`igds.features`, :mod:`igds.intervention`) amplifies a feature
``j`` by ``alpha`` with the error-preserving edit, which at each edited position ``t``
moves the residual at the SAE's layer to

    h_t + (alpha - 1) * f_j(h_t) * s_t * d_j

(``d_j`` the decoder direction, ``s_t`` the SAE's output scale: 1 unless it normalises
its input). With ``L`` an example's reference-response loss (:func:`igds.losses.masked_losses`:
mean next-token cross-entropy over the response tokens and the EOS), the derivative of
``L`` along that edit at ``alpha = 1`` is ``sum_t f_j(h_t) * s_t * (grad_{h_t} L . d_j)``.
The **attribution** of feature ``j`` is its negative:

    a_j = - sum_t f_j(h_t) * s_t * (grad_{h_t} L . d_j)

**Sign:** positive means amplifying the feature lowers the loss (helps the task), the
sign of Stage 1b's ``mean_delta``. ``a_j`` is the linear (first-order) estimate of
"amplify feature ``j`` by a small amount": ``[L(1 - eps) - L(1 + eps)] / (2 eps)`` tends
to it as ``eps -> 0``. Unlike one finite step at ``alpha = 2`` it carries no curvature
term (method audit §3.5), and it costs one forward and one backward pass for every
feature of the dictionary at once (attribution patching; Marks et al. 2024, "Sparse
Feature Circuits").

The gradient is taken with respect to the residual at the SAE's layer only: the model's
weights are frozen while it runs, so nothing below that layer keeps a graph, and the
codes ``f`` come from the detached residual (nothing flows through the SAE). The full
forward runs (the loss needs the LM head), but the head is applied only at the response
positions. ``positions`` (:func:`igds.activations.count_mask`) says where the edit
would act; position 0 and special tokens never count (the SAE was not trained on them),
as in recall and scoring.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .activations import block_hidden, count_mask, length_batches, pad, to_device
from .data import TokenizedExample
from .intervention import editable_positions
from .losses import masked_losses, target_mask
from .model import LoadedModel, pad_id
from .sae import SAE


@dataclass(frozen=True)
class Screen:
    """The attribution of every feature of one SAE over a set of examples.

    ``per_example[i, j]`` is feature ``j``'s attribution on example ``i`` (rows in the
    caller's order; a row is NaN when the example has no response token to score).
    Every feature is measured on the same examples, so ``n`` is one number."""

    layer: int  # the decoder block whose output the SAE reads
    positions: str  # where the edit acts: all | prompt | response | content
    per_example: np.ndarray  # (n_examples, d_sae) float32
    mean: np.ndarray  # (d_sae,) mean over the examples with a finite attribution
    se: np.ndarray  # (d_sae,) standard error of that mean; NaN when n < 2
    n: int  # examples with a finite attribution

    @classmethod
    def of(cls, per_example: np.ndarray, layer: int, positions: str) -> "Screen":
        """Summarise a (n_examples, d_sae) attribution matrix."""
        ok = np.isfinite(per_example).all(axis=1)
        rows = per_example[ok].astype(np.float64)
        n = int(ok.sum())
        mean = rows.mean(axis=0) if n else np.full(per_example.shape[1], np.nan)
        se = rows.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.full(per_example.shape[1], np.nan)
        return cls(layer, positions, per_example, mean, se, n)

    @property
    def t(self) -> np.ndarray:
        """``mean / se`` per feature; 0 where ``se`` is 0 or NaN (a feature that never fires has mean 0, se 0)."""
        safe = np.where(self.se > 0, self.se, 1.0)
        return np.where(self.se > 0, self.mean / safe, 0.0)

    def ranked(self, k: int | None = None) -> list[int]:
        """Feature ids by ``t`` descending (ties by id): the ``k`` most helpful first."""
        order = np.lexsort((np.arange(len(self.mean)), -self.t))
        return [int(j) for j in order[:k]]


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Within the context no parameter of ``module`` requires a gradient (restored after)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def residual_leaf(lm: LoadedModel, layer: int) -> Iterator[dict[str, torch.Tensor]]:
    """Within the context a forward hands on block ``layer``'s output as a fresh leaf that
    requires a gradient; ``store["h"]`` holds it after the forward."""
    store: dict[str, torch.Tensor] = {}

    def hook(_module: Any, _args: Any, output: Any) -> Any:
        h = block_hidden(output).detach().requires_grad_(True)
        store["h"] = h
        if isinstance(output, (tuple, list)):
            return type(output)([h, *output[1:]])
        return h

    handle = lm.blocks[layer].register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def decoder_directions(sae: SAE) -> torch.Tensor:
    """(d_sae, d) the residual direction one unit of each feature writes (:meth:`SAE.decoder_direction`)."""
    W = sae.W_dec.detach()
    return W / W.norm(dim=-1, keepdim=True) if sae.rescale_acts_by_decoder_norm else W


def attribution_screen(lm: LoadedModel, sae: SAE, layer: int, examples: Sequence[TokenizedExample],
                       positions: str = "content", batch_tokens: int = 4096, batch_size: int = 16,
                       chunk_tokens: int = 4096, norm_guard: float | None = None) -> Screen:
    """Attribution (module docstring) of every feature of ``sae`` on each of ``examples``.

    ``norm_guard`` leaves out the positions the edit would skip (:func:`igds.intervention.editable_positions`:
    residual norm above that multiple of the example's median). ``batch_tokens`` / ``batch_size``
    bound each forward and backward (padded tokens, examples); ``chunk_tokens`` bounds the
    (tokens, d_sae) code computed at once."""
    lm.check_layer(layer)
    if sae.layer is not None and sae.layer != layer:
        raise ValueError(f"the SAE reads layer {sae.layer}, not layer {layer}")
    tok = lm.tokenizer
    special = list(getattr(tok, "all_special_ids", []) or [])
    directions = decoder_directions(sae).float()
    out = np.zeros((len(examples), sae.d_sae), dtype=np.float32)
    for idx in length_batches([len(e.ids) for e in examples], batch_tokens, batch_size):
        group = [examples[i] for i in idx]
        ids, mask = pad(group, pad_id(tok))
        target = target_mask(group, ids.shape[1], "response")
        counted = to_device(count_mask(group, ids.shape[1], positions, special_ids=special, input_ids=ids),
                            lm.device)
        with frozen(lm.model), torch.enable_grad(), residual_leaf(lm, layer) as store:
            losses = masked_losses(lm, ids, mask, target)
            scored = torch.isfinite(losses)
            grad = torch.autograd.grad(losses[scored].sum(), store["h"])[0] if scored.any() \
                else torch.zeros_like(store["h"])
        h = store["h"].detach()
        if norm_guard is not None:  # the sinks the edit never touches: their linearisation says nothing about it
            counted = editable_positions(h, ids, mask, counted, special, norm_guard)
        attr = _batch_attribution(sae, directions, h, grad, counted, chunk_tokens)
        attr[~scored] = float("nan")
        out[idx] = attr.cpu().numpy()
    return Screen.of(out, layer, positions)


@torch.no_grad()
def _batch_attribution(sae: SAE, directions: torch.Tensor, h: torch.Tensor, grad: torch.Tensor,
                       counted: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """(B, d_sae): minus the sum over counted positions of f_j(h_t) * s_t * (grad_t . d_j)."""
    flat_h = h[counted]
    flat_g = grad[counted].float()
    scale = sae.output_scale(flat_h.to(sae.W_enc.dtype))
    if isinstance(scale, torch.Tensor):
        flat_g = flat_g * scale.float()
    row = counted.nonzero()[:, 0]
    total = torch.zeros(counted.shape[0], sae.d_sae, device=h.device)
    # chunks over tokens: the dense (tokens, d_sae) codes and projections of a whole batch can be gigabytes
    for s in range(0, flat_h.shape[0], chunk_tokens):
        codes = sae.encode(flat_h[s:s + chunk_tokens]).float()
        along = flat_g[s:s + chunk_tokens] @ directions.to(flat_g.device).T  # grad_t . d_j
        total.index_add_(0, row[s:s + chunk_tokens], codes * along)
    return -total
