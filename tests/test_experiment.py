import json
import math
from pathlib import Path

import numpy as np
import pytest

from igds import experiment as ex
from igds.config import ConfigError
from igds.experiment import runner
from igds.experiment import (ExperimentConfig, amplification, build_results, correlation, load_experiment_config,
                             mean_std, results_markdown, summarize)

pytest.importorskip("peft")


TASK = {"name": "addq", "prompt_field": "prompt", "response_field": "completion", "metric": "exact_match",
        "max_new_tokens": 4}


def _write(path, n, prefix):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"{prefix}{i}", "prompt": f"Q{i}: add {i} and {i}",
                                "completion": " ".join(["x"] * (1 + i % 5))}) + "\n")
    return str(path)


@pytest.fixture
def setup(tmp_path, tiny_lm, monkeypatch):
    calls = []
    real = runner.train_model

    def counting(*a, **kw):
        calls.append(a[3])
        return real(*a, **kw)

    monkeypatch.setattr(runner, "train_model", counting)
    cfg = load_experiment_config(None, {
        "task": TASK, "igds": {"out": str(tmp_path / "run"), "pool": {"path": _write(tmp_path / "pool.jsonl", 10, "p")},
                               "report": False},
        "eval": {"paths": [_write(tmp_path / "test.jsonl", 4, "t")], "limit": 3, "options": {"progress": False}},
        "methods": ["random", "longest", "full"], "ratios": [0.5], "seeds": [0, 1],
        "finetune": {"max_steps": 2, "batch_size": 2, "lora_r": 2, "progress": False, "save": False},
        "amplification": {"enabled": False}})
    return cfg, calls, tiny_lm


def test_runner_resumes_without_redoing_runs(setup):
    cfg, calls, lm = setup
    first = ex.run_experiment(cfg, lm=lm)
    # random x 2 seeds, longest x 2 seeds, full x 2 seeds
    assert len(calls) == 6
    assert {(r["method"], r["ratio"], r["seed"]) for r in first["runs"]} == {
        ("random", 0.5, 0), ("random", 0.5, 1), ("longest", 0.5, 0), ("longest", 0.5, 1),
        ("full", 1.0, 0), ("full", 1.0, 1)}
    assert all(r["n_train"] == (10 if r["method"] == "full" else 5) for r in first["runs"])
    # seeds outermost: a run stopped part-way has every method at seed 0 first
    assert [c.parent.name for c in calls] == ["random-r0.5-s0", "longest-r0.5-s0", "full-r1-s0",
                                              "random-r0.5-s1", "longest-r0.5-s1", "full-r1-s1"]
    exp_dir = Path(cfg.igds.out) / "experiment"
    md1 = (exp_dir / "results.md").read_text()
    csv1 = (exp_dir / "results.csv").read_text()
    # random selections differ by seed; longest is the same subset for both seeds
    sel = {r["run"]: json.loads((exp_dir / "runs" / r["run"] / "selection.json").read_text())["indices"]
           for r in first["runs"]}
    assert sel["random-r0.5-s0"] != sel["random-r0.5-s1"]
    assert sel["longest-r0.5-s0"] == sel["longest-r0.5-s1"]
    assert (Path(cfg.igds.out) / "baselines" / "random.parquet").exists()
    assert (Path(cfg.igds.out) / "baselines" / "random-seeds" / "seed-1.parquet").exists()

    calls.clear()
    second = ex.run_experiment(cfg, lm=lm)
    assert calls == []
    assert (exp_dir / "results.md").read_text() == md1
    assert (exp_dir / "results.csv").read_text() == csv1
    assert {k: v for k, v in second.items() if k != "wall_s"} == {k: v for k, v in first.items() if k != "wall_s"}

    # an interrupted experiment: one result missing -> exactly that run is redone
    (exp_dir / "runs" / "longest-r0.5-s1" / "result.json").unlink()
    ex.run_experiment(cfg, lm=lm)
    assert len(calls) == 1 and "longest-r0.5-s1" in str(calls[0])

    # a setting that changes the numbers invalidates the runs it touches
    calls.clear()
    cfg.finetune.max_steps = 3
    ex.run_experiment(cfg, lm=lm)
    assert len(calls) == 6


