"""One forward pass, two representations: the mean residual and the mean SAE code of each example.

``embed``, ``mona`` and ``igds_jaccard`` read the same thing: the residual stream at the SAE's layer over
an example's counted tokens (:func:`igds.activations.count_mask`: never padding, the
first token or special tokens; option ``positions`` all | prompt | response). Per
length-sorted batch, :func:`iter_activation_batches` runs the stopped forward once and
this module takes both the mean residual and the mean SAE code (all latents) of every
example from it. The task's centroid / prototype is the mean over task examples of
their means. The pool is then streamed: only each row's two similarities are kept, so
memory does not grow with ``pool x d_sae``. Rows (or task examples) with no counted
token have no mean: NaN score (selected last), left out of the prototype.

:func:`similarities` computes the pool's similarities in that one pass and keeps them in
``ctx.shared``, so ``embed`` then ``mona`` on contexts sharing that dict cost one pass.
Given per-feature ``weights`` it also takes the weighted generalised Jaccard
(``igds_jaccard``, :mod:`igds.selectors.causal_jaccard`) in the same pass and keeps the
result for ``embed`` and ``mona`` too; run after them, it needs a pass of its own (the
pool's codes are never kept).
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch

from ..activations import iter_activation_batches
from ..data import Example, tokenize_example
from ..model import LoadedModel
from ..sae import SAE
from ..selection import make_score_table
from .base import SelectionContext, pool_ids

DEFAULTS: dict[str, Any] = {"positions": "all", "batch_tokens": 8192, "batch_size": 32, "chunk_tokens": 4096}


class ExampleMeans:
    """Per-example mean residual and mean SAE code at ``sae.layer``, one forward per batch."""

    def __init__(self, lm: LoadedModel, sae: SAE, max_length: int = 1024, use_chat_template: bool = True,
                 positions: str = "all", batch_tokens: int = 8192, batch_size: int = 32,
                 chunk_tokens: int = 4096) -> None:
        if sae.layer is None:
            raise ValueError("the SAE records no layer (metadata 'layer' or a hook name); embed/mona need it")
        self.lm, self.sae, self.layer = lm, sae, sae.layer
        self.max_length, self.use_chat_template, self.positions = max_length, use_chat_template, positions
        self.batch_tokens, self.batch_size, self.chunk_tokens = batch_tokens, batch_size, chunk_tokens

    @torch.no_grad()
    def batches(self, examples: Sequence[Example]) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor,
                                                                   torch.Tensor]]:
        """``(indices, mean residual (B, d), mean code (B, d_sae), counted tokens (B,))`` per batch."""
        toks = [tokenize_example(self.lm.tokenizer, e, self.max_length, self.use_chat_template) for e in examples]
        for batch in iter_activation_batches(self.lm, toks, [self.layer], self.positions, self.batch_tokens,
                                             self.batch_size):
            counted = batch.counted
            resid = batch.resid[self.layer]
            flat = resid[counted].float()  # (N, d): the counted tokens only
            row = counted.nonzero()[:, 0]
            B = counted.shape[0]
            resid_sum = torch.zeros(B, resid.shape[-1], device=flat.device).index_add_(0, row, flat)
            code_sum = torch.zeros(B, self.sae.d_sae, device=flat.device)
            # chunks over tokens: all latents of a whole batch at once can be gigabytes
            for s in range(0, flat.shape[0], self.chunk_tokens):
                rows, chunk = row[s:s + self.chunk_tokens], flat[s:s + self.chunk_tokens]
                sparse = self.sae.encode_sparse(chunk)  # a TopK SAE: add its k values, not d_sae zeros
                if sparse is None:
                    code_sum.index_add_(0, rows, self.sae.encode(chunk).float())
                else:
                    vals, idx = sparse
                    code_sum.index_put_((rows.unsqueeze(1).expand_as(idx), idx), vals.float(), accumulate=True)
            count = counted.sum(dim=1)
            denom = count.clamp_min(1).unsqueeze(-1).float()
            yield batch.indices, resid_sum / denom, code_sum / denom, count

    def prototypes(self, task: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        """The task centroid (mean of mean residuals) and prototype (mean of mean codes)."""
        resid_total, code_total, n = 0.0, 0.0, 0
        for _, resid, code, count in self.batches(task):
            ok = count > 0
            resid_total = resid_total + resid[ok].sum(0)
            code_total = code_total + code[ok].sum(0)
            n += int(ok.sum())
        if n == 0:
            raise ValueError("no task example has a counted token: embed/mona have no target")
        return resid_total / n, code_total / n  # type: ignore[return-value]

    def similarities(self, pool: Sequence[Example], centroid: torch.Tensor, prototype: torch.Tensor,
                     weights: torch.Tensor | None = None) -> dict[str, np.ndarray]:
        """Cosine to ``centroid`` and generalised Jaccard to ``prototype`` of every pool row, and with
        ``weights`` (d_sae,) also the weighted Jaccard ``sum_j w_j min / sum_j w_j max``."""
        n = len(pool)
        out = {"cosine": np.full(n, np.nan), "jaccard": np.full(n, np.nan), "n_tokens": np.zeros(n, np.int64)}
        if weights is not None:
            out["weighted_jaccard"] = np.full(n, np.nan)
        for idx, resid, code, count in self.batches(pool):
            ok = (count > 0).cpu().numpy()
            cos = torch.nn.functional.cosine_similarity(resid, centroid.unsqueeze(0), dim=-1)
            out["cosine"][idx] = np.where(ok, cos.double().cpu().numpy(), np.nan)
            out["jaccard"][idx] = np.where(ok, jaccard(code, prototype).double().cpu().numpy(), np.nan)
            if weights is not None:
                out["weighted_jaccard"][idx] = np.where(ok, jaccard(code, prototype, weights).double().cpu().numpy(),
                                                        np.nan)
            out["n_tokens"][idx] = count.cpu().numpy()
        return out


def jaccard(codes: torch.Tensor, prototype: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Generalised Jaccard of each row of ``codes`` (B, d_sae) to ``prototype``, each feature weighted
    by ``weights`` (non-negative; None: 1). Codes are non-negative (ReLU / TopK / JumpReLU), so
    ``sum(w min) / sum(w max)`` is in [0, 1]; 0 when both are all zero."""
    both, either = torch.minimum(codes, prototype), torch.maximum(codes, prototype)
    if weights is not None:
        both, either = both * weights, either * weights
    both, either = both.sum(-1), either.sum(-1)
    return torch.where(either > 0, both / either.clamp_min(1e-30), torch.zeros_like(both))


