"""benchmarks/protocol.py: the pre-registered rule says met / not met / undecided as written."""

import math

import pytest

from protocol import mean_se, standardized_gap, verdict


def test_mean_se_uses_the_sample_std():
    m, se, n = mean_se([1.0, 2.0, 3.0, None])
    assert (m, n) == (2.0, 3) and se == pytest.approx(1.0 / math.sqrt(3))
    m, se, n = mean_se([5.0])  # one seed: no spread to estimate, so no verdict can rest on it
    assert (m, n) == (5.0, 1) and math.isnan(se)
    assert math.isnan(standardized_gap([5.0], [4.0, 4.1], True)[1])


def test_gap_sign_follows_the_direction_of_better():
    a, b = [0.30, 0.32, 0.31], [0.20, 0.22, 0.21]
    gap, z = standardized_gap(a, b, higher_is_better=True)
    assert gap == pytest.approx(0.10) and z == pytest.approx(0.10 / math.hypot(0.01 / math.sqrt(3), 0.01 / math.sqrt(3)))
    gap, z = standardized_gap(a, b, higher_is_better=False)  # as a loss, A is the worse one
    assert gap == pytest.approx(-0.10) and z < -2
    assert standardized_gap([1.0, 1.0], [1.0, 1.0], True) == (0.0, 0.0)
    assert standardized_gap([1.0, 1.0], [0.5, 0.5], True)[1] == math.inf


@pytest.mark.parametrize("zm,zl,expected", [
    (2.5, 2.1, "met"),            # better on both by more than 2 SE
    (2.5, 1.9, "undecided"),      # the loss does not carry it
    (3.0, -2.1, "not met"),       # decisively worse on one is enough to fail
    (-2.5, 0.0, "not met"),
    (1.0, -1.0, "undecided"),
    (math.nan, 3.0, "undecided (fewer than 2 seeds on a side)"),
])
def test_verdicts(zm, zl, expected):
    assert verdict(zm, zl) == expected


def test_archive_round_trip_keeps_finished_runs_across_machines(tmp_path, monkeypatch):
    import protocol
    from igds.experiment import Experiment, load_experiment_config

    monkeypatch.setattr(protocol, "ARCHIVE", tmp_path / "archive")
    cfg = load_experiment_config(protocol.CONFIGS / "summarization.yaml", {"igds.out": str(tmp_path / "run")})
    exp = Experiment(cfg)
    keys = {}
    monkeypatch.setattr(exp, "run_key", lambda m, r, s: keys.get((m, r, s), "current"))
    live = exp.exp_dir / "runs" / "random-r0.5-s3" / "result.json"
    kept = tmp_path / "archive" / "summarization" / "random-r0.5-s3.json"
    live.parent.mkdir(parents=True)
    live.write_text('{"key": "current", "v": 1}')
    assert protocol.archive(exp, "summarization", restore=False) == 1 and kept.read_text() == live.read_text()
    live.unlink()  # a fresh machine: runs/ is gone, the archive is in the repository
    assert protocol.archive(exp, "summarization", restore=True) == 1 and live.exists()
    # a stale live result (other settings) never reaches the archive, and the current archived one replaces it
    live.write_text('{"key": "old", "v": 0}')
    assert protocol.archive(exp, "summarization", restore=False) == 0 and '"v": 1' in kept.read_text()
    assert protocol.archive(exp, "summarization", restore=True) == 1 and '"v": 1' in live.read_text()
    # settings changed since: the archived result is stale too and is not restored
    keys[("random", 0.5, 3)] = "new"
    live.unlink()
    assert protocol.archive(exp, "summarization", restore=True) == 0 and not live.exists()


def test_a_kept_base_result_is_replaced_only_after_an_experiment_checked_it(tmp_path, monkeypatch):
    """A live base result from another checkout (its key unchecked: it needs the features) is written
    to the archive only where none is kept; it replaces a kept one only when an experiment has just
    read it (``base_checked``), re-evaluating it if its key was stale."""
    import protocol
    from igds.experiment import Experiment, load_experiment_config

    monkeypatch.setattr(protocol, "ARCHIVE", tmp_path / "archive")
    exp = Experiment(load_experiment_config(protocol.CONFIGS / "summarization.yaml", {"igds.out": str(tmp_path / "run")}))
    monkeypatch.setattr(exp, "run_key", lambda m, r, s: "current")
    live = exp.exp_dir / "base" / "result.json"
    kept = tmp_path / "archive" / "summarization" / "base.json"
    live.parent.mkdir(parents=True)
    live.write_text('{"key": "stale-elsewhere"}')
    assert protocol.archive(exp, "summarization", restore=False) == 1 and kept.read_text() == live.read_text()
    kept.write_text('{"key": "older-features"}')
    assert protocol.archive(exp, "summarization", restore=False) == 0 and "older-features" in kept.read_text()
    live.write_text('{"key": "checked-now"}')
    assert protocol.archive(exp, "summarization", restore=False, base_checked=True) == 1
    assert "checked-now" in kept.read_text()