def test_mean_std_and_markdown_cells_from_known_numbers():
    runs = [
        {"run": f"igds-r0.5-s{s}", "method": "igds", "ratio": 0.5, "seed": s, "n_train": 50,
         "metrics": {"exact_match": em, "ref_loss": rl}, "feature_amplification": amp, "feature_log_ratio": None,
         "finetune": {"seconds": 1.0}}
        for s, em, rl, amp in [(0, 0.10, 2.0, 0.1), (1, 0.20, 1.0, 0.3), (2, 0.30, 3.0, 0.2)]
    ] + [{"run": "random-r0.5-s0", "method": "random", "ratio": 0.5, "seed": 0, "n_train": 50,
          "metrics": {"exact_match": 0.05, "ref_loss": 2.5}, "feature_amplification": 0.0,
          "feature_log_ratio": None, "finetune": {}}]
    base = {"metrics": {"exact_match": 0.02, "ref_loss": 3.5}}
    res = build_results(ExperimentConfig(name="t", task="math"), "exact_match", base, runs)
    cell = next(c for c in res["summary"] if c["method"] == "igds")
    assert cell["n"] == 3
    assert cell["metrics"]["exact_match"]["mean"] == pytest.approx(0.2)
    assert cell["metrics"]["exact_match"]["std"] == pytest.approx(0.1)  # sample std of .1,.2,.3
    assert cell["metrics"]["ref_loss"]["std"] == pytest.approx(1.0)
    assert cell["task_gain"]["mean"] == pytest.approx(0.18)
    rnd = next(c for c in res["summary"] if c["method"] == "random")
    assert rnd["n"] == 1 and rnd["metrics"]["exact_match"]["std"] is None
    md = results_markdown(res)
    assert "| igds | 0.5 | 3 | 50 | 0.2000 ± 0.1000 | 2.0000 ± 1.0000 | 0.1800 ± 0.1000 | 0.2000 ± 0.1000 |" in md
    assert "| random | 0.5 | 1 | 50 | 0.0500 | 2.5000 | 0.0300 | 0.0000 |" in md
    assert "| base (no fine-tuning) | – | – | – | 0.0200 | 3.5000 | – | – |" in md
    # correlation of amplification with gain over the 4 runs
    gains = [0.08, 0.18, 0.28, 0.03]
    amps = [0.1, 0.3, 0.2, 0.0]
    from scipy import stats

    assert res["correlation"]["n"] == 4
    assert res["correlation"]["pearson"] == pytest.approx(stats.pearsonr(amps, gains).statistic)
    assert res["correlation"]["spearman"] == pytest.approx(0.8)


def test_amplification_is_geometric_mean_relative_rise():
    out = amplification([1.0, 2.0], np.array([2.0, 8.0]), eps=0.0)
    # ratios 2 and 4: geometric mean sqrt(8)
    assert out["feature_amplification"] == pytest.approx(math.sqrt(8) - 1)
    assert out["feature_log_ratio"] == pytest.approx(math.log(8) / 2)
    assert out["feature_ratios"] == pytest.approx([2.0, 4.0])
    assert amplification(None, np.ones(2), 1e-6)["feature_amplification"] is None


def test_correlation_needs_three_varying_points():
    assert correlation([0.1, 0.2], [1.0, 2.0])["pearson"] is None
    assert correlation([0.1, 0.2, None, 0.3], [1.0, 1.0, 5.0, 1.0])["pearson"] is None
    c = correlation([1, 2, 3, None], [2, 4, 7, 1])
    assert c["n"] == 3 and c["spearman"] == pytest.approx(1.0)


def test_mean_std_single_and_empty():
    assert mean_std([0.5]) == (0.5, None, 1)
    m, s, n = mean_std([])
    assert math.isnan(m) and s is None and n == 0
    assert summarize([], "x") == []


def _exp_yaml(tmp_path, body):
    for name in ("a.jsonl", "b.jsonl", "c.jsonl"):
        (tmp_path / name).write_text("")
    p = tmp_path / "exp.yaml"
    p.write_text(body.replace("DIR", str(tmp_path)))
    return p


