"""Never silently stale or wrong (issue 16, items 1, 2, 6, 10): content-keyed caches, score tables
checked against the pool, a guarded run directory, progress totals and ``igds.log``.

Every test drives the CLI on the tiny model saved to disk with a planted SAE (``setup`` from
test_cli) and changes one input in place between two runs into the same directory.
"""

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from filelock import FileLock

from igds.artifacts import RunInfo, fingerprint
from igds.cli import main
from igds.config import load_config
from igds.inputs import precision
from igds.ray_engine import worker_placement
from igds.selection import table_meta

from planted import blank_sae, plant_detector
from conftest import REF, TASK
from test_cli import _run

REUSED = "features: reusing"


def _rerun_output(setup, capsys, *extra):
    capsys.readouterr()
    assert _run(setup, *extra) == 0
    return capsys.readouterr().out


def _shard_folders(setup):
    return sorted(p.name for p in Path(setup["out"], "cache").glob("scores-*"))


def test_unchanged_inputs_are_reused(setup, capsys):
    assert _run(setup) == 0
    assert REUSED in _rerun_output(setup, capsys)
    assert len(_shard_folders(setup)) == 1


def test_sae_weights_replaced_in_place_recompute(setup, tiny_lm, capsys):
    assert _run(setup) == 0
    sae = blank_sae(tiny_lm, 1)  # same shape and detector, other weights, same folder
    plant_detector(tiny_lm, sae, 5, 1, [r["instruction"] for r in TASK], [r["instruction"] for r in REF], "7")
    with torch.no_grad():
        sae.W_enc.mul_(2)
        sae.b_enc.mul_(2)
    sae.save(setup["sae"])
    assert REUSED not in _rerun_output(setup, capsys)
    assert len(_shard_folders(setup)) == 2  # the scores were recomputed too, under another key


def test_reference_statistics_are_reused_across_runs_and_refused_when_stale(setup, tiny_lm, tmp_path, monkeypatch):
    """The reference pass runs once per model + SAE + reference; another task reuses it with identical
    statistics; new SAE weights or an unreadable file make it run again."""
    import igds.features as features

    passes = []
    real = features.firing_stats
    monkeypatch.setattr(features, "firing_stats", lambda *a, **k: passes.append(k.get("desc")) or real(*a, **k))

    def run(out, *extra):
        passes.clear()
        assert _run({**setup, "out": str(tmp_path / out)}, *extra) == 0
        return pq.read_table(tmp_path / out / "feature_stats.parquet").column("ref_freq").to_pylist()

    first = run("a")
    assert passes == ["recall: task", "recall: reference"]
    [cached] = list((tmp_path / "igds-cache" / "reference-stats").glob("*.npz"))  # conftest's folder
    other_task = run("b", "recall.probe_size=7")  # another Stage 1, the same reference
    assert passes == ["recall: task"] and other_task == first
    assert run("c", "recall.probe_size=7", "recall.reference_cache=false") == first
    assert passes == ["recall: task", "recall: reference"]

    cached.write_bytes(b"not an npz")
    run("d", "recall.probe_size=6")
    assert passes == ["recall: task", "recall: reference"]  # unreadable: computed again, and rewritten
    run("e", "recall.probe_size=5")
    assert passes == ["recall: task"]

    sae = blank_sae(tiny_lm, 1)  # the SAE replaced in place: the kept statistics are someone else's
    plant_detector(tiny_lm, sae, 5, 1, [r["instruction"] for r in TASK], [r["instruction"] for r in REF], "7")
    with torch.no_grad():
        sae.W_enc.mul_(2)
        sae.b_enc.mul_(2)
    sae.save(setup["sae"])
    run("f", "recall.probe_size=5")
    assert passes == ["recall: task", "recall: reference"]


def test_model_weights_replaced_in_place_recompute(setup, tiny_lm, capsys):
    assert _run(setup) == 0
    with torch.no_grad():  # other weights above the SAE's layer: same features, other model
        tiny_lm.model.model.layers[3].mlp.down_proj.weight.add_(1e-3)
    tiny_lm.model.save_pretrained(setup["model"])
    assert REUSED not in _rerun_output(setup, capsys)
    assert len(_shard_folders(setup)) == 2