def similarities(pool: Sequence[Example], ctx: SelectionContext, options: dict[str, Any],
                 weights: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """:meth:`ExampleMeans.similarities` of ``pool`` to ``ctx.task`` and the tables' shared metadata,
    from one pass over each (cached in ``ctx.shared``, the weighted pass for the unweighted too)."""
    if ctx.model is None or ctx.sae is None or not ctx.task:
        raise ValueError("embed/mona/igds_jaccard need a model, an SAE and task examples in their context")
    unweighted = ("sae_means", id(ctx.model), id(ctx.sae), tuple(pool_ids(pool)), tuple(pool_ids(ctx.task)),
                  ctx.max_length, ctx.use_chat_template, tuple(sorted(options.items())))
    key = unweighted if weights is None else \
        unweighted + (hashlib.sha256(np.ascontiguousarray(weights, dtype=np.float64)).hexdigest(),)
    if key in ctx.shared:
        return ctx.shared[key]
    means = ExampleMeans(ctx.model, ctx.sae, ctx.max_length, ctx.use_chat_template, **options)
    centroid, prototype = means.prototypes(ctx.task)
    w = None if weights is None else torch.as_tensor(weights, dtype=torch.float32, device=prototype.device)
    sim = means.similarities(pool, centroid, prototype, w)
    meta = {"model": ctx.model.name, "sae": ctx.sae.describe(), "layer": means.layer, "n_task": len(ctx.task),
            "max_length": ctx.max_length, **options}
    ctx.shared[key] = ctx.shared[unweighted] = (sim, meta)
    return sim, meta


def similarity_tables(pool: Sequence[Example], ctx: SelectionContext, options: dict[str, Any]
                      ) -> dict[str, pa.Table]:
    """The ``embed`` and ``mona`` tables of ``pool`` from one forward pass (shared through ``ctx.shared``)."""
    sim, meta = similarities(pool, ctx, options)
    ids = pool_ids(pool)
    return {
        "embed": make_score_table(ids, sim["cosine"], sim["n_tokens"], extra={"cosine": sim["cosine"]},
                                  meta={"method": "embed", "similarity": "cosine to the task centroid", **meta}),
        "mona": make_score_table(ids, sim["jaccard"], sim["n_tokens"], extra={"jaccard": sim["jaccard"]},
                                 meta={"method": "mona", "similarity": "generalised Jaccard to the task prototype",
                                       **meta}),
    }