def test_config_errors_name_the_field(tmp_path):
    p = _exp_yaml(tmp_path, "igds: {pool: {path: DIR/a.jsonl}, task_data: {path: DIR/c.jsonl}}\n"
                            "eval: {paths: [DIR/b.jsonl]}\nmethods: [igds, best]\n")
    with pytest.raises(ConfigError, match=f"{p}: methods: .*best"):
        load_experiment_config(p)
    with pytest.raises(ConfigError, match="command line: ratios: 1.5 is not in"):
        load_experiment_config(p, ["methods=[random]", "ratios=[1.5]"])
    with pytest.raises(ConfigError, match="unknown config key"):
        load_experiment_config(p, ["finetune.lora_rank=4"])
    with pytest.raises(ConfigError, match="command line: finetune.epochs: expected a number, got 'abc'"):
        load_experiment_config(p, ["methods=[random]", "finetune.epochs=abc"])
    cfg = load_experiment_config(p, ["methods=[random]", "finetune.epochs=1", "seeds=[0,1,2]"])
    assert cfg.finetune.epochs == 1 and cfg.seeds == [0, 1, 2]
    # every registered selector is a method; the targeting ones need the task examples
    cfg = load_experiment_config(p, ["methods=[full, mona, bm25, dsir, embed, zip]"])
    assert cfg.methods == ["full", "mona", "bm25", "dsir", "embed", "zip"]
    with pytest.raises(ConfigError, match=r"igds.task_data.path: \['bm25'\] score the pool against the task"):
        load_experiment_config(p, ["methods=[random, bm25]", "igds.task_data.path=null"])


def test_flat_layout_of_before_points_to_the_igds_section(tmp_path):
    p = _exp_yaml(tmp_path, "pool: {path: DIR/a.jsonl}\n")
    with pytest.raises(ConfigError, match=f"{p}: unknown config key 'pool'; it is now 'igds.pool'"):
        load_experiment_config(p)


def test_igds_methods_amplification_and_report(tiny_lm, tmp_path):
    """IGDS and an ablation through the real pipeline (planted SAE), amplification per run, report."""
    from planted import save_model_and_seven_detector

    pytest.importorskip("matplotlib")
    task_rows = [{"id": f"t{i}", "prompt": f"add 7{i} and 17", "completion": f"7{i + 17}"} for i in range(16)]
    ref_rows = [{"id": f"r{i}", "prompt": f"describe the garden {chr(97 + i)}", "completion": "green"}
                for i in range(12)]
    pool_rows = [{"id": f"p{i}", "prompt": f"what is 7{i} + 7" if i % 2 else f"name a colour {i}",
                  "completion": "77" if i % 2 else "blue"} for i in range(12)]
    eval_rows = [{"id": f"e{i}", "prompt": f"add 7{i} and 7", "completion": f"7{i + 7}"} for i in range(4)]
    paths = {}
    for name, rows in (("task", task_rows + pool_rows), ("ref", ref_rows), ("pool", pool_rows),
                       ("eval", eval_rows)):
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_model_and_seven_detector(tiny_lm, tmp_path, [r["prompt"] for r in task_rows],
                                  [r["prompt"] for r in ref_rows])
    cfg = load_experiment_config(None, {
        "task": TASK, "igds": {
            "out": str(tmp_path / "run"), "model": {"name": str(tmp_path / "model")},
            "sae": {"paths": [str(tmp_path / "sae")]}, "reference": {"path": str(paths["ref"])},
            "task_data": {"path": str(paths["task"])}, "pool": {"path": str(paths["pool"])},
            "recall": {"n_candidates": 4, "probe_size": 16}, "filter": {"validation_size": 6, "on_empty": "recall_only"},
            "score": {"shard_size": 8}},
        "eval": {"paths": [str(paths["eval"])], "options": {"progress": False}},
        "methods": ["igds", "igds_recall_only", "random"], "ratios": [0.5], "seeds": [0],
        "finetune": {"max_steps": 3, "batch_size": 2, "lora_r": 2, "learning_rate": 1e-2, "progress": False}})
    res = ex.run_experiment(cfg)
    run_dir = tmp_path / "run"
    # task data went through the task format, minus the pool's ids
    task_ids = [json.loads(line)["id"] for line in open(run_dir / "data" / "task_data.jsonl")]
    assert task_ids == [f"t{i}" for i in range(16)]
    assert (run_dir / "scores.parquet").exists() and (run_dir / "ablations" / "igds_recall_only" / "scores.parquet").exists()
    fs = json.loads((run_dir / "features.json").read_text())
    assert fs["validated"]
    runs = {r["method"]: r for r in res["runs"]}
    assert set(runs) == {"igds", "igds_recall_only", "random"}
    for r in runs.values():
        assert r["n_train"] == 6
        assert isinstance(r["feature_amplification"], float) and math.isfinite(r["feature_amplification"])
        assert r["task_gain"] is not None
        trained = r.get("same_training_as", r["run"])  # igds_recall_only may pick igds's rows: one training
        assert (run_dir / "experiment" / "runs" / trained / "finetune" / "adapter" / "adapter_config.json").exists()
    base = json.loads((run_dir / "experiment" / "base" / "result.json").read_text())
    assert len(base["feature_acts"]) == len(fs["validated"])
    assert res["correlation"]["n"] == 3
    # the IGDS subset prefers the math half of the pool that the planted feature detects
    sel = json.loads((run_dir / "experiment" / "runs" / "igds-r0.5-s0" / "selection.json").read_text())
    assert sum(int(i[1:]) % 2 for i in sel["ids"]) >= 5
    preds = list((run_dir / "experiment" / "runs" / "igds-r0.5-s0" / "predictions").glob("*eval.jsonl"))
    assert len(preds) == 1 and len(preds[0].read_text().splitlines()) == 4
    assert "experiment/results.json</code> not found" not in (run_dir / "report.html").read_text()


