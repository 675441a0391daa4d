"""Stage 2 on a Ray cluster: the same score table as :func:`igds.scoring.score_pool`.

The unit of work is the local engine's resumable shard (``score.shard_size`` examples):

1. The driver streams the pool through igds's own readers (``iter_examples``: the same
   dialect detection, ``FILE:LINE: field`` errors, duplicate-id checks and ``--skip-bad``
   rejects as the local engine), cuts it into the same shards, and skips every shard
   already in ``RUN_DIR/cache/scores-<key>/`` (the key is the local engine's, so a run
   started locally resumes on Ray and the other way round).
2. The missing shards become a Ray Dataset, one row per shard (the examples pickled);
   ``map_batches`` runs :class:`ShardScorer`, a callable class that loads the model and
   SAEs once per actor and scores a shard with :class:`igds.scoring.FeatureScorer`,
   exactly the call the local engine makes. ``score.ray_actors`` actors, each with
   ``score.ray_cpus_per_actor`` CPUs and ``score.ray_gpus_per_actor`` GPUs; the forward
   batches inside a shard follow ``score.batch_size`` / ``score.batch_tokens``.
3. The driver writes each scored shard into the cache as it arrives (atomically, so a
   killed driver loses at most the shards in flight), then assembles ``scores.parquet``,
   ``top_examples.json``, the shard summary and ``rejects.jsonl`` with the local engine's
   own code, which re-checks every shard's ids against the pool.

Trade-off: the pool is parsed on the driver (single-threaded, twice: once to ship
shards, once to check them) and the pending shards sit in Ray's object store (spilled to
disk when it fills). In exchange the validation is igds's and not a second reader's,
and workers need no view of the pool file, only of the model and SAEs. Parsing JSON
is cheap beside a forward pass, so the driver is not the bottleneck until far more
actors than one driver's parse rate can feed.

Workers write nothing: results travel back to the driver, so a cluster needs no shared
filesystem for the run directory. Every worker must be able to import igds and read
``model.name`` and ``sae.paths`` (a Hugging Face id, or a path present on every node).
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .artifacts import atomic_write_json, atomic_write_parquet
from .config import RunConfig
from .data import iter_examples
from .features import FeatureSet
from .model import LoadedModel, load_model
from .pipeline import data_spec, load_saes, resolve_source
from .sae import SAE
from .scoring import FeatureScorer, score_cache_key, score_pool, shards


class ShardScorer:
    """The ``map_batches`` callable: loads the model and SAEs once per actor, scores shards."""

    def __init__(self, cfg: RunConfig, features: FeatureSet) -> None:
        device = cfg.model.device
        if device == "auto":
            # Ray hides GPUs an actor did not ask for; be explicit so a CPU actor never
            # reaches for a GPU another actor holds.
            device = "cuda" if cfg.score.ray_gpus_per_actor > 0 else "cpu"
        lm = load_model(cfg.model.name, device, cfg.model.dtype, cfg.model.trust_remote_code)
        self.scorer = FeatureScorer(lm, load_saes(cfg, lm), features, cfg.score, cfg.use_chat_template)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tables, extras, errors = [], [], []
        for start, payload in zip(batch["start"], batch["payload"]):
            try:
                table, tops, n_truncated = self.scorer.score(pickle.loads(payload), int(start))
            except Exception as err:  # noqa: BLE001 - carried to the driver, re-raised there as is
                # Ray wraps a worker's exception in its own types and loses the original
                # on the way; returning it as data keeps the FloatingPointError naming
                # file:line and id that the local engine would raise.
                tables.append(b"")
                extras.append("")
                errors.append(pickle.dumps(err))
                continue
            tables.append(_to_ipc(table))
            extras.append(json.dumps({"tops": tops, "n_truncated": n_truncated}))
            errors.append(b"")
        return {"shard": np.asarray(batch["shard"], dtype=np.int64), "table": np.array(tables, dtype=object),
                "extra": np.array(extras, dtype=object), "error": np.array(errors, dtype=object)}


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(blob: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(blob)).read_all()


def pending_shards(cfg: RunConfig, lm: LoadedModel, saes: dict[int, SAE], features: FeatureSet,
                   run_dir: Path) -> tuple[Path, list[dict[str, Any]], int]:
    """The cache folder, the shards it lacks (as Dataset rows) and the pool's shard count."""
    score = cfg.score
    source, spec = resolve_source(cfg.pool, "pool"), data_spec(cfg.pool)
    key = score_cache_key(lm.name, saes, features, score, source, spec, cfg.use_chat_template, cfg.pool.limit,
                          str(lm.dtype).replace("torch.", ""), cfg.pool.split)
    shard_dir = run_dir / "cache" / f"scores-{key}"
    # The same stream as the local engine: bad rows raise here (or are skipped) exactly as there.
    stream = iter_examples(source, spec, split=cfg.pool.split, skip_bad=cfg.skip_bad)
    if cfg.pool.limit is not None:
        stream = (ex for _, ex in zip(range(cfg.pool.limit), stream))
    rows, offset, n = [], 0, 0
    for n, chunk in enumerate(shards(stream, score.shard_size), start=1):
        s = n - 1
        if not ((shard_dir / f"shard-{s:05d}.parquet").exists() and (shard_dir / f"shard-{s:05d}.json").exists()):
            rows.append({"shard": s, "start": offset, "payload": pickle.dumps(chunk)})
        offset += len(chunk)
    return shard_dir, rows, n


