import json
from functools import partial

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from igds.config import ScoreConfig
from igds.data import DataSpec
from igds.feature_set import Candidate
from igds.features import FeatureSet
from igds.scoring import FeatureScorer, ScoreSummary, compute_local, score_pool
from igds.selection import select_indices

from planted import blank_sae, plant_always_on, plant_detector

ON = [f"add 7{i} and 7{i} then 77" for i in range(10)]
OFF = [f"describe a quiet garden path {chr(97 + i)}" for i in range(10)]


@pytest.fixture
def planted(tiny_lm):
    sae = blank_sae(tiny_lm, 1)
    plant_detector(tiny_lm, sae, 5, 1, ON, OFF, "7")
    plant_always_on(sae, 2)
    fs = FeatureSet(candidates=[Candidate("L1/F5", 1, 5, scale=0.5, validated=True)],
                    validated=["L1/F5"])
    return {1: sae}, fs


def write_pool(path, n=24):
    rows = []
    for i in range(n):
        text = ON[i % len(ON)] if i % 3 == 0 else OFF[i % len(OFF)]
        rows.append({"id": f"p{i}", "instruction": text, "input": "", "output": "done", "resonant": i % 3 == 0})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_selection_ranks_planted_resonant_examples_first(tiny_lm, planted, tmp_path):
    saes, fs = planted
    rows = write_pool(tmp_path / "pool.jsonl")
    table = score_pool(tiny_lm, saes, fs, str(tmp_path / "pool.jsonl"), DataSpec(), ScoreConfig(shard_size=7),
                       tmp_path / "run").table
    assert table.column("id").to_pylist() == [r["id"] for r in rows]  # pool order
    n_resonant = sum(r["resonant"] for r in rows)
    top = select_indices(table, budget=n_resonant)
    assert all(rows[i]["resonant"] for i in top)
    assert "f:L1/F5" in table.column_names
    tops = json.loads((tmp_path / "run" / "top_examples.json").read_text())
    assert tops["L1/F5"] and all(rows[it["index"]]["resonant"] for it in tops["L1/F5"])
    assert any("7" in "".join(it["tokens"]) for it in tops["L1/F5"])


class Killed(Exception):
    """Stands in for the process dying mid-run."""


class DiesAfter(FeatureScorer):
    """A scorer whose process 'dies' when asked for shard number ``n + 1``."""

    def __init__(self, *args, n: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.left = n

    def score(self, examples, start_index=0):
        if self.left == 0:
            raise Killed
        self.left -= 1
        return super().score(examples, start_index)


def test_interrupted_scoring_resumes_byte_identical(tiny_lm, planted, tmp_path):
    saes, fs = planted
    write_pool(tmp_path / "pool.jsonl", n=20)
    cfg = ScoreConfig(shard_size=6)
    pool = str(tmp_path / "pool.jsonl")
    score_pool(tiny_lm, saes, fs, pool, DataSpec(), cfg, tmp_path / "a")
    dies = partial(compute_local, scorer=DiesAfter(tiny_lm, saes, fs, cfg, n=2))
    with pytest.raises(Killed):
        score_pool(tiny_lm, saes, fs, pool, DataSpec(), cfg, tmp_path / "b", compute=dies)
    assert not (tmp_path / "b" / "scores.parquet").exists()
    shards = sorted((tmp_path / "b" / "cache").glob("scores-*/shard-*.parquet"))
    assert [p.name for p in shards] == ["shard-00000.parquet", "shard-00001.parquet"]
    resumed = DiesAfter(tiny_lm, saes, fs, cfg, n=2)  # the two missing shards, and not one more
    scores = score_pool(tiny_lm, saes, fs, pool, DataSpec(), cfg, tmp_path / "b",
                        compute=partial(compute_local, scorer=resumed))
    assert resumed.left == 0
    a = (tmp_path / "a" / "scores.parquet").read_bytes()
    assert a == (tmp_path / "b" / "scores.parquet").read_bytes()
    assert (tmp_path / "a" / "top_examples.json").read_bytes() == (tmp_path / "b" / "top_examples.json").read_bytes()
    assert pq.read_table(tmp_path / "b" / "scores.parquet").num_rows == 20
    assert scores.summary == ScoreSummary(pool_size=20, n_truncated=0, n_rejected=0, max_length=cfg.max_length)
    assert ScoreSummary.load(next((tmp_path / "b" / "cache").glob("scores-*/summary.json"))) == scores.summary


def test_a_cached_shard_that_does_not_match_the_pool_is_an_error(tiny_lm, planted, tmp_path):
    saes, fs = planted
    write_pool(tmp_path / "pool.jsonl", n=12)
    cfg = ScoreConfig(shard_size=6)
    score_pool(tiny_lm, saes, fs, str(tmp_path / "pool.jsonl"), DataSpec(), cfg, tmp_path / "run")
    (shard,) = (tmp_path / "run" / "cache").glob("scores-*/shard-00001.parquet")
    # the second shard of the cache now lists other ids than the pool's
    table = pq.read_table(shard)
    pq.write_table(table.set_column(1, "id", pa.array([f"x{i}" for i in range(table.num_rows)])), shard)
    with pytest.raises(RuntimeError, match=r"shard-00001\.parquet: cached shard does not match the pool"):
        score_pool(tiny_lm, saes, fs, str(tmp_path / "pool.jsonl"), DataSpec(), cfg, tmp_path / "run")


def test_mean_aggregation_is_not_length_biased_but_sum_is(tiny_lm, planted, tmp_path):
    saes, fs = planted
    short, long = "add 77", "add 77 " + "and then walk " * 20
    rows = [{"id": "s", "instruction": short, "input": "", "output": "x"},
            {"id": "l", "instruction": long, "input": "", "output": "x"}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mean = score_pool(tiny_lm, saes, fs, str(tmp_path / "p.jsonl"), DataSpec(), ScoreConfig(), tmp_path / "m").table
    summed = score_pool(tiny_lm, saes, fs, str(tmp_path / "p.jsonl"), DataSpec(), ScoreConfig(aggregation="sum"),
                        tmp_path / "s").table
    m, s = mean.column("score").to_pylist(), summed.column("score").to_pylist()
    assert m[0] > m[1]  # the short example is denser in the feature
    assert s[1] >= s[0] * 0.99  # the sum cannot tell density from length