def test_cli_entry_reports_config_errors(tmp_path, capsys):
    from igds.cli import main

    p = _exp_yaml(tmp_path, "igds: {pool: {path: DIR/a.jsonl}}\neval: {paths: [DIR/b.jsonl]}\nmethods: [random]\n")
    assert main(["experiment", "--config", str(p), "ratios=[2]"]) == 2
    assert capsys.readouterr().err.strip() == "igds: error: command line: ratios: 2.0 is not in (0, 1]"


def test_equal_steps_gives_every_arm_fulls_step_count_and_loss_files_are_scored(setup, tmp_path):
    cfg, calls, lm = setup
    cfg.finetune.max_steps = -1
    cfg.finetune.epochs = 1.0
    cfg.finetune.equal_steps = True
    cfg.seeds = [0]
    cfg.eval.loss_paths = [_write(tmp_path / "validation.jsonl", 7, "v")]
    cfg.eval.loss_limit = 6
    res = ex.run_experiment(cfg, lm=lm)
    steps = {r["method"]: r["finetune_steps"] for r in res["runs"]}
    # Full: 10 examples / batch 2 = 5 steps in one epoch; the 5-example arms make two passes for the same 5
    assert steps == {"random": 5, "longest": 5, "full": 5}
    assert {r["steps_mode"] for r in res["runs"]} == {"equal_steps"}
    name = f"{tmp_path.name}-validation"  # eval_name: parent folder and stem
    for r in res["runs"]:
        assert math.isfinite(r["metrics"][f"{name}/ref_loss"])
        assert r["metrics"][f"{name}/ref_loss"] != r["metrics"]["ref_loss"]  # its own rows, not the test rows
    pred = Path(cfg.igds.out) / "experiment" / "runs" / "full-r1-s0" / "predictions" / f"{name}.jsonl"
    assert len(pred.read_text().splitlines()) == 6

    # fixed epochs: the half-size arms get half the steps (3 = ceil(5 / 2))
    cfg.finetune.equal_steps = False
    res = ex.run_experiment(cfg, lm=lm)
    steps = {r["method"]: r["finetune_steps"] for r in res["runs"]}
    assert steps == {"random": 3, "longest": 3, "full": 5}
    assert {r["steps_mode"] for r in res["runs"]} == {"epochs"}


def test_equal_steps_refuses_an_explicit_step_count():
    from igds.config import FinetuneConfig
    with pytest.raises(ConfigError, match="equal_steps"):
        FinetuneConfig(equal_steps=True, max_steps=10)
    assert FinetuneConfig(epochs=2, batch_size=4).steps_for(10) == 6  # ceil(10/4)=3 batches x 2 epochs


