"""The CLI end to end on a tiny model saved to disk, with a planted SAE."""

import json

import pyarrow.parquet as pq
import pytest

from igds.cli import main

def _run(s, *extra):
    return main(["run", "--model", s["model"], "--sae", s["sae"], "--task-data", s["task"], "--reference", s["ref"],
                 "--pool", s["pool"], "--ratio", "0.5", "--out", s["out"], "--no-report",
                 "filter.validation_size=6", "filter.enabled=false", "recall.n_candidates=4", "score.shard_size=8", *extra])


def test_run_writes_features_scores_selection(setup, capsys):
    assert _run(setup) == 0
    out = capsys.readouterr().out
    assert "selection:" in out and "10 examples" in out
    fs = json.loads(open(setup["out"] + "/features.json").read())
    assert fs["candidates"][0]["key"] == "L1/F5" and fs["validated"]
    table = pq.read_table(setup["out"] + "/scores.parquet")
    assert table.num_rows == 20
    selected = [json.loads(line) for line in open(setup["out"] + "/selection.jsonl")]
    assert len(selected) == 10 and all("igds_score" in r for r in selected)
    # the pool's own dialect comes back: prompt/completion records with their extra fields
    assert set(selected[0]) == {"id", "prompt", "completion", "source", "igds_score", "igds_index", "igds_id"}
    assert sum(r["source"] == "math" for r in selected) >= 8
    assert (setup["out"] + "/config.yaml") and json.loads(open(setup["out"] + "/run.json").read())["pool_size"] == 20


def test_rerun_reuses_finished_stages(setup, capsys):
    assert _run(setup) == 0
    before = open(setup["out"] + "/scores.parquet", "rb").read()
    capsys.readouterr()
    assert _run(setup) == 0
    assert "features: reusing" in capsys.readouterr().out
    assert open(setup["out"] + "/scores.parquet", "rb").read() == before


def test_select_another_budget_without_recomputing(setup, capsys):
    assert _run(setup) == 0
    assert main(["select", setup["out"], "--budget", "3"]) == 0
    rows = [json.loads(line) for line in open(setup["out"] + "/selection_n3.jsonl")]
    assert len(rows) == 3
    scores = [r["igds_score"] for r in rows]
    assert scores == sorted(scores, reverse=True)


def test_bad_pool_line_is_reported_with_file_and_line(setup, tmp_path, capsys):
    bad = tmp_path / "bad_pool.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": 3}\n')
    setup["pool"] = str(bad)
    assert _run(setup) == 2
    assert "bad_pool.jsonl:2: field 'completion': expected a string, got int" in capsys.readouterr().err


def test_unknown_config_key_is_an_error(setup, capsys):
    assert _run(setup, "recall.n_candidatez=3") == 2
    err = capsys.readouterr().err
    assert err.startswith("igds: error: command line: unknown config key 'recall.n_candidatez'") and err.count("\n") == 1


def test_baseline_tables_select_like_igds(setup, tmp_path, capsys):
    out = tmp_path / "longest.parquet"
    assert main(["baseline", "longest", "--pool", setup["pool"], "--model", setup["model"], "--out", str(out)]) == 0
    assert _run(setup) == 0
    assert main(["select", setup["out"], "--ratio", "0.25", "--scores", str(out),
                 "--output", str(tmp_path / "sel.jsonl")]) == 0
    rows = [json.loads(line) for line in open(tmp_path / "sel.jsonl")]
    lengths = sorted((len(r["completion"]) for r in setup["pool_rows"]), reverse=True)
    assert len(rows) == 5 and all(len(r["completion"]) >= lengths[4] for r in rows)


def test_baseline_targets_the_task_data_through_the_registry(setup, tmp_path):
    # bm25 against the task rows ("add 7i and 17"): the pool's arithmetic rows must outrank the colour rows
    out = tmp_path / "bm25.parquet"
    assert main(["baseline", "bm25", "--pool", setup["pool"], "--task-data", setup["task"], "--out", str(out)]) == 0
    table = pq.read_table(out)
    assert table.column_names[:4] == ["index", "id", "score", "n_tokens"]
    score = dict(zip(table.column("id").to_pylist(), table.column("score").to_pylist()))
    math_rows = [r["id"] for r in setup["pool_rows"] if r["source"] == "math"]
    other_rows = [r["id"] for r in setup["pool_rows"] if r["source"] != "math"]
    assert min(score[i] for i in math_rows) > max(score[i] for i in other_rows)


def test_baseline_errors_are_one_line(setup, tmp_path, capsys):
    assert main(["baseline", "bm25", "--pool", setup["pool"], "--task-data", setup["task"],
                 "--out", str(tmp_path / "x")]) == 2
    assert "ending in .parquet" in capsys.readouterr().err
    assert main(["baseline", "bm25", "--pool", setup["pool"], "--out", str(tmp_path / "x.parquet")]) != 0
    err = capsys.readouterr().err
    assert err.startswith("igds: error:") and "task_data" in err and err.count("\n") == 1


def test_overrides_may_sit_between_flags():
    from igds.cli import UsageError, parse

    args = parse(["score", "--config", "c.yaml", "recall.n_candidates=8", "--engine", "ray", "seed=3",
                  "--out", "x"])
    assert args.overrides == ["recall.n_candidates=8", "seed=3"]
    assert vars(args)["cfg:score.engine"] == ["ray"] and vars(args)["cfg:out"] == ["x"]
    with pytest.raises(UsageError, match="unrecognized arguments: not-an-override"):
        parse(["score", "a=1", "--engine", "ray", "not-an-override"])


def test_missing_config_file_is_one_line(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err == f"igds: error: {tmp_path / 'nope.yaml'}: config file not found\n"


def test_missing_run_dir_is_one_line(tmp_path, capsys):
    assert main(["select", str(tmp_path / "nope"), "--ratio", "0.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"igds: error: {tmp_path / 'nope'}: run directory not found") and err.count("\n") == 1


def test_bad_value_type_fails_before_the_model_loads(setup, capsys, monkeypatch):
    import igds.pipeline

    monkeypatch.setattr(igds.pipeline, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    assert _run(setup, "recall.n_candidates=abc") == 2
    assert capsys.readouterr().err == ("igds: error: command line: recall.n_candidates: expected an integer, "
                                       "got 'abc'\n")


def test_ctrl_c_says_what_is_cached_and_how_to_resume(setup, capsys, monkeypatch):
    import igds.pipeline

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(igds.pipeline, "scores", interrupted)
    assert _run(setup) == 130
    last = capsys.readouterr().err.splitlines()[-1]  # after the model-loading progress bar
    assert last.startswith(f"igds: interrupted; cached in {setup['out']}: features.json. ")
    assert "Resume with the same command: igds run --model" in last


def test_a_missing_extra_names_the_pip_install(setup, tmp_path, monkeypatch, capsys):
    # hide bm25s as if igds[select] were not installed: one line naming the extra, exit 1
    import sys
    monkeypatch.setitem(sys.modules, "bm25s", None)
    assert main(["baseline", "bm25", "--pool", setup["pool"], "--task-data", setup["task"],
                 "--out", str(tmp_path / "b.parquet")]) == 1
    err = capsys.readouterr().err
    assert err == "igds: error: selector 'bm25' needs the package bm25s: pip install 'igds[select]'\n"
