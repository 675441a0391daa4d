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

**1b. Interventional filtering** (``filter.enabled``; off by default at this scale, where it
did not keep recalled candidates clearly more often than random ones: BENCHMARKS.md). Each
candidate is edited (error-preserving, see :mod:`igds.intervention`; never on special tokens
nor, with ``norm_guard``, on
residual-norm outliers) on held-out validation examples, and the teacher-forced loss
``L_i`` of each example's reference answer is read under the edit. The per-example
effect, positive = amplifying the feature lowers the loss = it helps the task, is

* ``central`` (ours): ``[L_i(2 - alpha) - L_i(alpha)] / 2``, a symmetric
  difference (alpha=2: remove the feature vs double it). It estimates minus the
  directional derivative of the loss along the feature, and the loss's curvature,
  which makes almost every feature look harmful at a one-sided alpha=2, cancels
  (method audit §3.5);
* ``amplify`` (the paper's): ``L_i(1) - L_i(alpha)``;
* ``gradient`` (ours): ``(alpha - 1)`` times the feature's gradient attribution on the
  example (:mod:`igds.attribution`), the first-order term of both: every candidate from one
  forward and backward pass per batch instead of two edited forwards each;
* ``screened`` (ours, the default): the gradient attribution ranks the candidates on the selecting half
  of the validation examples (all of them without replication), and only the
  ``confirm_top`` best get the ``central`` edit on every validation example; the others
  are left untested (no per-example effect: p = 1 in Benjamini-Hochberg, which still
  counts them). The confirming half never takes part in the screen, so its test stays
  independent of both selections. Cost: one forward and backward pass over half the
  examples plus ``2 * confirm_top`` edited forwards per example, instead of two per candidate.

Which candidates are kept is decided by :mod:`igds.filter_stats` (one-sided t-test,
Benjamini-Hochberg at ``q``, confirmation on a held-out half) in
:func:`choose_validated`, smallest p first, at most ``max_features``. When none passes,
``on_empty`` either stops with :class:`NoFeaturesPassed` or keeps every candidate
without a causal check ("recall only", warned); ``features.json`` records the outcome.

Each candidate also records where it fires most (:func:`describe_peaks`, from the probe
pass itself): the share of its strongest probe positions that are template rather than
content tokens (:mod:`igds.content`), and the tokens there.

The reference's statistics depend only on the model, the SAEs, the reference tokens and the
counted positions, never on the task: the pipeline keeps them in a content-keyed file
(:func:`save_stats` / :func:`load_stats`) so that later runs skip the reference pass.

The result, a :class:`~igds.feature_set.FeatureSet` of typed candidates, and the schema
of ``features.json`` live in :mod:`igds.feature_set`.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from .activations import count_mask, iter_activation_batches, length_batches, pad
from .artifacts import atomic_write_parquet
from .attribution import attribution_screen
from .config import FilterConfig, RecallConfig
from .data import TokenizedExample
from .feature_set import Candidate, Effect, FeatureInfo, FeatureSet, SampleInfo, feature_key
from .filter_stats import judge, split_halves
from .intervention import edit_losses
from .losses import target_mask
from .model import LoadedModel, pad_id
from .sae import SAE

log = logging.getLogger(__name__)
# strongest probe activations kept per feature for what it fires on (peak_tokens, peak_template_share)
PEAKS = 50


@dataclass
class FeatureStats:
    """Firing statistics of every feature of one SAE over a set of examples."""

    n_tokens: int
    n_examples: int
    token_count: np.ndarray  # (d_sae,) tokens on which the feature fired
    example_count: np.ndarray  # (d_sae,) examples in which it fired at least once
    act_sum: np.ndarray  # (d_sae,) sum of activations
    # (k, d_sae, 3), only when asked for (firing_stats(peaks=k)): each feature's k strongest activations at every
    # non-special position but the first, as (activation, token id, content flag: 1 content, 0 template, -1 unknown)
    peaks: np.ndarray | None = None

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
                 desc: str = "recall", peaks: int = 0) -> dict[int, FeatureStats]:
    """Per-layer firing statistics over ``examples`` (padding/first/special tokens excluded).

    ``peaks`` > 0 also keeps every feature's strongest activations (:attr:`FeatureStats.peaks`) from
    the same forward, at all positions whatever ``positions`` counts: where a feature fires most,
    template included, is what :func:`describe_peaks` reports."""
    acc = {L: [np.zeros(s.d_sae), np.zeros(s.d_sae), np.zeros(s.d_sae)] for L, s in saes.items()}
    best: dict[int, np.ndarray | None] = {L: None for L in saes}
    special = list(getattr(lm.tokenizer, "all_special_ids", []) or [])
    n_tokens = 0
    bar = tqdm(total=len(examples), desc=desc, unit="ex", leave=False)
    for batch in iter_activation_batches(lm, examples, list(saes), positions, batch_tokens, batch_size):
        counted = batch.counted
        n_tokens += int(counted.sum())
        if peaks:
            exs = [examples[i] for i in batch.indices]
            width = batch.input_ids.shape[1]
            anywhere = counted if positions == "all" else \
                count_mask(exs, width, "all", True, special, batch.input_ids).to(counted.device)
            content = torch.tensor([(list(map(int, e.content)) if e.content is not None else [-1] * len(e.ids))
                                    + [-1] * (width - len(e.ids)) for e in exs])
        for layer, sae in saes.items():
            # every firing entry (a TopK SAE fires k of d_sae per token): the statistics need nothing else
            rows, pos, f, vals = _firing_entries(sae, batch.resid[layer], anywhere if peaks else counted)
            if peaks:
                best[layer] = _merge_peaks(best[layer], rows * counted.shape[1] + pos, f, vals, sae.d_sae,
                                           batch.input_ids, content, peaks)
                if positions != "all":  # the statistics count ``positions`` only
                    keep = counted[rows, pos]
                    rows, f, vals = rows[keep], f[keep], vals[keep]
            d = sae.d_sae
            acc[layer][0] += torch.bincount(f, minlength=d).double().cpu().numpy()
            acc[layer][1] += torch.bincount(torch.unique(rows * d + f) % d, minlength=d).double().cpu().numpy()
            acc[layer][2] += torch.bincount(f, weights=vals.double(), minlength=d).cpu().numpy()
        bar.update(len(batch.indices))
        bar.set_postfix(tok=n_tokens)
    bar.close()
    return {L: FeatureStats(n_tokens, len(examples), *acc[L], peaks=best[L]) for L in saes}


