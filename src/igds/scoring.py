"""Stage 2 of IGDS: the Feature-Resonant Score of every candidate example.

For each pool example, each validated feature's activation is aggregated over the
counted tokens (``mean`` by default; ``max``; ``sum``, which grows with length -
long examples win - so report the score-length correlation if you use it), divided
by the feature's mean activation on the task probe set (so that a feature firing at
3.0 and one firing at 30.0 weigh the same), and the features are combined
(:func:`combine_scores`) into the example's Feature-Resonant Score: by their mean (the
paper's; or sum) per row, or, since dividing by a mean still lets a sparse feature with
rare huge values dominate the mean (method audit §3.7), by a weighted mean of each
feature's z-score or percentile rank over the whole pool, weighted by the feature's
causal effect (:func:`effect_weights`).

Scoring streams the pool in shards of ``shard_size`` examples. Each finished shard is
written atomically under ``RUN_DIR/cache/scores-<key>/``, where the key hashes
everything the scores depend on (model, SAEs, validated features and scales, pool
content, scoring settings). A killed run resumes from its last finished shard and
produces a byte-identical ``scores.parquet``. Each shard keeps every feature's column
(``f:<key>``), so the pool-wide combinations (``zscore``, ``rank``) are computed once all
shards are in (:meth:`ShardStore.assemble`); a shard's own ``score`` column holds them over
that shard alone. :class:`ShardStore` owns that cache; an engine (:func:`compute_local`
here, :mod:`igds.ray_engine` on Ray) only scores the shards the store says are pending,
and :func:`score_pool` runs the one sequence: pending -> compute -> assemble.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from .activations import iter_activation_batches
from .artifacts import atomic_write_json, atomic_write_parquet, read_json, stable_hash
from .config import ScoreConfig, cache_view
from .data import DataSpec, Example, Rejects, iter_examples, tokenize_example
from .feature_set import Candidate, FeatureSet
from .inputs import count_records, precision, source_fingerprint
from .model import LoadedModel
from .sae import SAE
from .selection import make_score_table

AGGREGATIONS = ("mean", "sum", "max")
COMBINATIONS = ("mean", "sum", "zscore", "rank")
POOL_COMBINATIONS = ("zscore", "rank")  # statistics of the whole pool, computed when the table is assembled

log = logging.getLogger(__name__)


class FeatureScorer:
    """Scores lists of examples against a fixed set of validated features.

    Holds the model and SAEs, so an engine can build one per worker and reuse it."""

    def __init__(self, lm: LoadedModel, saes: dict[int, SAE], features: FeatureSet, cfg: ScoreConfig,
                 use_chat_template: bool = True) -> None:
        if cfg.aggregation not in AGGREGATIONS:
            raise ValueError(f"score.aggregation must be one of {AGGREGATIONS}, got {cfg.aggregation!r}")
        if cfg.combine not in COMBINATIONS:
            raise ValueError(f"score.combine must be one of {COMBINATIONS}, got {cfg.combine!r}")
        self.lm, self.saes, self.cfg, self.use_chat_template = lm, saes, cfg, use_chat_template
        self.features = features.validated_features
        if not self.features:
            raise ValueError("the feature set has no validated features to score with")
        self.keys = [c.key for c in self.features]
        self.layers = sorted({c.layer for c in self.features})
        missing = [L for L in self.layers if L not in saes]
        if missing:
            raise ValueError(f"validated features use layers {missing} but no SAE was loaded for them")
        self.columns = {L: [i for i, c in enumerate(self.features) if c.layer == L] for L in self.layers}
        self.ids = {L: [self.features[i].feature for i in cols] for L, cols in self.columns.items()}
        self.scale = np.array([(1.0 if c.scale is None else c.scale) if cfg.normalize else 1.0 for c in self.features])

    def tokenize(self, examples: Sequence[Example]) -> tuple[list[Any], int]:
        toks = [tokenize_example(self.lm.tokenizer, ex, self.cfg.max_length, self.use_chat_template)
                for ex in examples]
        return toks, sum(t.truncated for t in toks)

    @torch.no_grad()
    def activations(self, examples: Sequence[Example]) -> dict[str, Any]:
        """Aggregated raw activations (n, F), counted tokens (n,) and top-token windows."""
        toks, n_truncated = self.tokenize(examples)
        n, F = len(toks), len(self.features)
        acts = np.zeros((n, F), dtype=np.float64)
        n_tokens = np.zeros(n, dtype=np.int64)
        tops: list[list[tuple[float, int, dict[str, Any]]]] = [[] for _ in range(F)]
        cfg = self.cfg
        for batch in iter_activation_batches(self.lm, toks, self.layers, cfg.positions, cfg.batch_tokens,
                                             cfg.batch_size):
            counted = batch.counted
            per_tok = torch.zeros(*counted.shape, F, device=counted.device)
            for L in self.layers:
                per_tok[..., self.columns[L]] = self.saes[L].encode(batch.resid[L], self.ids[L]).float()
            per_tok = per_tok * counted.unsqueeze(-1)
            if not torch.isfinite(per_tok).all():
                bad = [examples[batch.indices[i]] for i in range(len(batch.indices))
                       if not torch.isfinite(per_tok[i]).all()]
                raise FloatingPointError(
                    f"{bad[0].source}:{bad[0].line}: non-finite feature activations for example "
                    f"{bad[0].id!r} (NaN/inf in the model's residual stream; check the model dtype)")
            count = counted.sum(dim=1)
            if cfg.aggregation == "max":
                agg = per_tok.amax(dim=1)
            else:
                agg = per_tok.sum(dim=1)
                if cfg.aggregation == "mean":
                    agg = agg / count.clamp_min(1).unsqueeze(-1)
            if not torch.isfinite(agg).all():  # a float32 sum can overflow even when every token is finite
                i = int((~torch.isfinite(agg)).any(dim=1).nonzero()[0])
                ex = examples[batch.indices[i]]
                raise FloatingPointError(f"{ex.source}:{ex.line}: feature activations of example {ex.id!r} "
                                         f"overflow when aggregated ({cfg.aggregation}); use aggregation=mean")
            acts[batch.indices] = agg.double().cpu().numpy()
            n_tokens[batch.indices] = count.cpu().numpy()
            if cfg.top_examples > 0:
                self._keep_tops(tops, batch, per_tok, agg, examples)
        return {"acts": acts, "n_tokens": n_tokens, "tops": tops, "n_truncated": n_truncated}

    def _keep_tops(self, tops, batch, per_tok, agg, examples) -> None:
        k = self.cfg.top_examples
        tok = self.lm.tokenizer
        agg_np = agg.cpu().numpy()
        for f in range(len(self.features)):
            heap = tops[f]
            for b, ex_i in enumerate(batch.indices):
                value = float(agg_np[b, f])
                if value <= 0 or (len(heap) >= k and value <= heap[0][0]):
                    continue
                length = int(batch.attention_mask[b].sum())
                col = per_tok[b, :length, f]
                peak = int(col.argmax())
                lo, hi = max(0, peak - 24), min(length, peak + 24)
                ids = batch.input_ids[b, lo:hi].tolist()
                item = {"id": examples[ex_i].id, "value": round(value, 5),
                        "tokens": [tok.decode([t]) for t in ids],
                        "acts": [round(float(a), 4) for a in col[lo:hi].tolist()]}
                entry = (value, -ex_i, item)
                if len(heap) < k:
                    heapq.heappush(heap, entry)
                else:
                    heapq.heapreplace(heap, entry)

    def score(self, examples: Sequence[Example], start_index: int = 0) -> tuple[pa.Table, dict[str, list], int]:
        """A score table for ``examples`` (indices from ``start_index``), top windows, truncated count."""
        out = self.activations(examples)
        norm = out["acts"] / np.where(self.scale > 0, self.scale, 1.0)
        # zscore / rank need the whole pool's statistics: a shard leaves the score empty (NaN) and
        # the assembly fills it from the f: columns (a per-shard z-score would be a different number)
        score = np.full(len(examples), np.nan) if self.cfg.combine in POOL_COMBINATIONS else \
            combine_scores(norm, self.cfg.combine)
        table = make_score_table([e.id for e in examples], score, out["n_tokens"],
                                 extra={f"f:{k}": norm[:, i] for i, k in enumerate(self.keys)},
                                 start_index=start_index)
        tops = {}
        for f, key in enumerate(self.keys):
            for value, neg_i, item in out["tops"][f]:
                tops.setdefault(key, []).append({**item, "index": start_index - neg_i})
        return table, tops, out["n_truncated"]


def effect_weights(features: Sequence[Candidate]) -> np.ndarray:
    """Each feature's weight in the pool-wide combinations: its Stage 1b effect (``mean_delta``, the
    loss drop when amplified) clipped at 0; when no feature has one (the filter was off) each weighs 1;
    normalised to sum 1. When every weight is 0 the features weigh the same (a warning says so)."""
    measured = [c.effect is not None and math.isfinite(c.effect.mean_delta) for c in features]
    # a feature without a measured effect weighs 1 only when none has one: beside effects in nats it would dominate
    raw = np.array([max(0.0, c.effect.mean_delta) if ok else (0.0 if any(measured) else 1.0)
                    for c, ok in zip(features, measured)])
    if raw.sum() <= 0:
        log.warning("no validated feature has a positive effect; combining them with equal weights")
        raw = np.ones(len(features))
    return raw / raw.sum()


def percentiles(x: np.ndarray) -> np.ndarray:
    """Percentile rank in [0, 1] of each value of ``x`` (ties share their average rank; one value: 0.5)."""
    if len(x) < 2:
        return np.full(len(x), 0.5)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts + 1) / 2  # 0-based rank of each distinct value, ties averaged
    return average_rank[inverse.reshape(-1)] / (len(x) - 1)


def combine_scores(norm: np.ndarray, how: str, weights: np.ndarray | None = None) -> np.ndarray:
    """The Feature-Resonant Score of each row of ``norm`` (rows x validated features).

    ``mean`` / ``sum``: of the row's features (unweighted, the paper's). ``zscore``: each
    feature column standardised over the rows (a constant column is 0 everywhere); ``rank``:
    each column's percentile rank over the rows; both then averaged with ``weights``
    (:func:`effect_weights`; required for them). Both are statistics of the rows given, so
    :meth:`ShardStore.assemble` computes them over the whole pool. ``normalize`` does not
    change them (a positive per-feature scale leaves z-scores and ranks as they are)."""
    if how == "mean":
        return norm.mean(axis=1)
    if how == "sum":
        return norm.sum(axis=1)
    if how == "zscore":
        std = norm.std(axis=0)
        columns = np.where(std > 0, (norm - norm.mean(axis=0)) / np.where(std > 0, std, 1.0), 0.0)
    elif how == "rank":
        columns = np.stack([percentiles(norm[:, f]) for f in range(norm.shape[1])], axis=1)
    else:
        raise ValueError(f"score.combine must be one of {COMBINATIONS}, got {how!r}")
    if weights is None:
        raise ValueError(f"score.combine={how} needs the features' weights (effect_weights)")
    return columns @ weights


def pool_combination(table: pa.Table, validated: Sequence[Candidate], how: str) -> tuple[np.ndarray, dict[str, float]]:
    """(score, weight per feature key) of the pool-wide combination ``how`` of ``table``'s ``f:`` columns
    for the ``validated`` features, each weighted by :func:`effect_weights`."""
    columns = [f"f:{c.key}" for c in validated]
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"the score table lacks the columns {missing} of its validated features")
    weights = effect_weights(validated)
    norm = np.stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in columns], axis=1)
    return combine_scores(norm, how, weights), {c.key: round(float(w), 6) for c, w in zip(validated, weights)}


def merge_tops(parts: Sequence[dict[str, list]], k: int) -> dict[str, list]:
    merged: dict[str, list] = {}
    for part in parts:
        for key, items in part.items():
            merged.setdefault(key, []).extend(items)
    return {key: sorted(items, key=lambda it: (-it["value"], it["index"]))[:k] for key, items in merged.items()}


def shards(stream: Iterator[Example], size: int) -> Iterator[list[Example]]:
    chunk: list[Example] = []
    for ex in stream:
        chunk.append(ex)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def score_cache_key(lm_name: str, saes: dict[int, SAE], features: FeatureSet, cfg: ScoreConfig,
                    pool_fingerprint: str, spec: DataSpec, use_chat_template: bool, limit: int | None,
                    dtype: str = "float32", split: str | None = None, weights: dict[str, Any] | None = None) -> str:
    """Hash of everything the scores depend on: ``dtype`` is :func:`igds.inputs.precision` of
    where the scores are computed (bf16 and fp32 shards never mix), ``pool_fingerprint`` the pool's
    :func:`~igds.inputs.source_fingerprint` (hashed once per run by the caller), ``weights`` the
    :func:`igds.inputs.weights_fingerprint` of the model and SAE files (None: their names only)."""
    relevant = {**cache_view(cfg), "shard_size": cfg.shard_size}  # shard_size: the store's layout
    return stable_hash({
        "model": lm_name, "dtype": dtype,
        "weights": weights,
        "saes": [s.describe() for _, s in sorted(saes.items())],
        "features": [(c.key, c.scale) for c in features.validated_features],
        "score": relevant, "pool": pool_fingerprint, "spec": asdict(spec),
        "chat": use_chat_template, "limit": limit, "split": split,
    })


@dataclass
class ScoreSummary:
    """What Stage 2 counted over the pool (``RUN_DIR/cache/scores-<key>/summary.json``)."""

    pool_size: int  # rows scored
    n_truncated: int  # rows longer than max_length, truncated
    n_rejected: int  # pool records skipped under --skip-bad
    max_length: int

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> "ScoreSummary":
        return cls(**read_json(path))


def pool_meta(source: str, fingerprint: str, ids: Sequence[str]) -> dict[str, Any]:
    """The pool a score table was computed on, for the table's ``igds`` metadata: its source,
    :func:`~igds.inputs.source_fingerprint`, row count and a hash of its ids in order."""
    return {"source": source, "fingerprint": fingerprint, "rows": len(ids),
            "ids_sha": stable_hash(list(ids))}


@dataclass(frozen=True)
class Shard:
    """``examples`` of the pool, the ``index``-th shard, starting at pool row ``start``."""

    index: int
    start: int
    examples: list[Example]


class Scores(NamedTuple):
    """Stage 2's result: the score table, the top windows per feature, the pool's counts and
    the pool records skipped under ``--skip-bad`` (rows of ``rejects.jsonl``, ``section=pool``)."""

    table: pa.Table
    tops: dict[str, list]
    summary: ScoreSummary
    rejects: list[dict[str, Any]]


class ShardStore:
    """The shard cache of one scoring run: ``RUN_DIR/cache/scores-<key>/``.

    The only code that knows the layout (``shard-NNNNN.parquet`` plus its ``.json``
    sidecar), the key (one folder per key, so settings never mix) and when a shard is
    done (both files exist; the sidecar is written first). Engines only compute the
    shards :meth:`pending` yields and hand each to :meth:`put`."""

    def __init__(self, run_dir: str | Path, key: str, shard_size: int, expected_rows: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.key = key
        self.shard_size = shard_size
        self.expected_rows = expected_rows  # the pool's size where cheap to count (progress totals)
        self.dir = self.run_dir / "cache" / f"scores-{key}"
        self.n_shards = 0  # shards in the pool, known once pending() is exhausted
        self.n_computed = 0  # of them, the ones this run had to score
        self._scanned = False

    def _paths(self, index: int) -> tuple[Path, Path]:
        return self.dir / f"shard-{index:05d}.parquet", self.dir / f"shard-{index:05d}.json"

    def done(self, index: int) -> bool:
        table, side = self._paths(index)
        return table.exists() and side.exists()

    def pending(self, stream: Iterable[Example]) -> Iterator[Shard]:
        """Cut ``stream`` into shards and yield those not done; a done shard must hold the same ids."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.n_shards, self.n_computed, self._scanned, start = 0, 0, False, 0
        for index, chunk in enumerate(shards(iter(stream), self.shard_size)):
            if self.done(index):
                path = self._paths(index)[0]
                if pq.read_table(path, columns=["id"]).column("id").to_pylist() != [e.id for e in chunk]:
                    raise RuntimeError(f"{path}: cached shard does not match the pool; delete {self.dir}")
            else:
                self.n_computed += 1
                yield Shard(index, start, chunk)
            start += len(chunk)
            self.n_shards = index + 1
        self._scanned = True

    def put(self, index: int, table: pa.Table, extra: dict[str, Any]) -> None:
        """Store a scored shard (``extra``: its ``tops`` and ``n_truncated``), atomically."""
        path, side = self._paths(index)
        # sidecar first, then the table: a killed run never leaves a table without its sidecar
        atomic_write_json(side, extra)
        atomic_write_parquet(path, table)

    def assemble(self, cfg: ScoreConfig, features: FeatureSet, rejects: Rejects, pool_source: str,
                 pool_fingerprint: str) -> Scores:
        """Join every shard into ``scores.parquet`` (its ``igds`` metadata names the pool, see
        :func:`pool_meta`) and ``top_examples.json``, plus the shard summary, once all are done."""
        missing = [s for s in range(self.n_shards) if not self.done(s)]
        if not self._scanned or missing:
            raise RuntimeError(f"{self.dir}: shards are missing after scoring; run again to resume")
        tables, tops, n_truncated = [], [], 0
        for s in range(self.n_shards):
            path, side = self._paths(s)
            extra = read_json(side)
            tables.append(pq.read_table(path))
            tops.append(extra["tops"])
            n_truncated += extra["n_truncated"]
        table = pa.concat_tables(tables)
        validated = features.validated_features
        meta: dict[str, Any] = {"method": "igds", "aggregation": cfg.aggregation, "combine": cfg.combine,
                                "normalize": cfg.normalize, "features": [c.key for c in validated]}
        if cfg.combine in POOL_COMBINATIONS:
            score, meta["weights"] = pool_combination(table, validated, cfg.combine)
            table = table.set_column(table.column_names.index("score"), "score", pa.array(score))
        table = table.replace_schema_metadata({"igds": json.dumps({
            **meta, "pool": pool_meta(pool_source, pool_fingerprint, table.column("id").to_pylist())})})
        merged = merge_tops(tops, cfg.top_examples)
        atomic_write_parquet(self.run_dir / "scores.parquet", table)
        atomic_write_json(self.run_dir / "top_examples.json", merged)
        summary = ScoreSummary(pool_size=table.num_rows, n_truncated=n_truncated, n_rejected=len(rejects.rows),
                               max_length=cfg.max_length)
        summary.save(self.dir / "summary.json")
        return Scores(table, merged, summary, [{"section": "pool", **row} for row in rejects.rows])