def test_an_arm_with_the_same_training_rows_reuses_its_twins_run(setup, monkeypatch):
    """Same rows, order, seed and recipe give the same model: the second arm is not trained again
    (igds with no feature passing and on_empty=recall_only is igds_recall_only). Other seeds train."""
    cfg, calls, lm = setup
    real = runner.Experiment.table
    monkeypatch.setattr(runner.Experiment, "table",
                        lambda self, method, seed: real(self, "longest" if method == "random" else method, seed))
    cfg.methods = ["longest", "random"]
    res = ex.run_experiment(cfg, lm=lm)
    assert [c.parent.name for c in calls] == ["longest-r0.5-s0", "longest-r0.5-s1"]
    by = {r["run"]: r for r in res["runs"]}
    for seed in (0, 1):
        twin, reused = by[f"longest-r0.5-s{seed}"], by[f"random-r0.5-s{seed}"]
        assert reused["same_training_as"] == twin["run"] and reused["metrics"] == twin["metrics"]
        assert reused["method"] == "random" and reused["finetune_seconds"] == 0.0 < twin["finetune_seconds"]
        on_disk = json.loads((Path(cfg.igds.out) / "experiment" / "runs" / reused["run"] / "result.json").read_text())
        assert on_disk["same_training_as"] == twin["run"] and on_disk["key"] != twin.get("key")
    # a different selection is trained (its runs removed: run keys assume a method's table is its own)
    monkeypatch.setattr(runner.Experiment, "table", real)
    for seed in (0, 1):
        (Path(cfg.igds.out) / "experiment" / "runs" / f"random-r0.5-s{seed}" / "result.json").unlink()
    calls.clear()
    res = ex.run_experiment(cfg, lm=lm)
    assert sorted(c.parent.name for c in calls) == ["random-r0.5-s0", "random-r0.5-s1"]
    assert not any("same_training_as" in r for r in res["runs"])


def test_finished_runs_follow_the_sae_by_content_not_by_path(tiny_lm, tmp_path):
    """Moving an SAE keeps its runs' keys; replacing the SAE at the same path changes them (igds, the
    SAE baselines and the base model), so a finished run on the old SAE is never reused."""
    import shutil

    from planted import blank_sae, plant_always_on

    pool = _write(tmp_path / "pool.jsonl", 8, "p")
    blank_sae(tiny_lm, 1).save(tmp_path / "sae")

    def keys(sae_path):
        cfg = load_experiment_config(None, {
            "task": TASK, "igds": {"out": str(tmp_path / "run"), "pool": {"path": pool},
                                   "task_data": {"path": _write(tmp_path / "task.jsonl", 6, "t")},
                                   "sae": {"paths": [str(sae_path)]}},
            "eval": {"paths": [_write(tmp_path / "test.jsonl", 4, "e")]},
            "methods": ["igds", "mona", "random"], "ratios": [0.5], "seeds": [0]})
        exp = ex.Experiment(cfg)
        return {m: exp.run_key(m, 0.5, 0) for m in ("igds", "igds_paper", "mona", "random")}, exp.sae_key()

    before, content = keys(tmp_path / "sae")
    shutil.move(tmp_path / "sae", tmp_path / "moved")
    assert keys(tmp_path / "moved") == (before, content)  # the same SAE elsewhere: the same runs
    (tmp_path / "moved" / "README.md").write_text("a model card, edited")
    assert keys(tmp_path / "moved") == (before, content)  # documentation is not the SAE

    replaced = blank_sae(tiny_lm, 1)
    plant_always_on(replaced, 3)
    replaced.save(tmp_path / "moved")  # a retrained SAE written over the old one
    after, new_content = keys(tmp_path / "moved")
    assert new_content != content
    assert {m for m in before if after[m] != before[m]} == {"igds", "igds_paper", "mona"}  # random reads no SAE


def test_run_keys_do_not_depend_on_where_the_run_folder_or_data_lie(tmp_path):
    """The same pool and task rows in another checkout (another run folder, other file paths) give the
    same keys, so archived runs restore there; different rows give different keys."""
    def keys(folder, task_rows=6):
        folder.mkdir()
        cfg = load_experiment_config(None, {
            "task": TASK, "igds": {"out": str(folder / "run"), "pool": {"path": _write(folder / "pool.jsonl", 8, "p")},
                                   "task_data": {"path": _write(folder / "task.jsonl", task_rows, "t")}},
            "eval": {"paths": [_write(tmp_path / "test.jsonl", 4, "e")]},
            "methods": ["igds", "bm25", "random"], "ratios": [0.5], "seeds": [0]})
        exp = ex.Experiment(cfg)
        return {m: exp.run_key(m, 0.5, 0) for m in ("igds", "igds_filtered", "bm25", "random")}

    here = keys(tmp_path / "checkout-a")
    assert keys(tmp_path / "checkout-b") == here
    other = keys(tmp_path / "checkout-c", task_rows=5)
    assert {m for m in here if other[m] != here[m]} == {"igds", "igds_filtered", "bm25"}  # random reads no task rows
