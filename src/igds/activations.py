"""Reading the residual stream: hooks on decoder blocks and a stopped forward.

"Layer L" means the *output of decoder block L*, which Hugging Face returns as
``hidden_states[L + 1]`` (index 0 is the embeddings). Capturing with forward
hooks and raising once the deepest requested block has run means scoring never
pays for the blocks above it or for the LM head.

Batches are right-padded and grouped by length under a budget of padded tokens
(:func:`length_batches`); :func:`count_mask` says which positions enter a statistic
(never padding; by default never the first token, whose residual norm is orders of
magnitude above the rest, nor special tokens). ``positions``: ``all`` tokens, the
``prompt``, the ``response``, or ``content``: the record's own text (question fields
and response), without the system prompt, chat-template tokens or the fixed words of
a ``prompt_template`` (:mod:`igds.content`).

On CUDA the padded batches go to the GPU through pinned host memory with
``non_blocking=True``, and igds's own code in :func:`iter_activation_batches` never
waits for the GPU: the caller decides when results leave it. (transformers' mask code
reads the attention mask once per forward to pick the causal SDPA kernel, a short
wait that is not ours.) On CPU the tensors are the same ones as before, so CPU
scores do not change.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from .data import TokenizedExample
from .model import LoadedModel, pad_id

POSITIONS = ("all", "prompt", "response", "content")


class StopForward(Exception):
    """Raised from the deepest hook to skip the rest of the network."""


def block_hidden(output: object) -> torch.Tensor:
    """The residual stream in a decoder block's output (a tensor, or a tuple that starts with it)."""
    return output[0] if isinstance(output, (tuple, list)) else output  # type: ignore[index]


@contextmanager
def capture(lm: LoadedModel, layers: Sequence[int], stop: bool = True) -> Iterator[dict[int, torch.Tensor]]:
    """Hook the outputs of blocks ``layers``; with ``stop`` the forward ends after the deepest."""
    for layer in layers:
        lm.check_layer(layer)
    store: dict[int, torch.Tensor] = {}
    deepest = max(layers)
    handles = []

    def make_hook(layer: int):
        def hook(_module, _args, output):
            store[layer] = block_hidden(output)
            if stop and layer == deepest:
                raise StopForward
        return hook

    blocks = lm.blocks
    for layer in sorted(set(layers)):
        handles.append(blocks[layer].register_forward_hook(make_hook(layer)))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; a host tensor bound for CUDA goes through pinned memory, asynchronously.

    The copy is ordered on the current stream, so kernels that read it wait for it
    while the host moves on to build the next batch."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)


@torch.no_grad()
def residuals(lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              layers: Sequence[int], stop: bool = True) -> dict[int, torch.Tensor]:
    """Residual stream after blocks ``layers`` for one padded batch: {layer: (B, S, d)}."""
    with capture(lm, layers, stop) as store:
        try:
            lm.model(input_ids=to_device(input_ids, lm.device), attention_mask=to_device(attention_mask, lm.device),
                     use_cache=False)
        except StopForward:
            pass
    return dict(store)


def pad(examples: Sequence[TokenizedExample], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token ids: (input_ids, attention_mask), both (B, S_max)."""
    width = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.ids)] = torch.tensor(e.ids, dtype=torch.long)
        mask[i, : len(e.ids)] = 1
    return ids, mask


def count_mask(examples: Sequence[TokenizedExample], width: int, positions: str = "all",
               exclude_first: bool = True, special_ids: Sequence[int] = (),
               input_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean (B, width) mask of the positions that enter statistics.

    ``content`` reads each example's ``content`` flags (which never include special tokens)."""
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    mask = torch.zeros((len(examples), width), dtype=torch.bool)
    start = 1 if exclude_first else 0
    for i, e in enumerate(examples):
        if positions == "content":
            if e.content is None:
                raise ValueError(f"positions=content: the chat template rewrites the text of example {i} of this "
                                 "batch, so its content tokens cannot be found; use positions=response or all")
            mask[i, start:len(e.ids)] = torch.tensor(e.content[start:], dtype=torch.bool)
            continue
        lo, hi = {"all": (start, len(e.ids)), "prompt": (start, e.prompt_len),
                  "response": (max(start, e.prompt_len), len(e.ids))}[positions]
        mask[i, lo:hi] = True
    if special_ids and input_ids is not None:
        mask &= ~torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype))
    return mask


def length_batches(lengths: Sequence[int], max_tokens: int = 8192, max_batch: int | None = 32) -> list[list[int]]:
    """Group indices of similar length so padding stays small; deterministic order.

    A batch holds at most ``max_tokens`` padded tokens (rows x its longest row) and,
    unless ``max_batch`` is None, at most ``max_batch`` examples. On a GPU the token
    budget is the limit that matters: short rows then fill wide batches."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    cap = len(order) if max_batch is None else max_batch
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[i]  # ascending order: the newest row is the batch's longest
        if current and (len(current) + 1 > cap or width * (len(current) + 1) > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@dataclass
class ActivationBatch:
    """One batch of residuals, ready for an SAE."""

    indices: list[int]  # positions of these examples in the caller's list
    input_ids: torch.Tensor  # (B, S)
    attention_mask: torch.Tensor  # (B, S)
    counted: torch.Tensor  # (B, S) bool: positions that enter statistics
    resid: dict[int, torch.Tensor]  # layer -> (B, S, d)


def iter_activation_batches(lm: LoadedModel, examples: Sequence[TokenizedExample], layers: Sequence[int],
                            positions: str = "all", max_tokens: int = 8192, max_batch: int | None = 32,
                            exclude_first: bool = True, exclude_special: bool = True,
                            batches: list[list[int]] | None = None) -> Iterator[ActivationBatch]:
    """Run the stopped forward over ``examples`` in length-sorted batches.

    Yields as soon as the forward is queued: on CUDA the residuals may still be being
    computed, and reading them on the host (``.cpu()``, ``float(...)``) is what waits."""
    tok = lm.tokenizer
    fill = pad_id(tok)
    special = list(getattr(tok, "all_special_ids", []) or []) if exclude_special else []
    if batches is None:
        batches = length_batches([len(e.ids) for e in examples], max_tokens, max_batch)
    for idx in batches:
        group = [examples[i] for i in idx]
        ids, mask = pad(group, fill)
        counted = count_mask(group, ids.shape[1], positions, exclude_first, special, ids)
        resid = residuals(lm, ids, mask, layers)
        yield ActivationBatch(idx, ids, mask, to_device(counted, lm.device), resid)
