"""Faults and bad input: a killed run resumes byte-identical; bad files fail clearly or are skipped.

Every test uses the tiny model saved to disk with a planted SAE (``setup`` from test_cli) and
checks both the message a user sees and what igds kept. The Ray-worker fault lives in
test_ray_engine.py, which shares one Ray instance.
"""

import json
import random
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import torch

from igds.config import ScoreConfig
from igds.data import DataSpec, load_examples, tokenize_example
from igds.feature_set import Candidate
from igds.features import FeatureSet
from igds.model import load_model
from igds.sae import SAE
from igds.scoring import score_pool

from planted import blank_sae
from test_cli import _run

KILL_SEED = 20240611


def _write_pool(path, n, words=12):
    rows = [{"id": f"q{i}", "prompt": f"what is 7{i} plus 7 " + "and then " * words if i % 2 else
             f"name a colour for garden {i} " + "please " * words, "completion": "done"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def _score_argv(s, out, shard_size):
    return ["score", "--model", s["model"], "--sae", s["sae"], "--task-data", s["task"], "--reference", s["ref"],
            "--pool", s["pool"], "--out", str(out), "filter.validation_size=6", "filter.enabled=false",
            "recall.n_candidates=4", f"score.shard_size={shard_size}"]


def test_sigkill_mid_scoring_resumes_to_byte_identical_scores(setup, tmp_path):
    from igds.cli import main

    n, shard_size = 72, 4
    _write_pool(tmp_path / "pool.jsonl", n)
    setup["pool"] = str(tmp_path / "pool.jsonl")
    n_shards = n // shard_size
    assert main(_score_argv(setup, tmp_path / "whole", shard_size)) == 0
    # Stage 1 first, so that the process we kill spends its time scoring
    killed = tmp_path / "killed"
    assert main(["features", *_score_argv(setup, killed, shard_size)[1:]]) == 0
    rng = random.Random(KILL_SEED)
    after = rng.randint(1, n_shards // 2)  # the random point: after this many finished shards ...
    jitter = rng.uniform(0.0, 0.05)  # ... plus a random slice of the next one
    proc = subprocess.Popen([sys.executable, "-m", "igds.cli", *_score_argv(setup, killed, shard_size)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and len(list((killed / "cache").glob("scores-*/shard-*.parquet"))) < after:
            time.sleep(0.005)
        time.sleep(jitter)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "scores.parquet").exists()
    finished = len(list((killed / "cache").glob("scores-*/shard-*.parquet")))
    assert after <= finished < n_shards
    assert main(_score_argv(setup, killed, shard_size)) == 0  # resume
    assert (killed / "scores.parquet").read_bytes() == (tmp_path / "whole" / "scores.parquet").read_bytes()
    assert (killed / "top_examples.json").read_bytes() == (tmp_path / "whole" / "top_examples.json").read_bytes()
    assert pq.read_table(killed / "scores.parquet").num_rows == n


def test_nan_in_sae_weights_names_file_line_and_id(tiny_lm, tmp_path):
    sae = blank_sae(tiny_lm, 1)
    with torch.no_grad():
        sae.W_enc[3, 5] = float("nan")
    rows = _write_pool(tmp_path / "pool.jsonl", 6, words=1)
    fs = FeatureSet(candidates=[Candidate("L1/F5", 1, 5, scale=1.0)], validated=["L1/F5"])
    with pytest.raises(FloatingPointError) as err:
        score_pool(tiny_lm, {1: sae}, fs, str(tmp_path / "pool.jsonl"), DataSpec(), ScoreConfig(), tmp_path / "run")
    msg = str(err.value)
    where, _, rest = msg.partition(": ")
    path, _, line = where.rpartition(":")
    assert path == str(tmp_path / "pool.jsonl") and "non-finite feature activations" in rest
    assert f"example {rows[int(line) - 1]['id']!r}" in rest  # the line and the id name the same record
    assert not (tmp_path / "run" / "scores.parquet").exists()  # no table with NaN scores


@pytest.mark.parametrize("make,layer_flag,message", [
    (lambda: SAE(32, 16, "standard", metadata={"layer": 1}), [],
     "SAE d_in=32 does not match the model's hidden size 64"),
    (lambda: SAE(64, 16, "standard", metadata={"layer": 9}), [],
     "SAE layer 9 is out of range for a model with 4 blocks"),
    (lambda: SAE(64, 16, "standard"), ["--layer", "7"],
     "SAE layer 7 is out of range for a model with 4 blocks"),
    (lambda: SAE(64, 16, "standard", metadata={"layer": 1}), ["--layer", "2"],
     "reads layer 1, but layer 2 was requested"),
])
def test_sae_that_does_not_fit_the_model_is_a_clear_cli_error(setup, tmp_path, capsys, make, layer_flag, message):
    make().save(tmp_path / "bad_sae")
    setup["sae"] = str(tmp_path / "bad_sae")
    assert _run(setup, *layer_flag) == 2
    err = capsys.readouterr().err
    assert f"igds: error: SAE {tmp_path / 'bad_sae'}" in err and message in err and "Traceback" not in err
    assert not list((tmp_path / "run").glob("*.json")) and not (tmp_path / "run" / "scores.parquet").exists()


def test_over_long_examples_are_truncated_and_counted(setup, tmp_path):
    max_length = 80
    rows = _write_pool(tmp_path / "pool.jsonl", 10, words=0)
    rows[3]["prompt"] = "7 and 7 " * 40  # over-long rows, amid short ones
    rows[8]["completion"] = "seventy seven " * 30
    (tmp_path / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    setup["pool"] = str(tmp_path / "pool.jsonl")
    assert _run(setup, f"score.max_length={max_length}") == 0
    tok = load_model(setup["model"], "cpu").tokenizer
    lengths = [len(tokenize_example(tok, ex, 10_000).ids) for ex in load_examples(tmp_path / "pool.jsonl")]
    expected = sum(n > max_length for n in lengths)
    assert expected == 2  # the two planted rows, and no other
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    summary = json.loads(next((tmp_path / "run" / "cache").glob("scores-*/summary.json")).read_text())
    assert run_json["n_truncated"] == summary["n_truncated"] == expected
    table = pq.read_table(tmp_path / "run" / "scores.parquet")
    assert table.column("id").to_pylist() == [r["id"] for r in rows]  # every row scored
    assert max(table.column("n_tokens").to_pylist()) <= max_length


def test_run_json_counts_this_runs_pool_when_the_cache_holds_another_settings_shards(setup, tmp_path):
    # Two settings of the same run directory leave two scores-<key> folders side by side;
    # run.json must count the pool of the run that wrote it, whichever folder a listing
    # happens to give first. Alternating the settings makes a fixed pick fail one way.
    for limit, expected in ((8, 8), (None, 20), (8, 8), (None, 20)):
        assert _run(setup, f"pool.limit={'null' if limit is None else limit}") == 0
        run_json = json.loads((tmp_path / "run" / "run.json").read_text())
        assert run_json["pool_size"] == expected
    assert len(list((tmp_path / "run" / "cache").glob("scores-*/summary.json"))) == 2


def test_skip_bad_writes_rejects_with_reasons_and_scores_every_valid_row(setup, tmp_path, capsys):
    valid = setup["pool_rows"]
    lines = [json.dumps(r) for r in valid]
    bad = {3: '{"id": "b1", "prompt": "x", "completion": ',  # malformed JSON
           7: json.dumps({"id": "b2", "prompt": "x"}),  # missing field
           11: json.dumps({"id": "b3", "prompt": "x", "completion": 5}),  # wrong type
           15: json.dumps({"id": "p0", "prompt": "again", "completion": "y"})}  # duplicate id
    for line in sorted(bad):
        lines.insert(line - 1, bad[line])
    (tmp_path / "pool.jsonl").write_text("\n".join(lines) + "\n")
    setup["pool"] = str(tmp_path / "pool.jsonl")
    assert _run(setup) == 2  # without --skip-bad the first bad line stops the run ...
    assert "pool.jsonl:3: malformed JSON" in capsys.readouterr().err
    assert _run(setup, "--skip-bad") == 0  # ... with it, every valid row is scored
    rejects = [json.loads(x) for x in (tmp_path / "run" / "rejects.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rejects] == sorted(bad)
    assert "malformed JSON" in rejects[0]["reason"]
    assert (rejects[1]["field"], rejects[1]["reason"]) == ("completion", "missing")
    assert (rejects[2]["field"], rejects[2]["reason"]) == ("completion", "expected a string, got int")
    assert rejects[3]["reason"] == "duplicate id 'p0' (first seen on line 1)"
    table = pq.read_table(tmp_path / "run" / "scores.parquet")
    assert table.column("id").to_pylist() == [r["id"] for r in valid]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["n_rejected"] == len(bad)
    selected = [json.loads(x)["id"] for x in (tmp_path / "run" / "selection.jsonl").read_text().splitlines()]
    assert len(selected) == len(valid) // 2 and set(selected) <= {r["id"] for r in valid}


def test_pool_with_no_valid_row_is_an_error_even_with_skip_bad(setup, tmp_path, capsys):
    (tmp_path / "pool.jsonl").write_text('{"prompt": 1, "completion": "a"}\n{"oops": true}\n')
    setup["pool"] = str(tmp_path / "pool.jsonl")
    assert _run(setup, "--skip-bad") == 2
    assert "pool.jsonl: the pool has no usable examples" in capsys.readouterr().err
    assert not (tmp_path / "run" / "scores.parquet").exists()


def test_same_seed_gives_the_same_selection(setup, tmp_path):
    runs = []
    for name in ("a", "b"):
        setup["out"] = str(tmp_path / name)
        # the causal filter on, so the seeded probe/validation split matters
        assert _run(setup, "seed=3", "filter.enabled=true", "filter.on_empty=recall_only") == 0
        runs.append(tmp_path / name)
    a, b = runs
    assert json.loads((a / "features.json").read_text())["validated"] == \
        json.loads((b / "features.json").read_text())["validated"]
    assert (a / "scores.parquet").read_bytes() == (b / "scores.parquet").read_bytes()
    assert (a / "selection.jsonl").read_bytes() == (b / "selection.jsonl").read_bytes()
    assert len((a / "selection.jsonl").read_text().splitlines()) == 10
