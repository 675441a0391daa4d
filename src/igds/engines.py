"""Where scoring runs: the one seam between the local engine and Ray Data.

:func:`score_features` picks the engine named by ``cfg.score.engine``: the local engine
is :func:`igds.scoring.compute_local`; the Ray engine is :class:`igds.ray_engine.RayCompute`
(optional extra ``igds[ray]``; ``ray`` itself is imported only when it runs). Either
only scores the shards :class:`igds.scoring.ShardStore` says are pending, inside the
one sequence of :func:`igds.scoring.score_pool`; both write the same
``RUN_DIR/scores.parquet`` and share the shard cache, so either can resume the other.
"""

from __future__ import annotations

from pathlib import Path

from .config import RunConfig
from .feature_set import FeatureSet
from .inputs import data_spec, precision, resolve_source, weights_fingerprint
from .model import LoadedModel
from .ray_engine import RayCompute, worker_placement
from .sae import SAE
from .scoring import Scores, score_pool

ENGINES = ("local", "ray")


def score_features(cfg: RunConfig, lm: LoadedModel, saes: dict[int, SAE], fs: FeatureSet,
                   run_dir: str | Path) -> Scores:
    """Stage 2 of ``cfg.pool`` against ``fs`` on the configured engine.

    ``lm`` and ``saes`` are this process's copies: the local engine scores with them; with
    Ray they only enter the cache key, and every actor loads its own: the key then takes
    the dtypes the actors compute in (:func:`igds.ray_engine.worker_placement`), not the
    driver's (a CPU driver is float32 where GPU actors are bf16)."""
    if cfg.score.engine not in ENGINES:
        raise ValueError(f"score.engine must be one of {ENGINES}, got {cfg.score.engine!r}")
    compute, where = None, precision(lm.device, lm.dtype)
    if cfg.score.engine == "ray":
        compute, where = RayCompute(cfg, fs), precision(*worker_placement(cfg))
    return score_pool(lm, saes, fs, resolve_source(cfg.pool, "pool"), data_spec(cfg.pool), cfg.score, run_dir,
                      use_chat_template=cfg.use_chat_template, skip_bad=cfg.skip_bad, limit=cfg.pool.limit,
                      split=cfg.pool.split, compute=compute, weights=weights_fingerprint(cfg),
                      compute_precision=where)
