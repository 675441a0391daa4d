"""How good is an SAE on held-out text: reconstruction, sparsity, dead latents, and loss.

For each batch the residual after block L is read by a forward stopped there, then
three loss forwards run on the same tokens (the house's loss, :mod:`igds.losses`, with
the LM head only where a loss is counted):

* clean - the model as is;
* recon - that residual replaced by the SAE reconstruction at the counted positions;
* zero  - that residual replaced by zeros at the same positions.

Counted positions are those igds scores everywhere: never padding, never the
first token, never special tokens, and never tokens above the SAE's stored norm
ceiling (``metadata.norm_threshold`` for igds-trained SAEs: attention-sink tokens
whose norm is ~100x the median, which the SAE never saw). Only counted positions
are replaced, and the next-token loss is averaged over counted positions that
have a next token. Metrics:

* ``fve`` - fraction of variance explained: ``1 - sum|x - x_hat|^2 / sum|x - mean(x)|^2``
  over the counted tokens of the whole evaluation set;
* ``l0`` - mean number of active latents per counted token;
* ``dead_fraction`` - latents that never fire on the evaluation tokens;
* ``loss_recovered`` - ``(L_zero - L_recon) / (L_zero - L_clean)``: 1 = the splice
  costs nothing, 0 = as bad as deleting the residual.

Entry points: :func:`evaluate_sae` (objects in memory) and :func:`run_eval`
(an :class:`igds.config.EvalSAEConfig`, what ``igds eval-sae`` calls); ``igds eval-sae --help``.
"""

from __future__ import annotations

import random
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .activations import block_hidden, count_mask, length_batches, pad, residuals
from .data import Example, TokenizedExample, tokenize_example
from .losses import token_ce
from .model import load_model, pad_id
from .sae import SAE, check_compatible
from .sae_loading import load_sae
from .config import EvalSAEConfig
from .sae_data import parse_source, source_examples


@contextmanager
def _splice(block: torch.nn.Module, positions: torch.Tensor, values: torch.Tensor) -> Iterator[None]:
    """Replace the block output at ``positions`` (B, S bool) by ``values`` (n, d)."""

    def hook(_module: Any, _args: Any, output: Any) -> Any:
        h = block_hidden(output)
        new = h.clone()
        new[positions] = values.to(new.dtype)
        if isinstance(output, tuple):
            return (new, *output[1:])
        if isinstance(output, list):
            return [new, *output[1:]]
        return new

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _token_loss(lm: Any, ids: torch.Tensor, mask: torch.Tensor, at: torch.Tensor) -> tuple[float, int]:
    """Summed next-token cross-entropy of the predictions made at positions ``at`` (B, S-1 bool).

    The house's loss (:func:`igds.losses.token_ce`): LM head on those positions only."""
    return float(token_ce(lm, ids, mask, F.pad(at, (0, 1)), reduction="sum")), int(at.sum())


def _tokenize_all(lm: Any, examples: Sequence[Example | TokenizedExample | str], max_length: int,
                  use_chat_template: bool) -> list[TokenizedExample]:
    out = []
    for ex in examples:
        if isinstance(ex, TokenizedExample):
            out.append(TokenizedExample(ex.ids[:max_length], min(ex.prompt_len, max_length), ex.truncated))
        elif isinstance(ex, str):
            ids = lm.tokenizer(ex, add_special_tokens=True)["input_ids"]
            out.append(TokenizedExample(ids[:max_length], 0, len(ids) > max_length))
        else:
            out.append(tokenize_example(lm.tokenizer, ex, max_length, use_chat_template))
    return [e for e in out if len(e.ids) >= 2]


