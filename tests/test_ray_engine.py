"""The Ray Data engine gives the local engine's score table, resumes its shards and survives dead workers.

One local Ray (2 CPUs) serves the whole module. Actors take half a CPU each so that two
fit beside Ray's own work on a 2-core machine.

Float tolerance: a Ray actor scores a shard with the very call the local engine makes,
but torch in an actor may use another thread count (Ray sets OMP_NUM_THREADS from the
actor's CPUs), which can reorder float32 reductions; scores and feature columns are
compared to rtol 1e-5 / atol 1e-6. ids, index, n_tokens, order and schema are exact.
"""

import copy
import json
import os
import shutil
import signal
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

ray = pytest.importorskip("ray")

from igds.cli import main  # noqa: E402
from igds.config import load_config  # noqa: E402
from igds.engines import score_features  # noqa: E402
from igds.feature_set import Candidate  # noqa: E402
from igds.features import FeatureSet  # noqa: E402
from igds.inputs import data_spec, load_saes  # noqa: E402
from igds.model import load_model  # noqa: E402
from igds.ray_engine import RayCompute, ShardScorer  # noqa: E402
from igds.scoring import score_pool  # noqa: E402


RAY_OPTS = ["--engine", "ray", "--score.ray-actors", "2", "--score.ray-cpus-per-actor", "0.5"]
RTOL, ATOL = 1e-5, 1e-6


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _score(s, out, *extra):
    return main(["score", "--model", s["model"], "--sae", s["sae"], "--task-data", s["task"], "--reference", s["ref"],
                 "--pool", s["pool"], "--out", str(out), "filter.validation_size=6", "filter.enabled=false",
                 "recall.n_candidates=4", "score.shard_size=6", "score.max_length=40", *extra])


def _assert_same_table(a_dir, b_dir):
    a, b = pq.read_table(a_dir / "scores.parquet"), pq.read_table(b_dir / "scores.parquet")
    assert a.schema.equals(b.schema, check_metadata=True)  # same columns, order, types, igds metadata
    for col in ("index", "id", "n_tokens"):
        assert a.column(col).to_pylist() == b.column(col).to_pylist()
    assert len(set(b.column("id").to_pylist())) == b.num_rows  # every row exactly once
    for col in a.column_names:
        if col == "score" or col.startswith("f:"):
            np.testing.assert_allclose(b.column(col).to_numpy(), a.column(col).to_numpy(), rtol=RTOL, atol=ATOL)
    tops_a = json.loads((a_dir / "top_examples.json").read_text())
    tops_b = json.loads((b_dir / "top_examples.json").read_text())
    assert {k: [t["id"] for t in v] for k, v in tops_a.items()} == {k: [t["id"] for t in v] for k, v in tops_b.items()}
    return a, b


def _summary(run_dir):
    return json.loads(next((run_dir / "cache").glob("scores-*/summary.json")).read_text())


def test_ray_score_table_equals_local(setup, tmp_path, capsys):
    # a pool with a bad line and over-long rows: rejects and truncation must match too
    rows = setup["pool_rows"] + [{"id": "long", "prompt": "count 7 " * 30, "completion": "seventy " * 10}]
    lines = [json.dumps(r) for r in rows]
    lines.insert(5, '{"id": "broken", "prompt": "x"')
    (tmp_path / "pool.jsonl").write_text("\n".join(lines) + "\n")
    setup["pool"] = str(tmp_path / "pool.jsonl")
    assert _score(setup, tmp_path / "local", "--skip-bad") == 0
    assert _score(setup, tmp_path / "ray", "--skip-bad", *RAY_OPTS) == 0
    assert "ray: scoring 4 of 4 shards" in capsys.readouterr().out
    a, _ = _assert_same_table(tmp_path / "local", tmp_path / "ray")
    assert a.num_rows == len(rows)
    assert (tmp_path / "ray" / "rejects.jsonl").read_text() == (tmp_path / "local" / "rejects.jsonl").read_text()
    assert json.loads((tmp_path / "ray" / "rejects.jsonl").read_text())["line"] == 6
    summary = _summary(tmp_path / "ray")
    assert summary == _summary(tmp_path / "local")
    assert summary["n_truncated"] >= 1 and summary["n_rejected"] == 1


def test_ray_scores_only_the_shards_missing_from_the_cache(setup, tmp_path, capsys):
    assert _score(setup, tmp_path / "local") == 0
    shutil.copytree(tmp_path / "local", tmp_path / "resumed")
    (tmp_path / "resumed" / "scores.parquet").unlink()
    shard_dir = next((tmp_path / "resumed" / "cache").glob("scores-*"))
    for s in (1, 3):  # as if a run had died with shards 0 and 2 finished
        (shard_dir / f"shard-{s:05d}.parquet").unlink()
        (shard_dir / f"shard-{s:05d}.json").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in shard_dir.glob("shard-*")}
    assert len(kept) == 4
    capsys.readouterr()
    assert _score(setup, tmp_path / "resumed", *RAY_OPTS) == 0
    out = capsys.readouterr().out
    assert "features: reusing" in out and "ray: scoring 2 of 4 shards (2 cached" in out
    assert {p.name: p.stat().st_mtime_ns for p in shard_dir.glob("shard-*") if p.name in kept} == kept
    _assert_same_table(tmp_path / "local", tmp_path / "resumed")
    capsys.readouterr()
    assert _score(setup, tmp_path / "resumed", *RAY_OPTS) == 0  # nothing left: no Ray work at all
    assert "ray: scoring 0 of 4 shards" in capsys.readouterr().out


