"""Stage 1 of IGDS: find the SAE features the model causally uses for a task.

**1a. Frequency recall.** Run task examples (the *probe* set) and generic text (the
*reference* set) through the model, encode each SAE layer, and measure for every
feature: firing frequency over counted tokens, the share of examples in which it
fires, and its mean activation when active. Candidates must fire in at least
``min_example_freq`` of task examples and on ``min_task_freq`` of task tokens, and
are ranked by (ours)

    recall_score = p_task * ln((p_task + eps) / (p_ref + eps)) * a_task / mean_a

the feature's contribution to the KL divergence between task and reference firing,
weighted by how strongly it fires (``a_task``, relative to the SAE's mean active
value so that layers are comparable). Always-on features have ``p_task ~ p_ref`` and
score ~0; rare features have small ``p_task`` and score little.

**1b. Interventional filtering.** Each candidate is amplified (error-preserving edit,
see :mod:`igds.intervention`) on held-out validation examples, and the teacher-forced
loss of the reference answers is compared with the unedited model, example by
example. ``delta = loss_base - loss_amplified`` (positive = helps). A candidate is
kept when ``mean(delta) - z * se(delta) > min_delta`` (paired, over examples), the
strongest ``max_features`` first. Every candidate's effect is recorded.

The result, a :class:`~igds.feature_set.FeatureSet` of typed candidates, and the schema
of ``features.json`` live in :mod:`igds.feature_set`.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from .activations import count_mask, iter_activation_batches, length_batches, pad
from .artifacts import atomic_write_parquet
from .config import FilterConfig, RecallConfig
from .data import TokenizedExample
from .feature_set import Candidate, Effect, FeatureInfo, FeatureSet, SampleInfo, feature_key
from .intervention import feature_effects
from .losses import target_mask
from .model import LoadedModel, pad_id
from .sae import SAE


@dataclass
class FeatureStats:
    """Firing statistics of every feature of one SAE over a set of examples."""

    n_tokens: int
    n_examples: int
    token_count: np.ndarray  # (d_sae,) tokens on which the feature fired
    example_count: np.ndarray  # (d_sae,) examples in which it fired at least once
    act_sum: np.ndarray  # (d_sae,) sum of activations

    @property
    def freq(self) -> np.ndarray:
        return self.token_count / max(self.n_tokens, 1)

    @property
    def example_freq(self) -> np.ndarray:
        return self.example_count / max(self.n_examples, 1)

    @property
    def mean_active(self) -> np.ndarray:
        return self.act_sum / np.maximum(self.token_count, 1)


@torch.no_grad()
def firing_stats(lm: LoadedModel, saes: dict[int, SAE], examples: Sequence[TokenizedExample],
                 positions: str = "all", batch_tokens: int = 8192, batch_size: int = 32,
                 desc: str = "recall") -> dict[int, FeatureStats]:
    """Per-layer firing statistics over ``examples`` (padding/first/special tokens excluded)."""
    acc = {L: [np.zeros(s.d_sae), np.zeros(s.d_sae), np.zeros(s.d_sae)] for L, s in saes.items()}
    n_tokens = 0
    bar = tqdm(total=len(examples), desc=desc, unit="ex", leave=False)
    for batch in iter_activation_batches(lm, examples, list(saes), positions, batch_tokens, batch_size):
        counted = batch.counted
        n_tokens += int(counted.sum())
        for layer, sae in saes.items():
            acts = sae.encode(batch.resid[layer]) * counted.unsqueeze(-1)  # (B, S, d_sae)
            fired = acts > 0
            acc[layer][0] += fired.sum(dim=(0, 1)).double().cpu().numpy()
            acc[layer][1] += fired.any(dim=1).sum(dim=0).double().cpu().numpy()
            acc[layer][2] += acts.sum(dim=(0, 1)).double().cpu().numpy()
        bar.update(len(batch.indices))
        bar.set_postfix(tok=n_tokens)
    bar.close()
    return {L: FeatureStats(n_tokens, len(examples), *acc[L]) for L in saes}


def recall_candidates(task: dict[int, FeatureStats], ref: dict[int, FeatureStats], cfg: RecallConfig,
                      ) -> tuple[list[Candidate], pa.Table]:
    """Rank features by the recall rule; return the top candidates and a table of all features."""
    rows: list[Candidate] = []
    columns: dict[str, list[Any]] = {k: [] for k in ("layer", "feature", "task_freq", "ref_freq",
                                                       "task_example_freq", "task_mean_act", "ref_mean_act",
                                                       "enrichment", "recall_score")}
    for layer, t in task.items():
        r = ref[layer]
        p_t, p_r = t.freq, r.freq
        a_t = t.mean_active
        active = a_t[t.token_count > 0]
        mean_a = float(active.mean()) if active.size else 1.0
        enrich = np.log((p_t + cfg.epsilon) / (p_r + cfg.epsilon))
        score = p_t * enrich * (a_t / mean_a)
        eligible = (t.example_freq >= cfg.min_example_freq) & (p_t >= cfg.min_task_freq) & (enrich > 0)
        score = np.where(eligible, score, -np.inf)
        for name, values in (("layer", np.full(len(p_t), layer)), ("feature", np.arange(len(p_t))),
                             ("task_freq", p_t), ("ref_freq", p_r), ("task_example_freq", t.example_freq),
                             ("task_mean_act", a_t), ("ref_mean_act", r.mean_active),
                             ("enrichment", enrich), ("recall_score", np.where(eligible, score, np.nan))):
            columns[name].extend(values.tolist())
        for j in np.flatnonzero(eligible):
            rows.append(Candidate(feature_key(layer, int(j)), layer, int(j),
                                  task_freq=float(p_t[j]), ref_freq=float(p_r[j]),
                                  task_example_freq=float(t.example_freq[j]),
                                  task_mean_act=float(a_t[j]), ref_mean_act=float(r.mean_active[j]),
                                  enrichment=float(enrich[j]), recall_score=float(score[j])))
    rows.sort(key=lambda c: (-c.recall_score, c.layer, c.feature))
    rows = rows[: cfg.n_candidates]
    for rank, row in enumerate(rows, start=1):
        row.recall_rank = rank
    table = pa.table({"layer": pa.array(columns["layer"], pa.int32()), "feature": pa.array(columns["feature"], pa.int32()),
                      **{k: pa.array(v, pa.float32()) for k, v in columns.items() if k not in ("layer", "feature")}})
    return rows, table


def random_candidates(task: dict[int, FeatureStats], n: int, seed: int) -> list[Candidate]:
    """Ablation "no recall": ``n`` random features among those that fire at all on the task."""
    pool = [(L, int(j)) for L, t in task.items() for j in np.flatnonzero(t.token_count > 0)]
    picked = random.Random(seed).sample(pool, min(n, len(pool)))
    out = []
    for rank, (L, j) in enumerate(sorted(picked), start=1):
        t = task[L]
        out.append(Candidate(feature_key(L, j), L, j, task_freq=float(t.freq[j]),
                             task_example_freq=float(t.example_freq[j]), task_mean_act=float(t.mean_active[j]),
                             recall_rank=rank, random_candidate=True))
    return out


def intervention_effects(lm: LoadedModel, saes: dict[int, SAE], candidates: list[Candidate],
                         validation: Sequence[TokenizedExample], cfg: FilterConfig,
                         batch_tokens: int = 4096, batch_size: int = 16) -> None:
    """Fill each candidate's ``effect`` with the per-example loss change under amplification."""
    fill = pad_id(lm.tokenizer)
    by_layer: dict[int, list[Candidate]] = {}
    for c in candidates:
        by_layer.setdefault(c.layer, []).append(c)
    deltas = {c.key: np.full(len(validation), np.nan) for c in candidates}
    base_all = np.full(len(validation), np.nan)
    batches = length_batches([len(e.ids) for e in validation], batch_tokens, batch_size)
    total = sum(len(b) for b in batches) * len(by_layer)
    bar = tqdm(total=total, desc="causal filter", unit="ex", leave=False)
    for layer, group in by_layer.items():
        feats = [c.feature for c in group]
        for idx in batches:
            exs = [validation[i] for i in idx]
            ids, mask = pad(exs, fill)
            tgt = target_mask(exs, ids.shape[1], "response")
            edit = count_mask(exs, ids.shape[1], cfg.positions)
            base, amp = feature_effects(lm, saes[layer], layer, feats, ids, mask, tgt, edit, cfg.alpha,
                                        cfg.features_per_forward, cfg.cached_prefix)
            base_np, amp_np = base.cpu().numpy(), amp.cpu().numpy()
            base_all[idx] = base_np
            for k, c in enumerate(group):
                deltas[c.key][idx] = base_np - amp_np[k]
            bar.update(len(idx))
    bar.close()
    for c in candidates:
        d = deltas[c.key]
        d = d[~np.isnan(d)]
        n = len(d)
        mean = float(d.mean()) if n else float("nan")
        se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
        c.effect = Effect("ref_loss", cfg.alpha, n, mean, se, mean - 1.96 * se, mean + 1.96 * se,
                          base_loss=float(np.nanmean(base_all)), per_example=[round(float(x), 6) for x in d])


