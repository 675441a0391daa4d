"""Select modes (top / quota / coverage) and the arms derived from igds's own table, on planted tables."""

import json

import numpy as np
import pytest

from igds.config import ConfigError, DataConfig, RunConfig, dump_config, load_config
from igds.selection import (budget_for, make_score_table, read_score_table, select_indices, select_rows,
                            write_score_table)
from igds.selectors import SelectionContext, run_selector


def _table(score, features, ids=None):
    n = len(score)
    return make_score_table(ids or [f"p{i}" for i in range(n)], score, [1] * n,
                            extra={f"f:L1/F{j}": col for j, col in enumerate(features)})


# Feature A's rows (0-3) also have the highest combined scores; feature B's best rows (4, 5) come later.
A = [5.0, 4.0, 3.0, 2.5, 0.0, 0.0, 0.1, 0.1]
B = [0.0, 0.0, 0.0, 0.0, 1.0, 0.9, 0.1, 0.1]
ONE_FEATURE_ON_TOP = _table([(a + b) / 2 for a, b in zip(A, B)], [A, B])


def test_quota_takes_each_features_best_rows_where_top_takes_only_the_dominant_one():
    assert select_rows(ONE_FEATURE_ON_TOP, budget=4) == [0, 1, 2, 3]  # top: feature A's rows only
    assert select_rows(ONE_FEATURE_ON_TOP, budget=4, mode="quota") == [0, 4, 1, 5]  # A, B, A, B
    # B's positive rows run out: its turns then go by the top order of the rows left
    assert select_rows(ONE_FEATURE_ON_TOP, budget=8, mode="quota") == [0, 4, 1, 5, 2, 6, 3, 7]


def test_quota_breaks_ties_by_score_and_puts_nan_last():
    # feature 0 ties rows 1 and 2 (row 2 has the higher combined score) and is NaN on row 0
    t = _table([0.0, 0.1, 0.2, 0.3], [[float("nan"), 1.0, 1.0, 0.5]])
    assert select_rows(t, budget=4, mode="quota") == [2, 1, 3, 0]
    flat = _table([1.0] * 5, [[2.0] * 5, [0.0] * 5])  # every tie: pool order
    assert select_rows(flat, budget=5, mode="quota") == [0, 1, 2, 3, 4]
    assert select_rows(flat, budget=5, mode="coverage", gate=1.0) == [0, 1, 2, 3, 4]


# Rows 0-3: the top scores, near-duplicates in feature space (only feature A). Rows 4 and 5 cover B and C
# at lower scores. Rows 6-9 fall below the gate (0.6 of 10 rows = the top 6); row 9 carries a feature
# (D) nothing else has: the most new feature mass of all, but not relevant enough.
CA = [1.0, 0.99, 0.98, 0.97, 0.0, 0.0, 0.5, 0.0, 0.0, 0.0]
CB = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
CC = [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
CD = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0]
NEAR_DUPLICATES = _table([1.0, 0.99, 0.98, 0.97, 0.6, 0.55, 0.3, 0.2, 0.1, 0.05], [CA, CB, CC, CD])


def test_coverage_picks_diverse_rows_and_never_rows_below_the_gate():
    assert select_rows(NEAR_DUPLICATES, budget=3) == [0, 1, 2]
    # B and C add uncovered mass (B first: equal gain, higher score), then the best A row
    assert select_rows(NEAR_DUPLICATES, budget=3, mode="coverage", gate=0.6) == [4, 5, 0]
    everything = select_rows(NEAR_DUPLICATES, budget=6, mode="coverage", gate=0.6)
    assert sorted(everything) == [0, 1, 2, 3, 4, 5]  # row 9's new feature D is gated out
    with pytest.raises(ValueError, match="larger than the 6 rows the gate lets through"):
        select_rows(NEAR_DUPLICATES, budget=7, mode="coverage", gate=0.6)
    # with the gate open, row 9's unseen feature D is covered before any second A row
    assert select_rows(NEAR_DUPLICATES, budget=3, mode="coverage", gate=1.0) == [4, 5, 9]