def test_dataset_folder_rewritten_recomputes(setup, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "task_ds"
    datasets.Dataset.from_list(TASK).save_to_disk(str(folder))
    setup["task"] = str(folder)
    assert _run(setup) == 0
    assert REUSED in _rerun_output(setup, capsys)
    rewritten = [{**r, "output": r["output"] + " exactly"} for r in TASK]
    datasets.Dataset.from_list(rewritten).save_to_disk(str(tmp_path / "tmp_ds"))
    shutil.rmtree(folder)
    shutil.move(str(tmp_path / "tmp_ds"), folder)
    assert REUSED not in _rerun_output(setup, capsys)


def test_max_length_change_recomputes_stage_one(setup, capsys):
    assert _run(setup) == 0
    assert REUSED not in _rerun_output(setup, capsys, "score.max_length=24")


def test_dtype_change_recomputes(setup, capsys):
    assert _run(setup) == 0
    assert REUSED not in _rerun_output(setup, capsys, "model.dtype=bf16")
    assert len(_shard_folders(setup)) == 2


def test_fingerprint_sees_a_safetensors_file_replaced_in_place(tiny_lm, tmp_path):
    sae = blank_sae(tiny_lm, 1)
    sae.save(tmp_path / "sae")
    before = fingerprint(tmp_path / "sae")
    assert fingerprint(tmp_path / "sae") == before  # stable when nothing changed
    with torch.no_grad():
        sae.W_enc.mul_(2)
    sae.save(tmp_path / "sae")
    assert fingerprint(tmp_path / "sae") != before


def test_ray_key_uses_the_workers_dtype_not_the_drivers():
    gpu = load_config(overrides={"score.engine": "ray", "score.ray_gpus_per_actor": 1})
    cpu = load_config(overrides={"score.engine": "ray"})
    assert worker_placement(gpu) == (torch.device("cuda"), torch.bfloat16)
    assert worker_placement(cpu) == (torch.device("cpu"), torch.float32)
    assert precision(*worker_placement(gpu)) != precision(torch.device("cpu"), torch.float32)


# ---------------------------------------------------------------- item 2: tables match the pool
def test_score_table_names_its_pool_and_selection_rows_name_their_row(setup):
    assert _run(setup) == 0
    meta = table_meta(pq.read_table(setup["out"] + "/scores.parquet"))["pool"]
    assert meta["rows"] == 20 and meta["source"] == setup["pool"] and meta["fingerprint"] and meta["ids_sha"]
    rows = [json.loads(line) for line in open(setup["out"] + "/selection.jsonl")]
    for r in rows:
        assert r["igds_id"] == r["id"] == setup["pool_rows"][r["igds_index"]]["id"]


def test_select_refuses_a_table_after_the_pool_is_reordered(setup, capsys):
    assert _run(setup) == 0
    lines = open(setup["pool"]).read().splitlines()
    open(setup["pool"], "w").write("\n".join(reversed(lines)) + "\n")
    capsys.readouterr()
    assert main(["select", setup["out"], "--budget", "3"]) == 2
    err = capsys.readouterr().err
    assert "scores.parquet: row index 0 has id 'p0' but record 0 of" in err and "has id 'p19'" in err
    assert "re-score the pool" in err
    assert not (Path(setup["out"]) / "selection_n3.jsonl").exists()


def test_select_refuses_a_table_shorter_than_the_pool(setup, capsys):
    assert _run(setup) == 0
    with open(setup["pool"], "a") as f:
        f.write(json.dumps({"id": "p99", "prompt": "new", "completion": "row"}) + "\n")
    capsys.readouterr()
    assert main(["select", setup["out"], "--budget", "3"]) == 2
    assert "has no row for index 20 (id 'p99'" in capsys.readouterr().err


# ---------------------------------------------------------------- item 6: the run directory
def test_a_second_run_into_a_locked_directory_refuses(setup, capsys):
    assert _run(setup) == 0
    with FileLock(setup["out"] + "/.igds.lock"):
        capsys.readouterr()
        assert _run(setup) == 1  # a failure while working (exit codes: igds.cli), not a bad input
    assert "another igds command is writing into this run directory" in capsys.readouterr().err


def test_out_that_igds_did_not_create_is_refused(setup, tmp_path, capsys):
    mine = tmp_path / "my_files"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    setup["out"] = str(mine)
    assert _run(setup) == 2
    assert "not empty and not an igds run directory" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_run_json_is_this_runs_own_summary(setup, tmp_path):
    assert _run(setup) == 0
    small = tmp_path / "small_pool.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in setup["pool_rows"][:10]))
    setup["pool"] = str(small)
    assert _run(setup) == 0
    info = RunInfo.load(setup["out"] + "/run.json")
    assert (info.pool_size, info.n_selected, info.n_rejected) == (10, 5, 0)


def test_stale_rejects_are_removed_and_task_rejects_recorded(setup, tmp_path):
    task = tmp_path / "task_bad.jsonl"
    task.write_text(open(setup["task"]).read() + '{"id": "tx", "instruction": "x"}\n')
    pool = open(setup["pool"]).read()
    open(setup["pool"], "a").write('{"id": "px", "prompt": "x", "completion": 3}\n')
    clean_task = setup["task"]
    setup["task"] = str(task)
    assert _run(setup, "--skip-bad") == 0
    rejects = [json.loads(x) for x in open(setup["out"] + "/rejects.jsonl")]
    assert [(r["section"], r["line"]) for r in rejects] == [("task_data", 17), ("pool", 21)]
    assert RunInfo.load(setup["out"] + "/run.json").rejects == {"task_data": 1, "pool": 1}
    open(setup["pool"], "w").write(pool)
    setup["task"] = clean_task
    assert _run(setup, "--skip-bad") == 0
    assert not (Path(setup["out"]) / "rejects.jsonl").exists()


# ---------------------------------------------------------------- item 10: progress and igds.log
def test_scoring_progress_has_a_total_and_the_run_writes_igds_log(setup, capsys):
    assert _run(setup) == 0
    assert "20/20" in capsys.readouterr().err  # the bar knew the pool size up front
    assert _run(setup) == 0
    log = open(setup["out"] + "/igds.log").read()
    assert "features: 1 validated" in log and "scores: 20 rows" in log
    assert "features: reusing" in log and "0 scored by this run, 3 reused" in log


def test_saes_follow_the_model_dtype_on_cuda_and_stay_float32_on_cpu(setup):
    from igds.inputs import load_saes, sae_dtype
    from igds.model import load_model

    assert sae_dtype(torch.device("cuda"), torch.bfloat16) == torch.bfloat16
    cfg = load_config(overrides={"model.name": setup["model"], "sae.paths": [setup["sae"]]})
    lm = load_model(setup["model"], "cpu", "bf16")
    assert {p.dtype for s in load_saes(cfg, lm).values() for p in s.parameters()} == {torch.float32}
