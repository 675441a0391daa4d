"""benchmarks/filter_diagnostics.py: each variant's Stage 1 settings, and a new machine keeping the archive."""

import json

import filter_diagnostics as fd
import pytest

from igds.config import RunConfig


@pytest.mark.parametrize("variant, positions, estimator, random, recall", [
    ("paper", "all", "amplify", False, "frequency"),
    ("all-recalled", "all", "central", False, "frequency"),
    ("content-random", "content", "central", True, "frequency"),
    ("content-attribution", "content", "central", False, "attribution"),
    ("all-gradient", "all", "gradient", False, "frequency"),
    ("all-screened", "all", "screened", False, "frequency"),
    ("content-screened-random", "content", "screened", True, "frequency"),
])
def test_variant_settings(variant, positions, estimator, random, recall):
    cfg = fd.variant_config(RunConfig(), variant)
    assert (cfg.recall.positions, cfg.filter.positions, cfg.score.positions) == (positions,) * 3
    assert cfg.filter.estimator == estimator and cfg.filter.random_candidates is random
    assert cfg.recall.method == recall and cfg.filter.on_empty == "recall_only"
    off = RunConfig()
    off.filter.enabled = False  # whatever the default, every variant runs the filter it is about
    assert fd.variant_config(off, variant).filter.enabled


def test_tasks_not_run_here_keep_their_archived_rows(tmp_path, monkeypatch):
    archive = tmp_path / "filter_diagnostics.json"
    row = {"candidates": 24, "passed_half_a": 3, "confirmed": 2, "template_share_candidates": 0.1,
           "template_share_validated": 0.0, "split_half_r": 0.5, "split_half_same_sign": 0.9, "seconds": 100.0,
           "outcome": "kept 2 of 24", "validated": []}
    archive.write_text(json.dumps({"summarization": {"all-recalled": row, "scoring_seconds_400": 50.0}}))
    monkeypatch.setattr(fd, "RESULTS", archive)
    monkeypatch.setattr(fd, "OUT", tmp_path / "runs")  # nothing run on this machine
    monkeypatch.setattr(fd, "ROOT", tmp_path)
    monkeypatch.setattr(fd, "splice", lambda name, text: None)
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    assert fd.main(["--collect-only"]) == 0
    kept = json.loads(archive.read_text())
    assert kept["summarization"]["all-recalled"]["confirmed"] == 2
    assert "| summarization | all-recalled | 24 | 3 | 2 |" in (tmp_path / "benchmarks" / "results" /
                                                              "filter_diagnostics.md").read_text()


def test_fisher_exact_matches_scipy_and_pools_the_tasks():
    stats = pytest.importorskip("scipy.stats")
    for a, n_a, b, n_b in ((2, 24, 0, 24), (4, 96, 1, 96), (10, 96, 2, 96), (0, 24, 3, 24)):
        expected = stats.fisher_exact([[a, n_a - a], [b, n_b - b]], alternative="greater").pvalue
        assert fd.fisher_greater(a, n_a, b, n_b) == pytest.approx(expected, rel=1e-9)
    row = lambda kept: {"candidates": 24, "confirmed": kept}  # noqa: E731
    pooled = fd.pooled_recalled_vs_random({"math": {"all-recalled": row(2), "all-random": row(0)},
                                           "summarization": {"all-recalled": row(2), "all-random": row(1)},
                                           "translation": {"all-recalled": row(5)}})  # no random row: left out
    assert (pooled["recalled"], pooled["n_recalled"], pooled["random"], pooled["n_random"]) == (4, 48, 1, 48)
    assert pooled["tasks"] == ["math", "summarization"] and 0.1 < pooled["p"] < 0.3