def test_every_mode_honours_the_budget_and_ratio_exactly_and_deterministically():
    rng = np.random.default_rng(0)
    feats = rng.gamma(0.5, 1.0, size=(3, 37)) * (rng.random((3, 37)) < 0.5)
    t = _table(list(feats.mean(axis=0)), list(feats))
    for mode in ("top", "quota", "coverage"):
        for k in range(1, 38):
            rows = select_rows(t, budget=k, mode=mode, gate=1.0)
            assert len(rows) == len(set(rows)) == k and set(rows) <= set(range(37)), (mode, k)
            assert rows == select_rows(t, budget=k, mode=mode, gate=1.0)
        for ratio in (0.1, 0.3, 0.5, 1.0):
            assert len(select_rows(t, ratio=ratio, mode=mode, gate=1.0)) == budget_for(37, ratio=ratio)
    assert select_rows(t, ratio=0.5) == select_indices(t, ratio=0.5)


def test_modes_refuse_what_they_cannot_do():
    plain = make_score_table(["a", "b"], [1.0, 2.0], [1, 1])
    with pytest.raises(ValueError, match="per-feature columns"):
        select_rows(plain, budget=1, mode="quota")
    with pytest.raises(ValueError, match="mode must be one of"):
        select_rows(plain, budget=1, mode="best")
    with pytest.raises(ValueError, match="non-negative"):
        select_rows(_table([1.0, 0.0], [[-1.0, 0.0]]), budget=1, mode="coverage", gate=1.0)
    with pytest.raises(ConfigError, match="select.gate: coverage keeps only the top 0.4"):
        load_config(None, {"select.mode": "coverage", "select.gate": 0.4})
    assert load_config(None, {"select.mode": "coverage", "select.gate": 0.4, "select.ratio": 0.3}).select.gate == 0.4
    with pytest.raises(ConfigError, match="select.mode"):
        load_config(None, {"select.mode": "bottom"})


# ---------------------------------------------------------------- arms derived from igds's table
POOL_IDS = [f"p{i}" for i in range(8)]
IGDS_TABLE = _table([(a + b) / 2 for a, b in zip(A, B)][:7] + [float("nan")], [A, B])


def _pool():
    from igds.data import Example

    return [Example(id=i, messages=[{"role": "user", "content": i}], response="r", record={}, dialect="fields",
                    source="t", line=n) for n, i in enumerate(POOL_IDS)]


def _derived(monkeypatch, tmp_path, name, cfg=None):
    from igds.selectors import frs

    calls = []
    monkeypatch.setattr(frs, "igds_scores", lambda lm, c, run_dir: (calls.append(c) or IGDS_TABLE, None))
    opts = {"config": cfg or RunConfig(), "run_dir": tmp_path}
    return run_selector(name, _pool(), SelectionContext(model=object(), options=opts)), calls


def test_igds_low_takes_the_lowest_scores_first(monkeypatch, tmp_path):
    cfg = RunConfig()
    cfg.filter.enabled = True
    low, calls = _derived(monkeypatch, tmp_path, "igds_low", cfg)
    assert len(calls) == 1 and calls[0].filter.enabled  # igds's own stages (filter as configured), not an ablation's
    ranked = select_indices(IGDS_TABLE, budget=7)  # the scored rows; row 7 has no score (NaN)
    assert select_indices(low, budget=7) == ranked[::-1]
    assert select_indices(low, budget=8)[-1] == 7  # NaN stays last in both directions
    assert select_indices(low, budget=2) == [6, 5]


def test_igds_quota_and_coverage_tables_hold_the_modes_pick_order(monkeypatch, tmp_path):
    quota, _ = _derived(monkeypatch, tmp_path, "igds_quota")
    for k in range(1, 9):
        assert select_indices(quota, budget=k) == select_rows(IGDS_TABLE, budget=k, mode="quota")
    cfg = load_config(None, {"select.gate": 0.75})
    cover, _ = _derived(monkeypatch, tmp_path, "igds_coverage", cfg)
    for k in range(1, 7):
        assert select_indices(cover, budget=k) == select_rows(IGDS_TABLE, budget=k, mode="coverage", gate=0.75)
    assert select_indices(cover, budget=2) == [4, 0]  # B's best row, then A's: not the top two
    assert select_indices(cover, budget=8)[6:] == [6, 7]  # gated-out rows last, in score order