# An engine: scores the shards it is given and hands each to ``store.put`` as it finishes.
Compute = Callable[[Iterable[Shard], ShardStore], None]


def compute_local(pending: Iterable[Shard], store: ShardStore, scorer: FeatureScorer) -> None:
    """The local engine: score each pending shard in this process."""
    bar = tqdm(total=store.expected_rows, desc="scoring", unit="ex", dynamic_ncols=True)
    n_tok = 0
    for shard in pending:
        table, tops, n_truncated = scorer.score(shard.examples, shard.start)
        store.put(shard.index, table, {"tops": tops, "n_truncated": n_truncated})
        n_tok += int(np.asarray(table.column("n_tokens")).sum())
        bar.update(shard.start + len(shard.examples) - bar.n)  # cached shards before this one count as done
        if bar.format_dict.get("elapsed"):
            bar.set_postfix(tok_s=f"{n_tok / max(bar.format_dict['elapsed'], 1e-9):.0f}")
    bar.close()


def score_pool(lm: LoadedModel, saes: dict[int, SAE], features: FeatureSet, pool_source: str,
               spec: DataSpec, cfg: ScoreConfig, run_dir: str | Path, *, use_chat_template: bool = True,
               skip_bad: bool = False, limit: int | None = None, split: str | None = None,
               compute: Compute | None = None, weights: dict[str, Any] | None = None,
               compute_precision: str | None = None) -> Scores:
    """Score a pool into ``RUN_DIR/scores.parquet``, resuming from the shards already cached.

    ``compute`` is the engine that scores the shards the cache lacks: by default this
    process (:func:`compute_local`); :class:`igds.ray_engine.RayCompute` on Ray. Both
    fill the same cache, so either resumes the other. The cache key takes ``weights``
    (:func:`igds.inputs.weights_fingerprint`) and ``compute_precision``, the
    :func:`igds.inputs.precision` the engine computes in (default: ``lm``'s own)."""
    compute_precision = compute_precision or precision(lm.device, lm.dtype)
    pool_fingerprint = source_fingerprint(pool_source)  # once: the cache key and the table's metadata
    key = score_cache_key(lm.name, saes, features, cfg, pool_fingerprint, spec, use_chat_template, limit,
                          compute_precision, split, weights)
    total = count_records(pool_source)
    store = ShardStore(run_dir, key, cfg.shard_size, total if limit is None or total is None else min(total, limit))
    if compute is None:
        compute = partial(compute_local, scorer=FeatureScorer(lm, saes, features, cfg, use_chat_template))
    rejects = Rejects()
    stream = iter_examples(pool_source, spec, split=split, skip_bad=skip_bad, rejects=rejects)
    if limit is not None:
        stream = (ex for i, ex in zip(range(limit), stream))
    log.info("scoring %s into %s (%s)", pool_source, store.dir, compute_precision)
    compute(store.pending(stream), store)
    if store.n_shards == 0:
        raise ValueError(f"{pool_source}: the pool has no usable examples")
    log.info("scores: %d shards, %d scored by this run, %d reused from %s", store.n_shards, store.n_computed,
             store.n_shards - store.n_computed, store.dir)
    return store.assemble(cfg, features, rejects, pool_source, pool_fingerprint)


def feature_activations(lm: LoadedModel, saes: dict[int, SAE], features: FeatureSet, examples: Sequence[Example],
                        cfg: ScoreConfig | None = None, use_chat_template: bool = True) -> np.ndarray:
    """Raw aggregated activation of each validated feature on each example: (n, F)."""
    cfg = cfg or ScoreConfig(top_examples=0)
    scorer = FeatureScorer(lm, saes, features, cfg, use_chat_template)
    return scorer.activations(examples)["acts"]