@torch.no_grad()
def evaluate_sae(lm: Any, sae: SAE, examples: Sequence[Example | TokenizedExample | str], *,
                 layer: int | None = None, max_length: int = 512, max_tokens: int = 4096, max_batch: int = 16,
                 max_norm: float | str | None = "auto", use_chat_template: bool = True,
                 progress: bool = False) -> dict[str, Any]:
    """Quality of ``sae`` at ``layer`` (default: the SAE's own) on ``examples``; a JSON-ready dict.

    ``max_norm``: tokens whose residual norm exceeds it are not counted; ``"auto"`` uses
    the SAE's ``metadata.norm_threshold`` when it has one, ``None`` counts every token."""
    layer = sae.layer if layer is None else layer
    if layer is None:
        raise ValueError("the SAE does not say which layer it reads; pass layer=")
    sae_dev = sae.W_enc.device
    check_compatible(sae, lm.d_model, lm.n_layers, source=str(sae.metadata.get("source", "SAE")))
    if max_norm == "auto":
        thr = sae.metadata.get("norm_threshold")
        max_norm = float(thr) if thr is not None else None
    toks = _tokenize_all(lm, examples, max_length, use_chat_template)
    if not toks:
        raise ValueError("no evaluation examples with at least 2 tokens")
    tok = lm.tokenizer
    special = list(getattr(tok, "all_special_ids", []) or [])
    block = lm.blocks[layer]
    d = sae.d_in
    n_tok = n_excl = 0
    sse = 0.0
    sum_x = torch.zeros(d, dtype=torch.float64)
    sum_sq = 0.0
    l0_sum = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    loss = {"clean": 0.0, "recon": 0.0, "zero": 0.0}
    n_loss = 0
    t0 = time.perf_counter()
    batches = length_batches([len(e.ids) for e in toks], max_tokens, max_batch)
    for idx in tqdm(batches, desc="eval SAE", disable=not progress, file=sys.stderr):
        group = [toks[i] for i in idx]
        ids, mask = pad(group, pad_id(tok))
        counted = count_mask(group, ids.shape[1], "all", True, special, ids)
        h = residuals(lm, ids, mask, [layer])[layer].float().cpu()
        if max_norm is not None:
            too_big = counted & (h.norm(dim=-1) > max_norm)
            n_excl += int(too_big.sum())
            counted = counted & ~too_big
        x = h[counted]
        if x.shape[0] == 0:
            continue
        acts = sae.encode(x.to(sae_dev))
        recon = sae.decode(acts).float().cpu()
        sse += float((x - recon).double().pow(2).sum())
        sum_x += x.double().sum(0)
        sum_sq += float(x.double().pow(2).sum())
        n_tok += x.shape[0]
        active = (acts > 0).cpu()
        l0_sum += float(active.sum())
        fired |= active.any(0)
        # predictions made at counted positions that have a next (non-padding) token
        at = counted[:, :-1] & mask[:, 1:].bool()
        pos = counted.to(lm.device)
        s, n = _token_loss(lm, ids, mask, at)
        loss["clean"] += s
        with _splice(block, pos, recon.to(lm.device)):
            loss["recon"] += _token_loss(lm, ids, mask, at)[0]
        with _splice(block, pos, torch.zeros_like(recon).to(lm.device)):
            loss["zero"] += _token_loss(lm, ids, mask, at)[0]
        n_loss += n
    if n_tok == 0:
        raise ValueError("no counted tokens in the evaluation data (all were first/special/padding/over max_norm)")
    total_var = sum_sq - float(sum_x.pow(2).sum()) / n_tok
    ce = {k: v / max(n_loss, 1) for k, v in loss.items()}
    denom = ce["zero"] - ce["clean"]
    return {
        "sae": str(sae.metadata.get("source", "")),
        "model": getattr(lm, "name", ""),
        "layer": layer,
        "architecture": sae.architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "k": sae.k,
        "n_examples": len(toks),
        "n_tokens": n_tok,
        "n_tokens_over_max_norm": n_excl,
        "max_norm": max_norm,
        "fve": 1.0 - sse / total_var if total_var > 0 else None,
        "mse": sse / (n_tok * d),
        "l0": l0_sum / n_tok,
        "dead_fraction": 1.0 - float(fired.float().mean()),
        "n_dead": int((~fired).sum()),
        "n_loss_tokens": n_loss,
        "ce_clean": ce["clean"],
        "ce_recon": ce["recon"],
        "ce_zero": ce["zero"],
        "ce_delta": ce["recon"] - ce["clean"],
        "loss_recovered": (ce["zero"] - ce["recon"]) / denom if abs(denom) > 1e-9 else None,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def load_eval_examples(lm: Any, data: Sequence[str], limit: int | None, max_length: int, seed: int = 0,
                       use_chat_template: bool = True) -> list[TokenizedExample]:
    """Read evaluation files (data-source specs ``PATH[::key=value,...]``, :mod:`igds.sae_data`)."""
    rng = random.Random(seed)
    out: list[TokenizedExample] = []
    for spec in data:
        src = parse_source(spec)
        if src.limit is None:
            src.limit = limit
        out += source_examples(src, lm.tokenizer, max_length, use_chat_template, rng)
    if not out:
        raise ValueError(f"no evaluation examples in {list(data)}")
    return out


def run_eval(cfg: EvalSAEConfig, progress: bool = True) -> dict[str, Any]:
    """Load ``cfg.model`` and ``cfg.sae`` (a path, ``default`` or ``release/sae_id``) and evaluate on ``cfg.data``.

    ``cfg.limit`` takes a seeded random subset of that many records per file."""
    lm = load_model(cfg.model, device=cfg.device)
    s = load_sae(cfg.sae, model_name=lm.name, layer=cfg.layer, device=lm.device)
    examples = load_eval_examples(lm, cfg.data, cfg.limit, cfg.max_length, cfg.seed)
    result = evaluate_sae(lm, s, examples, layer=cfg.layer, max_length=cfg.max_length, progress=progress)
    result["data"] = list(cfg.data)
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The headline numbers of :func:`run_eval`'s result, one per line."""
    out = []
    for key in ("sae", "layer", "n_tokens", "fve", "l0", "dead_fraction", "ce_clean", "ce_recon", "ce_zero",
                "loss_recovered"):
        v = result[key]
        out.append(f"{key:>16}: {v:.4f}" if isinstance(v, float) else f"{key:>16}: {v}")
    return out