def test_experiment_derives_its_arms_from_one_igds_table(monkeypatch, tmp_path):
    from igds.experiment import runner

    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": i, "prompt": f"q {i}", "completion": "a"}) + "\n" for i in POOL_IDS))
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"id": "t0", "prompt": "q", "completion": "a"}) + "\n")
    from igds.feature_set import Candidate, Effect, FeatureSet
    from igds.scoring import combine_scores

    def measured(j, delta):
        return Candidate(f"L1/F{j}", 1, j, validated=True, effect=Effect(
            metric="ref_loss", alpha=2.0, n=32, mean_delta=delta, se=0.01, ci_low=0.0, ci_high=0.0))

    features = FeatureSet(candidates=[measured(0, 0.1), measured(1, 0.3)], validated=["L1/F0", "L1/F1"])
    calls = []
    monkeypatch.setattr(runner, "igds_scores", lambda lm, rc, run_dir: (calls.append(run_dir) or IGDS_TABLE, features))
    settings = {"task": {"name": "q", "prompt_field": "prompt", "response_field": "completion",
                         "metric": "exact_match"},
                "igds": {"out": str(tmp_path / "run"), "pool": {"path": str(pool)}, "task_data": {"path": str(pool)},
                         "report": False},
                "eval": {"paths": [str(test)]}, "methods": ["igds_low", "igds_quota", "igds_zscore", "igds", "random"],
                "task_data_excludes_pool": False}
    exp = runner.Experiment(runner.load_experiment_config(None, settings), lm=object())
    low, quota, zscore, igds = (exp.table(m, 0) for m in ("igds_low", "igds_quota", "igds_zscore", "igds"))
    assert calls == [tmp_path / "run"]  # Stage 1 + 2 once, in igds's own folder
    assert runner.method_dir(tmp_path / "run", "igds_low") == tmp_path / "run"
    assert select_indices(low, budget=7) == select_indices(igds, budget=7)[::-1]
    assert select_indices(quota, budget=4) == [0, 4, 1, 5]
    # igds's features and their effects (1:3) weigh the z-scores: B's rows lead, not A's as in igds's mean
    expected = combine_scores(np.array([A, B]).T, "zscore", np.array([0.25, 0.75]))
    np.testing.assert_allclose(zscore.column("score").to_numpy(), expected)
    assert select_indices(zscore, budget=2) == [4, 5]
    assert exp.run_key("igds_low", 0.5, 0) != exp.run_key("igds", 0.5, 0)
    with pytest.raises(ConfigError, match="igds.select.mode: experiments select the top"):
        runner.load_experiment_config(None, {**settings, "igds": {**settings["igds"], "select": {"mode": "quota"}}})
    with pytest.raises(ConfigError, match="igds_coverage keeps only the top 0.75"):
        runner.load_experiment_config(None, {**settings, "methods": ["igds_coverage"], "ratios": [0.8]})


# ---------------------------------------------------------------- the command line
def test_cli_select_mode_quota_round_trip(tmp_path, capsys):
    from igds.cli import config_from_args, main, parse

    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": i, "prompt": f"q {i}", "completion": "a"}) + "\n" for i in POOL_IDS))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(dump_config(RunConfig(pool=DataConfig(path=str(pool)), out=str(run_dir))))
    write_score_table(run_dir / "scores.parquet", ONE_FEATURE_ON_TOP)
    assert main(["select", str(run_dir), "--budget", "4", "--mode", "quota"]) == 0
    assert "4 examples" in capsys.readouterr().out
    rows = [json.loads(line) for line in (run_dir / "selection_n4_quota.jsonl").read_text().splitlines()]
    assert [r["igds_id"] for r in rows] == ["p0", "p4", "p1", "p5"]
    meta = json.loads((run_dir / "selection_n4_quota.meta.json").read_text())
    assert meta["mode"] == "quota" and meta["n"] == 4 and meta["budget"] == 4
    assert main(["select", str(run_dir), "--budget", "4"]) == 0  # the run's own mode: top
    top = [json.loads(line)["igds_id"] for line in (run_dir / "selection_n4.jsonl").read_text().splitlines()]
    assert top == ["p0", "p1", "p2", "p3"]
    assert read_score_table(run_dir / "scores.parquet").num_rows == 8
    # `igds run` takes the mode from the flags generated from SelectConfig
    cfg = config_from_args(parse(["run", "--select.mode", "coverage", "--select.gate", "0.9"]), RunConfig)
    assert (cfg.select.mode, cfg.select.gate) == ("coverage", 0.9)
    assert main(["select", str(run_dir), "--budget", "4", "--mode", "bottom"]) == 2
