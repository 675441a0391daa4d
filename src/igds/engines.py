"""Where scoring runs: the one seam between the local engine and Ray Data.

``score(cfg)`` loads what Stage 2 needs and dispatches on ``cfg.score.engine``.
The local engine is :func:`igds.scoring.score_pool`; the Ray engine lives in
:mod:`igds.ray_engine` (optional extra ``igds[ray]``).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from .config import RunConfig
from .model import load_model
from .pipeline import data_spec, find_features, load_saes, resolve_source
from .scoring import score_pool

ENGINES = ("local", "ray")


def score(cfg: RunConfig) -> pa.Table:
    """Stage 1 (cached) then Stage 2 on the configured engine; writes RUN_DIR/scores.parquet."""
    if cfg.score.engine not in ENGINES:
        raise ValueError(f"score.engine must be one of {ENGINES}, got {cfg.score.engine!r}")
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    lm = load_model(cfg.model.name, cfg.model.device, cfg.model.dtype, cfg.model.trust_remote_code)
    saes = load_saes(cfg, lm)
    fs = find_features(cfg, lm, saes, run_dir)
    if cfg.score.engine == "ray":
        from .ray_engine import score_pool_ray

        return score_pool_ray(cfg, fs, run_dir, lm=lm, saes=saes)
    table = score_pool(lm, saes, fs, resolve_source(cfg.pool, "pool"), data_spec(cfg.pool), cfg.score, run_dir,
                       use_chat_template=cfg.use_chat_template, skip_bad=cfg.skip_bad, limit=cfg.pool.limit)
    assert table is not None
    return table