def _firing_entries(sae: SAE, resid: torch.Tensor, where: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(row, position, feature, activation) of every activation > 0 at the ``where`` positions of a
    (B, S, d_model) batch: from a TopK SAE's k chosen features, else from the dense codes."""
    sparse = sae.encode_sparse(resid)
    if sparse is None:
        codes = sae.encode(resid)
        rows, pos, f = ((codes > 0) & where.unsqueeze(-1)).nonzero(as_tuple=True)
        return rows, pos, f, codes[rows, pos, f].float()
    vals, idx = sparse  # (B, S, k)
    rows, pos, j = ((vals > 0) & where.unsqueeze(-1)).nonzero(as_tuple=True)
    return rows, pos, idx[rows, pos, j], vals[rows, pos, j].float()


def _merge_peaks(kept: np.ndarray | None, flat: torch.Tensor, f: torch.Tensor, vals: torch.Tensor, d: int,
                 input_ids: torch.Tensor, content: torch.Tensor, k: int) -> np.ndarray:
    """The ``k`` strongest of ``kept`` and this batch's firing entries (flat position ``flat``, feature
    ``f``, activation ``vals``), per feature, as a (k, d, 3) array of (activation, token id, content
    flag); zeros where a feature fired fewer times."""
    order = torch.sort(-vals, stable=True).indices  # strongest first ...
    order = order[torch.sort(f[order], stable=True).indices]  # ... within each feature
    f, vals, flat = f[order].cpu(), vals[order].cpu(), flat[order].cpu()
    counts = torch.bincount(f, minlength=d)
    rank = torch.arange(len(f)) - (torch.cumsum(counts, 0) - counts)[f]
    top = rank < k
    rows = torch.zeros((k, d, 3), dtype=torch.float64)
    rows[rank[top], f[top]] = torch.stack([vals[top].double(), input_ids.flatten().cpu()[flat[top]].double(),
                                           content.flatten()[flat[top]].double()], dim=-1)
    merged = rows.numpy() if kept is None else np.concatenate([kept, rows.numpy()])
    best = np.argsort(-merged[..., 0], axis=0, kind="stable")[:k]  # kept rows first on ties
    return np.take_along_axis(merged, best[..., None], axis=0)


def save_stats(path: Path, stats: dict[int, FeatureStats], key: str) -> None:
    """``stats`` (without peaks) in one ``.npz``, with the key they were made under."""
    arrays = {f"{name}_{L}": getattr(st, name) for L, st in stats.items()
              for name in ("token_count", "example_count", "act_sum")}
    counts = {f"n_{L}": np.array([st.n_tokens, st.n_examples]) for L, st in stats.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, key=np.array(key), layers=np.array(sorted(stats)), **arrays, **counts)
    tmp.replace(path)


def load_stats(path: Path, key: str) -> dict[int, FeatureStats] | None:
    """The statistics :func:`save_stats` wrote under ``key``; None when the file is missing, unreadable
    or made under another key (never a stale table)."""
    try:
        with np.load(path) as z:
            if str(z["key"]) != key:
                return None
            return {int(L): FeatureStats(int(z[f"n_{L}"][0]), int(z[f"n_{L}"][1]), z[f"token_count_{L}"],
                                         z[f"example_count_{L}"], z[f"act_sum_{L}"]) for L in z["layers"]}
    except (OSError, KeyError, ValueError):
        return None


def recall_candidates(task: dict[int, FeatureStats], ref: dict[int, FeatureStats], cfg: RecallConfig,
                      attribution_t: dict[int, np.ndarray] | None = None) -> tuple[list[Candidate], pa.Table]:
    """Rank features by the recall rule; return the top candidates and a table of all features.

    With ``attribution_t`` (per layer, each feature's attribution t-statistic on the probe
    set: ``recall.method: attribution``) the eligible features that help (t > 0) are ranked
    by it instead of by the recall score."""
    rows: list[Candidate] = []
    columns: dict[str, list[Any]] = {k: [] for k in ("layer", "feature", "task_freq", "ref_freq",
                                                       "task_example_freq", "task_mean_act", "ref_mean_act",
                                                       "enrichment", "recall_score", "attribution_t")}
    for layer, t in task.items():
        r = ref[layer]
        p_t, p_r = t.freq, r.freq
        a_t = t.mean_active
        active = a_t[t.token_count > 0]
        mean_a = float(active.mean()) if active.size else 1.0
        enrich = np.log((p_t + cfg.epsilon) / (p_r + cfg.epsilon))
        score = p_t * enrich * (a_t / mean_a)
        eligible = (t.example_freq >= cfg.min_example_freq) & (p_t >= cfg.min_task_freq) & (enrich > 0)
        attr = attribution_t[layer] if attribution_t is not None else np.full(len(p_t), np.nan)
        if attribution_t is not None:
            eligible &= attr > 0
        score = np.where(eligible, score, -np.inf)
        for name, values in (("layer", np.full(len(p_t), layer)), ("feature", np.arange(len(p_t))),
                             ("task_freq", p_t), ("ref_freq", p_r), ("task_example_freq", t.example_freq),
                             ("task_mean_act", a_t), ("ref_mean_act", r.mean_active),
                             ("enrichment", enrich), ("recall_score", np.where(eligible, score, np.nan)),
                             ("attribution_t", attr)):
            columns[name].extend(values.tolist())
        for j in np.flatnonzero(eligible):
            rows.append(Candidate(feature_key(layer, int(j)), layer, int(j),
                                  task_freq=float(p_t[j]), ref_freq=float(p_r[j]),
                                  task_example_freq=float(t.example_freq[j]),
                                  task_mean_act=float(a_t[j]), ref_mean_act=float(r.mean_active[j]),
                                  enrichment=float(enrich[j]), recall_score=float(score[j]),
                                  attribution_t=None if attribution_t is None else float(attr[j])))
    rank_by = (lambda c: -c.attribution_t) if attribution_t is not None else (lambda c: -c.recall_score)
    rows.sort(key=lambda c: (rank_by(c), c.layer, c.feature))
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


class NoFeaturesPassed(RuntimeError):
    """The causal filter kept no candidate and ``filter.on_empty`` is ``stop``."""


def _by_layer(candidates: Sequence[Candidate]) -> dict[int, list[Candidate]]:
    out: dict[int, list[Candidate]] = {}
    for c in candidates:
        out.setdefault(c.layer, []).append(c)
    return out


def screen_candidates(lm: LoadedModel, saes: dict[int, SAE], candidates: list[Candidate],
                      validation: Sequence[TokenizedExample], cfg: FilterConfig, seed: int = 0,
                      batch_tokens: int = 4096, batch_size: int = 16) -> tuple[list[Candidate], dict[str, float]]:
    """The ``screened`` estimator's first step: each candidate's gradient-attribution t on the
    selecting half (:func:`igds.filter_stats.split_halves` with ``seed``; every example without
    replication), and the ``cfg.confirm_top`` candidates with the largest t (ties by key)."""
    rows = split_halves(len(validation), seed)[0] if cfg.replication else np.arange(len(validation))
    selecting = [validation[i] for i in rows]
    t: dict[str, float] = {}
    for layer, group in _by_layer(candidates).items():
        screen = attribution_screen(lm, saes[layer], layer, selecting, positions=cfg.positions,
                                    norm_guard=cfg.norm_guard, batch_tokens=batch_tokens, batch_size=batch_size)
        t.update({c.key: float(screen.t[c.feature]) for c in group})
    chosen = sorted(candidates, key=lambda c: (-t[c.key], c.key))[: cfg.confirm_top]
    return chosen, t


def per_example_effects(lm: LoadedModel, saes: dict[int, SAE], candidates: list[Candidate],
                        validation: Sequence[TokenizedExample], cfg: FilterConfig, batch_tokens: int = 4096,
                        batch_size: int = 16) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each candidate's effect per validation example (``cfg.estimator``, ``screened`` measuring
    the candidates it is given as ``central`` does; positive = helps), and the unedited losses.
    NaN where an example has no loss token."""
    fill = pad_id(lm.tokenizer)
    special = list(getattr(lm.tokenizer, "all_special_ids", []) or [])
    central = cfg.estimator in ("central", "screened")
    alphas = (cfg.alpha, 2.0 - cfg.alpha) if central else (cfg.alpha,)
    effects = {c.key: np.full(len(validation), np.nan) for c in candidates}
    base_all = np.full(len(validation), np.nan)
    by_layer = _by_layer(candidates)
    if cfg.estimator == "gradient":  # first order, every candidate from one backward pass per batch
        for layer, group in by_layer.items():
            screen = attribution_screen(lm, saes[layer], layer, validation, positions=cfg.positions,
                                        batch_tokens=batch_tokens, batch_size=batch_size)
            for c in group:  # the derivative along the edit, scaled to the step alpha - 1 the others take
                effects[c.key] = (cfg.alpha - 1.0) * screen.per_example[:, c.feature].astype(np.float64)
        return effects, base_all
    batches = length_batches([len(e.ids) for e in validation], batch_tokens, batch_size)
    bar = tqdm(total=sum(len(b) for b in batches) * len(by_layer), desc="causal filter", unit="ex", leave=False)
    for layer, group in by_layer.items():
        edits = [(c.feature, a) for c in group for a in alphas]  # per candidate: alpha, then 2 - alpha
        for idx in batches:
            exs = [validation[i] for i in idx]
            ids, mask = pad(exs, fill)
            tgt = target_mask(exs, ids.shape[1], "response")
            edit = count_mask(exs, ids.shape[1], cfg.positions)
            base, losses = edit_losses(lm, saes[layer], layer, edits, ids, mask, tgt, edit,
                                       cfg.features_per_forward, cfg.cached_prefix, special, cfg.norm_guard)
            base_np = base.cpu().numpy()
            losses_np = losses.cpu().numpy().reshape(len(group), len(alphas), len(idx))
            base_all[idx] = base_np
            for k, c in enumerate(group):
                amplified = losses_np[k, 0]
                effects[c.key][idx] = (losses_np[k, 1] - amplified) / 2 if central else base_np - amplified
            bar.update(len(idx))
    bar.close()
    return effects, base_all


def intervention_effects(lm: LoadedModel, saes: dict[int, SAE], candidates: list[Candidate],
                         validation: Sequence[TokenizedExample], cfg: FilterConfig, seed: int = 0,
                         batch_tokens: int = 4096, batch_size: int = 16) -> None:
    """Fill each candidate's ``effect``: the per-example effects and their tests (:func:`igds.filter_stats.judge`,
    halves split by ``seed``)."""
    edited, screen_t = candidates, {}
    if cfg.estimator == "screened":  # only the screen's best get edited; the rest stay NaN (untested)
        edited, screen_t = screen_candidates(lm, saes, candidates, validation, cfg, seed, batch_tokens, batch_size)
    measured, base = per_example_effects(lm, saes, edited, validation, cfg, batch_tokens, batch_size)
    effects = {c.key: measured.get(c.key, np.full(len(validation), np.nan)) for c in candidates}
    verdicts = judge([effects[c.key] for c in candidates], cfg.q, cfg.min_delta, cfg.replication, seed)
    base_loss = float(np.nanmean(base)) if np.isfinite(base).any() else None
    for c, v in zip(candidates, verdicts):
        d = effects[c.key]
        e = v.estimate
        c.effect = Effect("ref_loss", cfg.alpha, e.n, e.mean, e.se, e.ci_low, e.ci_high, base_loss=base_loss,
                          per_example=[round(float(x), 6) for x in d[~np.isnan(d)]], estimator=cfg.estimator,
                          p_value=v.p_value, p_adjusted=v.p_adjusted, half_a_mean=v.half_a_mean,
                          half_b_mean=v.half_b_mean, half_b_p=v.half_b_p, confirmed=v.confirmed,
                          screen_t=screen_t.get(c.key), edited=c.key in measured if screen_t else None)


def passes(effect: Effect, q: float) -> bool:
    """The keep rule on a tested effect: BH-adjusted p <= q, and confirmed on half B when split."""
    return effect.p_adjusted is not None and effect.p_adjusted <= q and effect.confirmed is not False


def choose_validated(candidates: list[Candidate], cfg: FilterConfig) -> tuple[list[str], list[str], str]:
    """Apply the keep rule; returns (validated keys, warnings, the outcome in words)."""
    if not cfg.enabled:
        for c in candidates:
            c.validated = True
        return [c.key for c in candidates], [], f"filter off: kept all {len(candidates)} candidates (recall only)"
    effects = {c.key: c.effect for c in candidates if c.effect is not None}
    if len(effects) < len(candidates):
        raise ValueError("choose_validated needs every candidate's effect: run intervention_effects first")
    passing = sorted((c for c in candidates if passes(effects[c.key], cfg.q)),
                     key=lambda c: (effects[c.key].p_value, c.key))
    if cfg.max_features is not None:
        passing = passing[: cfg.max_features]
    if passing:
        keep = {c.key for c in passing}
        for c in candidates:
            c.validated = c.key in keep
        how = "confirmed on the held-out half" if cfg.replication else "no replication"
        return [c.key for c in passing], [], f"kept {len(passing)} of {len(candidates)} candidates " \
                                             f"(BH q={cfg.q}, {how})"
    adjusted = [e.p_adjusted for e in effects.values() if e.p_adjusted is not None]
    best = min(adjusted) if adjusted else float("nan")
    selected = sum(1 for e in effects.values() if e.p_adjusted is not None and e.p_adjusted <= cfg.q)
    why = f"{selected} selected on half A, none confirmed on half B; " if selected else ""
    if cfg.on_empty == "stop":
        raise NoFeaturesPassed(
            f"causal filter: none of {len(candidates)} candidate features passed ({why}best BH-adjusted p "
            f"{best:.3g}, filter.q={cfg.q}); set filter.on_empty=recall_only to keep every candidate unfiltered, "
            "or use more validation examples (filter.validation_size)")
    for c in candidates:
        c.validated = True
    outcome = "none passed; kept recall-only candidates"
    warning = (f"causal filter: none of {len(candidates)} candidates passed ({why}best BH-adjusted p {best:.3g}, "
               f"q={cfg.q}); kept all of them unfiltered (filter.on_empty=recall_only)")
    return [c.key for c in candidates], [warning], outcome


def describe_peaks(lm: LoadedModel, candidates: list[Candidate], stats: dict[int, FeatureStats],
                   n_tokens: int = 10) -> None:
    """Fill each candidate's ``peak_template_share`` and ``peak_tokens`` from its strongest
    activations over the probe (``stats`` from :func:`firing_stats` with ``peaks``).

    The share counts the peaks that are not content (:mod:`igds.content`: system prompt,
    chat template, a prompt_template's words) among those whose example knows its content;
    None when none does or the feature never fires."""
    for c in candidates:
        peaks = stats[c.layer].peaks[:, c.feature]
        peaks = peaks[peaks[:, 0] > 0]
        known = peaks[peaks[:, 2] >= 0]
        c.peak_template_share = round(float((known[:, 2] == 0).mean()), 4) if len(known) else None
        counts = Counter(int(t) for t in peaks[:, 1])
        c.peak_tokens = [[lm.tokenizer.decode([t]), n] for t, n in counts.most_common(n_tokens)] or None


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
                       stats_path: str | Path | None = None,
                       reference_cache: tuple[Path, str] | None = None) -> FeatureSet:
    """Stage 1: recall candidates, filter them causally, return a :class:`FeatureSet`.

    ``reference_cache`` = (file, key): the reference's firing statistics are read from the file when
    it holds them under ``key`` (they depend on the model, SAEs, reference tokens and positions, never
    on the task), else computed and written there."""
    task_stats = firing_stats(lm, saes, probe, recall.positions, desc="recall: task", peaks=PEAKS)
    ref_stats = load_stats(*reference_cache) if reference_cache else None
    if ref_stats is not None and sorted(ref_stats) == sorted(saes):
        log.info("recall: reference statistics reused from %s", reference_cache[0])
    else:
        ref_stats = firing_stats(lm, saes, reference, recall.positions, desc="recall: reference")
        if reference_cache:
            save_stats(reference_cache[0], ref_stats, reference_cache[1])
    attribution = None
    if recall.method == "attribution" and not filt.random_candidates:
        # where the filter will edit: the screen ranks features by the same edit, to first order
        attribution = {L: attribution_screen(lm, sae, L, probe, positions=filt.positions,
                                             norm_guard=filt.norm_guard).t for L, sae in saes.items()}
    ranked, table = recall_candidates(task_stats, ref_stats, recall, attribution)
    if stats_path is not None:
        atomic_write_parquet(stats_path, table)
    candidates = random_candidates(task_stats, recall.n_candidates, seed) if filt.random_candidates else ranked
    if not candidates:
        raise RuntimeError("recall found no candidate features: no feature fires on at least "
                           f"{recall.min_example_freq:.0%} of task examples more often than on the reference"
                           f"{' with a positive attribution' if attribution is not None else ''}; "
                           "lower recall.min_example_freq or use more probe examples")
    if filt.enabled:
        intervention_effects(lm, saes, candidates, validation, filt, seed)
    validated, warnings, outcome = choose_validated(candidates, filt)
    describe_peaks(lm, candidates, task_stats)
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
        filter_outcome=outcome,
    )
    return FeatureSet(candidates, validated, info, warnings)