def _crashing_scorer(marker: Path, always: bool) -> type[ShardScorer]:
    """A scorer whose worker dies (os._exit: no clean-up) on its first shard, or on every shard.

    Defined in a function so that Ray pickles the class by value: the workers cannot
    import this test module."""

    class CrashingScorer(ShardScorer):
        def __call__(self, batch):
            if always or not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
            return super().__call__(batch)

    return CrashingScorer


def _ray_rerun(setup, local_dir, out, *, scorer_cls, max_retries=3):
    """Score with ``scorer_cls`` on Ray, the features and settings of the CLI run in ``local_dir``."""
    cfg = load_config(overrides={"model.name": setup["model"], "sae.paths": [setup["sae"]], "pool.path": setup["pool"],
                                 "score.shard_size": 6, "score.max_length": 40, "score.ray_actors": 2,
                                 "score.ray_cpus_per_actor": 0.5, "score.ray_max_retries": max_retries})
    fs = FeatureSet.load(local_dir / "features.json")
    lm = load_model(setup["model"], "cpu")  # the driver's copy: only the cache key reads it
    return score_pool(lm, load_saes(cfg, lm), fs, setup["pool"], data_spec(cfg.pool), cfg.score, out,
                      compute=RayCompute(cfg, fs, scorer_cls))


def test_killed_ray_worker_is_retried_and_every_row_appears_once(setup, tmp_path):
    assert _score(setup, tmp_path / "local") == 0
    marker = tmp_path / "crashed"
    _ray_rerun(setup, tmp_path / "local", tmp_path / "ray", scorer_cls=_crashing_scorer(marker, always=False))
    assert marker.exists()  # a worker really died on its first shard
    _, b = _assert_same_table(tmp_path / "local", tmp_path / "ray")
    assert b.column("id").to_pylist() == [r["id"] for r in setup["pool_rows"]]


def _give_up(*_):
    raise TimeoutError("Ray is still retrying a shard that kills every worker")


def test_a_shard_that_kills_every_worker_stops_after_the_retry_bound(setup, tmp_path):
    assert _score(setup, tmp_path / "local") == 0
    marker = tmp_path / "crashed"
    # Without the bound Ray would retry for ever: the alarm turns that into a failure.
    previous = signal.signal(signal.SIGALRM, _give_up)
    signal.alarm(300)
    try:
        with pytest.raises(RuntimeError, match=r"score\.ray_max_retries=1 .*run again to resume"):
            _ray_rerun(setup, tmp_path / "local", tmp_path / "ray", scorer_cls=_crashing_scorer(marker, always=True),
                       max_retries=1)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert marker.exists()
    assert not (tmp_path / "ray" / "scores.parquet").exists()


def test_nan_in_a_worker_surfaces_as_the_original_error(tiny_lm, setup, tmp_path):
    # NaN weights in a block below the SAE's layer: the residual stream the workers read is
    # NaN (an SAE with NaN weights is refused on load, before any worker could see it)
    nan_model = copy.deepcopy(tiny_lm.model)  # the fixture's model is shared with other tests
    with torch.no_grad():
        nan_model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    nan_model.save_pretrained(tmp_path / "nan_model")
    tiny_lm.tokenizer.save_pretrained(tmp_path / "nan_model")
    cfg = load_config(overrides={"model.name": str(tmp_path / "nan_model"), "sae.paths": [setup["sae"]],
                                 "pool.path": setup["pool"], "score.shard_size": 8, "score.ray_cpus_per_actor": 0.5,
                                 "score.engine": "ray"})
    fs = FeatureSet(candidates=[Candidate("L1/F5", 1, 5, scale=1.0)], validated=["L1/F5"])
    lm = load_model(cfg.model.name, "cpu")
    with pytest.raises(FloatingPointError, match=r"pool\.jsonl:(\d+): non-finite feature activations for example 'p\d+'"):
        score_features(cfg, lm, load_saes(cfg, lm), fs, tmp_path / "run")
    assert not (tmp_path / "run" / "scores.parquet").exists()
    # the error left the loop over rows early: Ray Data's block pullers, which would still be
    # waiting on the raylet for the other shards, are finished before the error reaches us, so
    # shutting Ray down now (as the module's fixture does next) cannot end this process
    assert not [t for t in threading.enumerate() if t.name == "iter_threaded"]
