"""igds.config: values are checked when loaded, cache keys come from field metadata, flags from the tree."""

import pytest

from igds.cli import main
from igds.config import (ConfigError, ExperimentConfig, FilterConfig, RunConfig, ScoreConfig, TrainSAEConfig,
                         cache_view, field_help, load_config)


@pytest.mark.parametrize("override, message", [
    ("score.aggregation=avg", "command line: score.aggregation: 'avg' is not one of mean, sum, max"),
    ("select.ratio=1.5", "command line: select.ratio: 1.5 is not <= 1"),
    ("recall.n_candidates=abc", "command line: recall.n_candidates: expected an integer, got 'abc'"),
    ("score.engine=spark", "command line: score.engine: 'spark' is not one of local, ray"),
    ("filter.enabled=maybe", "command line: filter.enabled: expected true or false, got 'maybe'"),
    ("sae.paths=[./no/such/sae]", "command line: sae.paths: './no/such/sae' does not exist"),
])
def test_bad_values_fail_on_load_with_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_bad_value_in_a_file_names_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("score:\n  aggregation: avg\n")
    with pytest.raises(ConfigError, match=f"^{p}: score.aggregation: 'avg'"):
        load_config(p)


def test_hub_names_are_not_checked_as_files():
    cfg = load_config(None, ["sae.paths=[gpt2-small-res-jb/blocks.8.hook_resid_pre]", "model.name=org/model",
                             "pool.path=hf:gsm8k:train", "sae.layers=3"])
    assert cfg.sae.layers == [3] and cfg.pool.path == "hf:gsm8k:train"


def test_run_dirs_written_before_the_rename_still_load(tmp_path):
    p = tmp_path / "config.yaml"
    p.write_text("task: {path: null, limit: 5}\n")
    assert load_config(p).task_data.limit == 5
    assert load_config(None, ["task.limit=6"]).task_data.limit == 6


def test_cache_view_leaves_out_knobs_that_do_not_change_results():
    # the same keys the hand lists held, so existing caches stay valid
    assert set(cache_view(ScoreConfig())) == {"aggregation", "normalize", "combine", "positions", "max_length"}
    assert "features_per_forward" not in cache_view(FilterConfig()) and "alpha" in cache_view(FilterConfig())
    ident = TrainSAEConfig().identity()
    assert not {"out_dir", "checkpoint_every", "log_every", "save_dtype", "device", "progress",
                "stop_after_steps"} & set(ident) and "k" in ident


def test_every_knob_has_a_comment():
    def walk(cls):
        import dataclasses
        helps = field_help(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.type) or f.name in ("model", "sae", "task_data", "validation",
                                                             "reference", "pool", "recall", "filter", "score",
                                                             "select", "igds", "eval", "finetune", "amplification"):
                continue
            assert helps.get(f.name), f"{cls.__name__}.{f.name} has no comment"
    for cls in (RunConfig, ScoreConfig, FilterConfig, TrainSAEConfig, ExperimentConfig):
        walk(cls)


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "--recall.n-candidates" in out and "candidates passed to the causal filter" in out
    assert "--score.ray-max-retries" in out


def test_config_show_prints_the_resolved_yaml(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("recall: {n_candidates: 7}\n")
    assert main(["config", "show", "--config", str(p), "score.aggregation=max"]) == 0
    out = capsys.readouterr().out
    assert "n_candidates: 7" in out and "aggregation: max" in out
    assert main(["config", "show", "--for", "train-sae", "k=4"]) == 0
    assert "k: 4" in capsys.readouterr().out


@pytest.mark.parametrize("raw", ["1e-3", "1.0e-3", "0.001"])
def test_float_knobs_take_short_exponents(raw):
    # YAML 1.1 reads "1e-3" as a string; `igds train-sae --lr 1e-3` must still mean 0.001
    cfg = load_config(None, {"lr": raw}, cls=TrainSAEConfig)
    assert cfg.lr == 0.001
    with pytest.raises(ConfigError, match="lr: expected a number, got 'fast'"):
        load_config(None, {"lr": "fast"}, cls=TrainSAEConfig)


def test_preset_paper_goes_under_the_users_file_and_flags(tmp_path):
    from igds.config import PRESETS, ExperimentConfig, load_config
    from igds.experiment.runner import method_dir, run_config

    plain = load_config(None)
    assert plain.filter.estimator == "screened" and not plain.filter.enabled and plain.preset is None
    paper = load_config(None, ["preset=paper"])
    assert paper.filter.estimator == "amplify" and paper.filter.enabled and paper.recall.method == "frequency"
    assert all(getattr(getattr(paper, k.split(".")[0]), k.split(".")[1]) == v for k, v in PRESETS["paper"].items())
    # the user's own value wins over the preset, from a flag or from the file
    assert load_config(None, ["preset=paper", "filter.estimator=central"]).filter.estimator == "central"
    yml = tmp_path / "run.yaml"
    yml.write_text("preset: paper\nscore:\n  positions: content\n")
    from_file = load_config(yml)
    assert from_file.score.positions == "content" and from_file.filter.estimator == "amplify"
    with pytest.raises(ConfigError, match="unknown preset 'papr'"):
        load_config(None, ["preset=papr"])
    # in an experiment: igds.preset applies to the igds section; the igds_paper arm puts it on a copy
    exp = load_config(None, {"igds.preset": "paper"}, cls=ExperimentConfig, rules=False)
    assert exp.igds.filter.estimator == "amplify"
    exp = load_config(None, None, cls=ExperimentConfig, rules=False)
    arm = run_config(exp, "igds_paper")
    assert arm.filter.estimator == "amplify" and arm.preset == "paper" and exp.igds.filter.estimator == "screened"
    assert method_dir(tmp_path, "igds_paper") == tmp_path / "ablations" / "igds_paper"
    # the igds_content arm: every stage on content positions, the rest of the igds section unchanged
    content = run_config(exp, "igds_content")
    assert (content.recall.positions, content.filter.positions, content.score.positions) == ("content",) * 3
    assert exp.igds.score.positions == "all" and content.filter.estimator == exp.igds.filter.estimator
    assert method_dir(tmp_path, "igds_content") == tmp_path / "ablations" / "igds_content"


def test_filter_alpha_must_amplify():
    from igds.config import load_config

    for alpha in ("1", "0.5", "0"):  # below 1 the edit weakens the feature: every effect's sign would flip
        with pytest.raises(ConfigError, match="filter.alpha"):
            load_config(None, [f"filter.alpha={alpha}"])
    assert load_config(None, ["filter.alpha=1.5"]).filter.alpha == 1.5


def test_a_late_knob_at_its_default_leaves_cache_keys_as_they_were():
    """filter.confirm_top came after results were archived: at its default the keys hash what they hashed
    before (asdict without it); set away from it, it is in the key."""
    from dataclasses import asdict

    from igds.config import FilterConfig, cache_view, key_view

    before = {k: v for k, v in asdict(FilterConfig()).items() if k != "confirm_top"}
    assert key_view(FilterConfig()) == before
    assert "confirm_top" not in cache_view(FilterConfig())
    assert key_view(FilterConfig(confirm_top=3))["confirm_top"] == 3 == cache_view(FilterConfig(confirm_top=3))[
        "confirm_top"]
    assert key_view(FilterConfig(estimator="central")) != key_view(FilterConfig())
