"""Stage 2 on a Ray cluster: the same score table as the local engine.

The unit of work is the shard of :class:`igds.scoring.ShardStore` (``score.shard_size``
examples), and :func:`igds.scoring.score_pool` runs the sequence for both engines:

1. The driver streams the pool through igds's own readers (``iter_examples``: the same
   dialect detection, ``FILE:LINE: field`` errors, duplicate-id checks and ``--skip-bad``
   rejects as the local engine), and the store cuts it into shards and yields the ones
   its cache lacks (the cache is the local engine's, so a run started locally resumes on
   Ray and the other way round).
2. :class:`RayCompute` turns the pending shards into a Ray Dataset, one row per shard
   (the examples pickled); ``map_batches`` runs :class:`ShardScorer`, a callable class
   that loads the model and SAEs once per actor and scores a shard with
   :class:`igds.scoring.FeatureScorer`, exactly the call the local engine makes.
   ``score.ray_actors`` actors, each with ``score.ray_cpus_per_actor`` CPUs and
   ``score.ray_gpus_per_actor`` GPUs; the forward batches inside a shard follow
   ``score.batch_size`` / ``score.batch_tokens``.
3. The driver hands each scored shard to the store as it arrives (written atomically,
   so a killed driver loses at most the shards in flight); the store then assembles
   ``scores.parquet``, ``top_examples.json``, the shard summary and the pool rejects
   (which :func:`igds.pipeline.write_rejects` writes to ``rejects.jsonl``).

Trade-off: the pool is parsed on the driver (single-threaded) and the pending shards
sit in Ray's object store (spilled to disk when it fills). In exchange the validation
is igds's and not a second reader's, and workers need no view of the pool file, only
of the model and SAEs. Parsing JSON is cheap beside a forward pass, so the driver is
not the bottleneck until far more actors than one driver's parse rate can feed.

Workers write nothing: results travel back to the driver, so a cluster needs no shared
filesystem for the run directory. Every worker must be able to import igds and read
``model.name`` and ``sae.paths`` (a Hugging Face id, or a path present on every node).
"""

from __future__ import annotations

import json
import pickle
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from .config import RunConfig
from .feature_set import FeatureSet
from .inputs import load_saes
from .model import load_model, parse_dtype
from .scoring import FeatureScorer, Shard, ShardStore


def worker_placement(cfg: RunConfig) -> tuple[torch.device, torch.dtype]:
    """The device and dtype every actor loads the model in, resolved from the config alone
    (``model.device=auto`` follows ``score.ray_gpus_per_actor``, not the driver's devices)."""
    device = cfg.model.device
    if device == "auto":
        # Ray hides GPUs an actor did not ask for; be explicit so a CPU actor never
        # reaches for a GPU another actor holds.
        device = "cuda" if cfg.score.ray_gpus_per_actor > 0 else "cpu"
    dev = torch.device(device)
    return dev, parse_dtype(cfg.model.dtype, dev)


class ShardScorer:
    """The ``map_batches`` callable: loads the model and SAEs once per actor, scores shards."""

    def __init__(self, cfg: RunConfig, features: FeatureSet) -> None:
        device, dtype = worker_placement(cfg)
        lm = load_model(cfg.model.name, device, dtype, cfg.model.trust_remote_code)
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


# Ray Data pulls the dataset's blocks in background threads of this process (named
# "iter_threaded" in ray.data's block batching). When the loop over rows is left early (a
# shard's error is re-raised), a puller can still be waiting on the raylet for a block; shut
# Ray down under it (RayCompute does when it started Ray, a caller may) and Ray's core worker
# can end the whole process with exit code 1 and no message, losing the error being raised.
# Once the iterator is gone Ray Data stops its executor, so the pullers end within seconds.
_RAY_DATA_PULLER = "iter_threaded"
_PULLER_GRACE_S = 30.0


def _wait_for_ray_data_pullers(threads_before: set[threading.Thread]) -> None:
    deadline = time.monotonic() + _PULLER_GRACE_S
    for thread in set(threading.enumerate()) - threads_before:
        if thread.name == _RAY_DATA_PULLER:
            thread.join(max(0.0, deadline - time.monotonic()))


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(blob: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(blob)).read_all()


def _run_on_ray(cfg: RunConfig, features: FeatureSet, rows: list[dict[str, Any]], store: ShardStore,
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
    bar = tqdm(total=len(rows), desc="scoring on ray", unit="shard", dynamic_ncols=True)
    threads_before = set(threading.enumerate())
    try:
        for row in ds.iter_rows():
            if row["error"]:
                raise pickle.loads(row["error"])  # finished shards stay cached for the next run
            store.put(int(row["shard"]), _from_ipc(row["table"]), json.loads(row["extra"]))
            done += 1
            bar.update(1)
    except ray.exceptions.RayError as err:
        raise RuntimeError(
            f"Ray gave up on a shard ({type(err).__name__}), for example after its worker died more than "
            f"score.ray_max_retries={score.ray_max_retries} times; the {done} shards this run finished are cached, "
            f"with any from earlier runs, in {store.dir}: run again to resume") from err
    finally:
        bar.close()
        _wait_for_ray_data_pullers(threads_before)
    if done != len(rows):
        raise RuntimeError(f"ray returned {done} of {len(rows)} shards; run again to resume")


@dataclass
class RayCompute:
    """The Ray engine: scores the pending shards on ``score.ray_actors`` actors.

    Connects to ``score.ray_address`` (``auto`` = the running cluster; None = start a local
    Ray) unless Ray is already initialised, and only when a shard is pending.
    ``scorer_cls`` is the actor class, a :class:`ShardScorer` or a subclass of it (to
    instrument or wrap the scoring of a shard)."""

    cfg: RunConfig
    features: FeatureSet
    scorer_cls: type[ShardScorer] = ShardScorer

    def __call__(self, pending: Iterable[Shard], store: ShardStore) -> None:
        import ray

        rows = [{"shard": s.index, "start": s.start, "payload": pickle.dumps(s.examples)} for s in pending]
        print(f"ray: scoring {len(rows)} of {store.n_shards} shards "
              f"({store.n_shards - len(rows)} cached in {store.dir})")
        if not rows:
            return
        started = not ray.is_initialized()
        if started:
            ray.init(address=self.cfg.score.ray_address, include_dashboard=False)
        try:
            _run_on_ray(self.cfg, self.features, rows, store, self.scorer_cls)
        finally:
            if started:
                ray.shutdown()