def _run_on_ray(cfg: RunConfig, features: FeatureSet, rows: list[dict[str, Any]], shard_dir: Path,
                scorer_cls: type[ShardScorer]) -> None:
    import ray
    from ray.util.annotations import RayDeprecationWarning

    score = cfg.score
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    with warnings.catch_warnings():
        # Ray Data restarts dead actors and retries their tasks without end unless
        # max_task_retries is given, and in Ray 2.60 the only way to give it is the
        # remote-args dict that Ray deprecates (removed in 2.64, hence ray<2.64 in the
        # extra): a shard that kills every worker would otherwise loop forever.
        warnings.simplefilter("ignore", RayDeprecationWarning)
        ds = ds.map_batches(
            scorer_cls, batch_size=1, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=score.ray_actors),
            num_cpus=score.ray_cpus_per_actor, num_gpus=score.ray_gpus_per_actor or None,
            fn_constructor_kwargs={"cfg": cfg, "features": features},
            max_restarts=-1, max_task_retries=score.ray_max_retries)
    done = 0
    try:
        for row in ds.iter_rows():
            if row["error"]:
                raise pickle.loads(row["error"])  # finished shards stay cached for the next run
            s = int(row["shard"])
            # sidecar first, then the table: a shard counts as done only when both exist
            atomic_write_json(shard_dir / f"shard-{s:05d}.json", json.loads(row["extra"]))
            atomic_write_parquet(shard_dir / f"shard-{s:05d}.parquet", _from_ipc(row["table"]))
            done += 1
    except ray.exceptions.RayError as err:
        raise RuntimeError(
            f"Ray gave up on a shard ({type(err).__name__}), for example after its worker died more than "
            f"score.ray_max_retries={score.ray_max_retries} times; the {done} shards this run finished are cached, "
            f"with any from earlier runs, in {shard_dir}: run again to resume") from err
    if done != len(rows):
        raise RuntimeError(f"ray returned {done} of {len(rows)} shards; run again to resume")


def score_pool_ray(cfg: RunConfig, features: FeatureSet, run_dir: str | Path, *,
                   lm: LoadedModel | None = None, saes: dict[int, SAE] | None = None,
                   scorer_cls: type[ShardScorer] = ShardScorer) -> pa.Table:
    """Score ``cfg.pool`` on Ray into ``RUN_DIR/scores.parquet`` (resumable; same table as local).

    Connects to ``score.ray_address`` (``auto`` = the running cluster; None = start a local
    Ray) unless Ray is already initialised. ``lm``/``saes`` are the driver's copies, used
    only for the cache key and to assemble the table; loaded on CPU when not given.
    ``scorer_cls`` is the actor class, a :class:`ShardScorer` or a subclass of it (to
    instrument or wrap the scoring of a shard)."""
    import ray

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if lm is None:
        lm = load_model(cfg.model.name, "cpu", cfg.model.dtype, cfg.model.trust_remote_code)
    saes = saes if saes is not None else load_saes(cfg, lm)
    shard_dir, rows, n_shards = pending_shards(cfg, lm, saes, features, run_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    print(f"ray: scoring {len(rows)} of {n_shards} shards ({n_shards - len(rows)} cached in {shard_dir})")
    if rows:
        started = not ray.is_initialized()
        if started:
            ray.init(address=cfg.score.ray_address, include_dashboard=False)
        try:
            _run_on_ray(cfg, features, rows, shard_dir, scorer_cls)
        finally:
            if started:
                ray.shutdown()
    # Every shard is cached now: the local engine assembles (and re-checks) the table.
    table = score_pool(lm, saes, features, resolve_source(cfg.pool, "pool"), data_spec(cfg.pool), cfg.score,
                       run_dir, use_chat_template=cfg.use_chat_template, skip_bad=cfg.skip_bad,
                       limit=cfg.pool.limit, max_new_shards=0, split=cfg.pool.split)
    if table is None:
        raise RuntimeError(f"{shard_dir}: shards are missing after the Ray run; run again to resume")
    return table
