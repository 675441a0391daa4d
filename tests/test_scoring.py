import json

import pyarrow.parquet as pq
import pytest

from igds.config import ScoreConfig
from igds.data import DataSpec
from igds.features import FeatureSet
from igds.scoring import score_pool
from igds.selection import select_indices

from planted import blank_sae, plant_always_on, plant_detector

ON = [f"add 7{i} and 7{i} then 77" for i in range(10)]
OFF = [f"describe a quiet garden path {chr(97 + i)}" for i in range(10)]


@pytest.fixture
def planted(tiny_lm):
    sae = blank_sae(tiny_lm, 1)
    plant_detector(tiny_lm, sae, 5, 1, ON, OFF, "7")
    plant_always_on(sae, 2)
    fs = FeatureSet(candidates=[{"key": "L1/F5", "layer": 1, "feature": 5, "scale": 0.5, "validated": True}],
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
                       tmp_path / "run")
    assert table.column("id").to_pylist() == [r["id"] for r in rows]  # pool order
    n_resonant = sum(r["resonant"] for r in rows)
    top = select_indices(table, budget=n_resonant)
    assert all(rows[i]["resonant"] for i in top)
    assert "f:L1/F5" in table.column_names
    tops = json.loads((tmp_path / "run" / "top_examples.json").read_text())
    assert tops["L1/F5"] and all(rows[it["index"]]["resonant"] for it in tops["L1/F5"])
    assert any("7" in "".join(it["tokens"]) for it in tops["L1/F5"])


def test_interrupted_scoring_resumes_byte_identical(tiny_lm, planted, tmp_path):
    saes, fs = planted
    write_pool(tmp_path / "pool.jsonl", n=20)
    cfg = ScoreConfig(shard_size=6)
    pool = str(tmp_path / "pool.jsonl")
    score_pool(tiny_lm, saes, fs, pool, DataSpec(), cfg, tmp_path / "a")
    assert score_pool(tiny_lm, saes, fs, pool, DataSpec(), cfg, tmp_path / "b", max_new_shards=2) is None
    assert not (tmp_path / "b" / "scores.parquet").exists()
    shards = sorted((tmp_path / "b" / "cache").glob("scores-*/shard-*.parquet"))
    assert len(shards) == 2
    score_pool(tiny_lm, saes, fs, pool, DataSpec(), cfg, tmp_path / "b")
    a = (tmp_path / "a" / "scores.parquet").read_bytes()
    assert a == (tmp_path / "b" / "scores.parquet").read_bytes()
    assert pq.read_table(tmp_path / "b" / "scores.parquet").num_rows == 20


def test_mean_aggregation_is_not_length_biased_but_sum_is(tiny_lm, planted, tmp_path):
    saes, fs = planted
    short, long = "add 77", "add 77 " + "and then walk " * 20
    rows = [{"id": "s", "instruction": short, "input": "", "output": "x"},
            {"id": "l", "instruction": long, "input": "", "output": "x"}]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mean = score_pool(tiny_lm, saes, fs, str(tmp_path / "p.jsonl"), DataSpec(), ScoreConfig(), tmp_path / "m")
    summed = score_pool(tiny_lm, saes, fs, str(tmp_path / "p.jsonl"), DataSpec(), ScoreConfig(aggregation="sum"),
                        tmp_path / "s")
    m, s = mean.column("score").to_pylist(), summed.column("score").to_pylist()
    assert m[0] > m[1]  # the short example is denser in the feature
    assert s[1] >= s[0] * 0.99  # the sum cannot tell density from length