def test_filter_outcomes_outlive_the_machine_and_a_recomputed_one_wins(tmp_path, monkeypatch):
    import json

    import protocol
    from igds.experiment import Experiment, load_experiment_config, method_dir

    monkeypatch.setattr(protocol, "ARCHIVE", tmp_path / "archive")
    exp = Experiment(load_experiment_config(protocol.CONFIGS / "summarization.yaml", {"igds.out": str(tmp_path / "run")}))
    features = method_dir(exp.run_dir, "igds_paper") / "features.json"
    features.parent.mkdir(parents=True)
    features.write_text(json.dumps({"filter_outcome": "kept 3 of 24 candidates"}))
    assert protocol.filter_outcomes(exp, "summarization") == {"igds_paper": "kept 3 of 24 candidates"}
    features.unlink()  # a new machine: runs/ is gone, the archive is in the repository
    assert protocol.filter_outcomes(exp, "summarization") == {"igds_paper": "kept 3 of 24 candidates"}
    features.write_text(json.dumps({"validated": ["a"], "candidates": ["a", "b"]}))  # recomputed here
    assert protocol.filter_outcomes(exp, "summarization") == {"igds_paper": "kept 1 of 2 candidates"}
    assert json.loads((tmp_path / "archive" / "summarization" / "filter_outcomes.json").read_text()) == \
        {"igds_paper": "kept 1 of 2 candidates"}


@pytest.mark.parametrize("task", ["summarization", "math", "translation"])
def test_every_archived_run_still_has_the_key_the_code_computes(task, shared_data, monkeypatch):
    """A knob added to a config section must not change the keys of finished runs (it is ``late`` or
    outside the key): otherwise every archived run is silently redone, or the table loses them."""
    import protocol
    from igds.artifacts import read_json
    from igds.experiment import Experiment, load_experiment_config

    monkeypatch.chdir(protocol.ROOT)  # the configs' relative paths (data, the pinned v1 SAE)
    exp = Experiment(load_experiment_config(protocol.CONFIGS / f"{task}.yaml"))
    kept = {p.stem: read_json(p) for p in (protocol.ARCHIVE / task).glob("*-s*.json")}
    assert len(kept) >= 15
    planned = {protocol.run_id(*p): p for p in exp.plan()}
    for run, result in kept.items():
        assert result["key"] == exp.run_key(*planned[run]), run


def test_selection_diagnostics_are_shown_only_under_the_key_they_were_made_with(tmp_path, shared_data, monkeypatch):
    """The archived diagnostics outlive the machine; an entry whose arm, pool or references changed
    since (or that predates keys) is left out of the table and named as stale, never shown."""
    import json

    import protocol
    from igds.experiment import Experiment, load_experiment_config

    monkeypatch.chdir(protocol.ROOT)  # the configs' relative paths (data, the pinned v1 SAE)
    monkeypatch.setattr(protocol, "ARCHIVE", tmp_path / "archive")
    exp = Experiment(load_experiment_config(protocol.CONFIGS / "math.yaml"))
    keys = protocol.diagnostics_keys(exp)
    planted = {"random": {"key": keys["random"], "rho_n_tokens": 0.1},
               "igds_coverage": {"key": keys["igds_coverage"], "rho_n_tokens": 0.2},
               "igds_low": {"rho_n_tokens": 0.3},  # made before diagnostics carried keys
               "igds_quota": {"key": "made-with-other-settings", "rho_n_tokens": 0.4}}
    (tmp_path / "archive" / "math").mkdir(parents=True)
    (tmp_path / "archive" / "math" / "diagnostics.json").write_text(json.dumps(planted))
    fresh, stale = protocol.current_diagnostics(exp, "math")
    assert set(fresh) == {"random", "igds_coverage"} and stale == ["igds_low", "igds_quota"]
    # the coverage arm's gate changes: its entry goes stale, Random's (which does not read it) stays
    gate = Experiment(load_experiment_config(protocol.CONFIGS / "math.yaml", ["igds.select.gate=0.8"]))
    fresh, stale = protocol.current_diagnostics(gate, "math")
    assert set(fresh) == {"random"} and "igds_coverage" in stale
    # igds's scoring changes: every entry reads IGDS's pick (the ∩ IGDS column), so every one goes stale
    scoring = Experiment(load_experiment_config(protocol.CONFIGS / "math.yaml", ["igds.score.positions=content"]))
    assert protocol.current_diagnostics(scoring, "math")[0] == {}
    # a different pool changes every arm's key
    smaller = Experiment(load_experiment_config(protocol.CONFIGS / "math.yaml", ["igds.pool.limit=120"]))
    assert protocol.current_diagnostics(smaller, "math")[0] == {}