def choose_validated(candidates: list[Candidate], cfg: FilterConfig) -> tuple[list[str], list[str]]:
    """Apply the keep rule; returns (validated keys, warnings)."""
    warnings: list[str] = []
    if not cfg.enabled:
        for c in candidates:
            c.validated = True
        return [c.key for c in candidates], warnings

    def effect(c: Candidate) -> Effect:
        assert c.effect is not None, "intervention_effects runs before the keep rule"
        return c.effect

    def lower(c: Candidate) -> float:
        e = effect(c)
        return e.mean_delta - cfg.z * (e.se if not math.isnan(e.se) else 0.0)

    passing = sorted((c for c in candidates if lower(c) > cfg.min_delta), key=lambda c: (-lower(c), c.key))
    if cfg.max_features is not None:
        passing = passing[: cfg.max_features]
    if not passing and cfg.fallback_top > 0:
        positive = sorted((c for c in candidates if effect(c).mean_delta > 0),
                          key=lambda c: (-effect(c).mean_delta, c.key))
        passing = positive[: cfg.fallback_top]
        warnings.append(f"no candidate passed mean - {cfg.z}*se > {cfg.min_delta}; kept the {len(passing)} "
                        "with the largest positive mean effect instead")
    if not passing:
        raise RuntimeError("no candidate feature improves the task when amplified; try more probe/validation "
                           "examples, another layer or SAE, a different alpha, or filter.enabled=false")
    keep = {c.key for c in passing}
    for c in candidates:
        c.validated = c.key in keep
    return [c.key for c in passing], warnings


