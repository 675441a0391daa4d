import json
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from igds.config import ScoreConfig
from igds.data import DataSpec
from igds.feature_set import Candidate, Effect
from igds.features import FeatureSet
from igds.scoring import (FeatureScorer, ScoreSummary, combine_scores, compute_local, effect_weights, percentiles,
                          score_pool)
from igds.selection import select_indices, table_meta

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


# ---------------------------------------------------------------- combining features
def effect(mean_delta):
    return Effect(metric="ref_loss", alpha=2.0, n=32, mean_delta=mean_delta, se=0.01, ci_low=0.0, ci_high=0.0)


def correlation(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def test_a_sparse_huge_feature_dominates_the_mean_but_not_zscore_or_rank():
    """Feature A grades every row; feature B is 0 except two rows at 100 (the two lowest in A). The plain
    mean is B alone; the z-score and rank combinations hear both features equally."""
    n = 40
    a = np.linspace(0.0, 2.0, n)
    b = np.zeros(n)
    b[:2] = 100.0
    norm = np.stack([a, b], axis=1)
    equal = np.array([0.5, 0.5])
    mean = combine_scores(norm, "mean")
    assert correlation(mean, b) > 0.99 and correlation(mean, a) < 0  # A's order is lost behind the spikes
    assert set(np.argsort(-mean)[:2]) == {0, 1}  # the two spikes lead, though they are the weakest rows in A
    for how in ("zscore", "rank"):
        score = combine_scores(norm, how, equal)
        assert correlation(score, a) > 0.5 and correlation(score, b) < 0.9, how  # both features count
        assert np.argmax(score[2:]) == n - 3  # apart from the spikes, A orders the rows
    rank = combine_scores(norm, "rank", equal)
    assert set(np.argsort(-rank)[:5]) == {n - 1, n - 2, n - 3, n - 4, n - 5}  # the spikes no longer lead


def test_percentiles_average_ties():
    np.testing.assert_allclose(percentiles(np.array([5.0, 1.0, 5.0, 3.0, 0.0])), [0.875, 0.25, 0.875, 0.5, 0.0])
    np.testing.assert_allclose(percentiles(np.array([2.0])), [0.5])


def test_effect_weights_clip_at_zero_and_normalise():
    cands = [Candidate(f"L1/F{j}", 1, j, effect=effect(d)) for j, d in enumerate([0.3, -0.1, 0.1, 0.0])]
    np.testing.assert_allclose(effect_weights(cands), [0.75, 0.0, 0.25, 0.0])
    np.testing.assert_allclose(effect_weights([Candidate("L1/F0", 1, 0), Candidate("L1/F1", 1, 1)]), [0.5, 0.5])
    np.testing.assert_allclose(effect_weights(cands[1:2] + cands[3:]), [0.5, 0.5])  # none positive: equal
    # an unmeasured feature beside measured ones weighs 0, not 1 (1 would swamp effects of ~0.01-0.1 nats)
    np.testing.assert_allclose(effect_weights(cands[:1] + [Candidate("L1/F9", 1, 9)]), [1.0, 0.0])


@pytest.mark.parametrize("how", ["zscore", "rank"])
def test_a_feature_without_positive_effect_does_not_move_the_ranking(how):
    rng = np.random.default_rng(0)
    helpful, harmful = rng.gamma(2.0, size=30), rng.gamma(2.0, size=30)
    cands = [Candidate("L1/F0", 1, 0, effect=effect(0.2)), Candidate("L1/F1", 1, 1, effect=effect(-0.05))]
    weights = effect_weights(cands)
    base = combine_scores(np.stack([helpful, harmful], axis=1), how, weights)
    shuffled = combine_scores(np.stack([helpful, rng.permutation(harmful) * 50], axis=1), how, weights)
    np.testing.assert_array_equal(np.argsort(-base), np.argsort(-shuffled))
    unweighted = combine_scores(np.stack([helpful, rng.permutation(harmful) * 50], axis=1), how, np.array([.5, .5]))
    assert not np.array_equal(np.argsort(-base), np.argsort(-unweighted))  # with a weight it would move


def test_pool_wide_combination_is_computed_over_every_shard(tiny_lm, planted, tmp_path):
    """zscore over 4 shards of 6 rows equals zscore over the whole table, not over each shard."""
    saes, _ = planted
    fs = FeatureSet(candidates=[Candidate("L1/F5", 1, 5, scale=0.5, validated=True, effect=effect(0.2)),
                                Candidate("L1/F2", 1, 2, scale=1.0, validated=True, effect=effect(0.1))],
                    validated=["L1/F5", "L1/F2"])
    rows = write_pool(tmp_path / "pool.jsonl")
    pool = str(tmp_path / "pool.jsonl")
    sharded = score_pool(tiny_lm, saes, fs, pool, DataSpec(), ScoreConfig(shard_size=6, combine="zscore"),
                         tmp_path / "a").table
    whole = score_pool(tiny_lm, saes, fs, pool, DataSpec(), ScoreConfig(shard_size=100, combine="zscore"),
                       tmp_path / "b").table
    norm = np.stack([sharded.column(f"f:{k}").to_numpy() for k in fs.validated], axis=1).astype(np.float64)
    expected = combine_scores(norm, "zscore", np.array([2 / 3, 1 / 3]))
    np.testing.assert_allclose(sharded.column("score").to_numpy(), expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(whole.column("score").to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert table_meta(sharded)["weights"] == {"L1/F5": pytest.approx(2 / 3), "L1/F2": pytest.approx(1 / 3)}
    shards = sorted((tmp_path / "a").rglob("shard-*.parquet"))
    assert len(shards) == 4  # each leaves the pool-wide score to the assembly, not a z-score of its own rows
    assert all(np.isnan(pq.read_table(p).column("score").to_numpy()).all() for p in shards)
    n_resonant = sum(r["resonant"] for r in rows)
    assert all(rows[i]["resonant"] for i in select_indices(sharded, budget=n_resonant))


def test_igds_zscore_arm_is_the_pipelines_zscore_of_igds_table(tiny_lm, planted, tmp_path):
    """The derived arm re-combines igds's (mean-combined) table exactly as score.combine=zscore
    does in the pipeline, effect weights included; without features it refuses."""
    from igds.config import SelectConfig
    from igds.selectors.frs import derive_table

    saes, _ = planted
    # F2 (always on) has the larger effect: the weights decide which feature leads the ranking
    fs = FeatureSet(candidates=[Candidate("L1/F5", 1, 5, scale=0.5, validated=True, effect=effect(0.05)),
                                Candidate("L1/F2", 1, 2, scale=1.0, validated=True, effect=effect(0.2))],
                    validated=["L1/F5", "L1/F2"])
    write_pool(tmp_path / "pool.jsonl")
    pool = str(tmp_path / "pool.jsonl")
    mean = score_pool(tiny_lm, saes, fs, pool, DataSpec(), ScoreConfig(combine="mean"), tmp_path / "a").table
    zscore = score_pool(tiny_lm, saes, fs, pool, DataSpec(), ScoreConfig(combine="zscore"), tmp_path / "b").table
    derived = derive_table("igds_zscore", mean, SelectConfig(), fs)
    np.testing.assert_allclose(derived.column("score").to_numpy(), zscore.column("score").to_numpy(),
                               rtol=1e-6, atol=1e-9)
    assert derived.column("id").to_pylist() == mean.column("id").to_pylist()
    assert table_meta(derived)["weights"] == {"L1/F5": pytest.approx(0.2), "L1/F2": pytest.approx(0.8)}
    equal = derive_table("igds_zscore", mean, SelectConfig(),
                         FeatureSet(candidates=[Candidate(c.key, 1, c.feature, scale=c.scale, validated=True)
                                                for c in fs.candidates], validated=fs.validated))
    assert table_meta(equal)["weights"] == {"L1/F5": 0.5, "L1/F2": 0.5}  # no effects measured: equal weights
    assert not np.allclose(equal.column("score").to_numpy(), derived.column("score").to_numpy())
    with pytest.raises(ValueError, match="needs igds's validated features"):
        derive_table("igds_zscore", mean, SelectConfig(), None)
    other = FeatureSet(candidates=[Candidate("L1/F9", 1, 9, validated=True)], validated=["L1/F9"])
    with pytest.raises(ValueError, match="lacks the columns"):
        derive_table("igds_zscore", mean, SelectConfig(), other)
