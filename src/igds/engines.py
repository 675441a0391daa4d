"""Where scoring runs: the one seam between the local engine and Ray Data.

:func:`score_features` dispatches Stage 2 on ``cfg.score.engine``: the local engine
is :func:`igds.scoring.score_pool`; the Ray engine lives in :mod:`igds.ray_engine`
(optional extra ``igds[ray]``). Both write the same ``RUN_DIR/scores.parquet`` and
share the shard cache, so either can resume the other.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from .config import RunConfig
from .features import FeatureSet
from .model import LoadedModel
from .sae import SAE

ENGINES = ("local", "ray")


def score_features(cfg: RunConfig, lm: LoadedModel, saes: dict[int, SAE], fs: FeatureSet,
                   run_dir: str | Path) -> pa.Table:
    """Stage 2 of ``cfg.pool`` against ``fs`` on the configured engine."""
    from .pipeline import data_spec, resolve_source
    from .scoring import score_pool

    if cfg.score.engine not in ENGINES:
        raise ValueError(f"score.engine must be one of {ENGINES}, got {cfg.score.engine!r}")
    run_dir = Path(run_dir)
    if cfg.score.engine == "ray":
        from .ray_engine import score_pool_ray

        return score_pool_ray(cfg, fs, run_dir, lm=lm, saes=saes)
    table = score_pool(lm, saes, fs, resolve_source(cfg.pool, "pool"), data_spec(cfg.pool), cfg.score, run_dir,
                       use_chat_template=cfg.use_chat_template, skip_bad=cfg.skip_bad, limit=cfg.pool.limit,
                       split=cfg.pool.split)
    assert table is not None  # only an explicit max_new_shards stops early
    return table


def score(cfg: RunConfig) -> pa.Table:
    """``igds score``: Stage 1 (cached) then Stage 2; writes RUN_DIR/scores.parquet."""
    from .model import load_model
    from .pipeline import find_features, load_saes

    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    lm = load_model(cfg.model.name, cfg.model.device, cfg.model.dtype, cfg.model.trust_remote_code)
    saes = load_saes(cfg, lm)
    fs = find_features(cfg, lm, saes, run_dir)
    return score_features(cfg, lm, saes, fs, run_dir)