def promoted_tokens(lm: LoadedModel, sae: SAE, feature: int, k: int = 10) -> list[list[Any]]:
    """Tokens whose logits the feature's decoder direction raises most (logit lens)."""
    norm, W_U = lm.unembedding()
    with torch.no_grad():
        d = sae.decoder_direction(feature).to(W_U.dtype)
        if norm is not None and hasattr(norm, "weight") and norm.weight is not None:
            d = d * norm.weight.to(d.dtype)  # the norm's gain, without the data-dependent scale
        logits = W_U @ d
        vals, idx = logits.topk(k)
    return [[lm.tokenizer.decode([int(i)]), round(float(v), 4)] for v, i in zip(vals, idx)]


def find_task_features(lm: LoadedModel, saes: dict[int, SAE], probe: Sequence[TokenizedExample],
                       reference: Sequence[TokenizedExample], validation: Sequence[TokenizedExample],
                       recall: RecallConfig, filt: FilterConfig, seed: int = 0,
                       stats_path: str | Path | None = None) -> FeatureSet:
    """Stage 1: recall candidates, filter them causally, return a :class:`FeatureSet`."""
    task_stats = firing_stats(lm, saes, probe, recall.positions, desc="recall: task")
    ref_stats = firing_stats(lm, saes, reference, recall.positions, desc="recall: reference")
    ranked, table = recall_candidates(task_stats, ref_stats, recall)
    if stats_path is not None:
        atomic_write_parquet(stats_path, table)
    candidates = random_candidates(task_stats, recall.n_candidates, seed) if filt.random_candidates else ranked
    if not candidates:
        raise RuntimeError("frequency recall found no candidate features: no feature fires on at least "
                           f"{recall.min_example_freq:.0%} of task examples more often than on the reference; "
                           "lower recall.min_example_freq or use more probe examples")
    if filt.enabled:
        intervention_effects(lm, saes, candidates, validation, filt)
    validated, warnings = choose_validated(candidates, filt)
    for c in candidates:
        t = task_stats[c.layer]
        # per-feature scale used to normalise scores: mean activation per counted task token
        c.scale = float(t.act_sum[c.feature] / max(t.n_tokens, 1)) or 1.0
        if c.validated:
            c.promoted_tokens = promoted_tokens(lm, saes[c.layer], c.feature)
    info = FeatureInfo(
        model=lm.name,
        saes=[{**s.describe()} for s in saes.values()],
        layers=sorted(saes),
        probe=SampleInfo(len(probe), next(iter(task_stats.values())).n_tokens),
        reference=SampleInfo(len(reference), next(iter(ref_stats.values())).n_tokens),
        validation=SampleInfo(len(validation)),
        recall=asdict(recall),
        filter=asdict(filt),
    )
    return FeatureSet(candidates, validated, info, warnings)
