"""One run with SAEs at two layers: recall, the causal filter and scoring read features from both."""

import json

import pyarrow.parquet as pq
from planted import blank_sae, plant_always_on, plant_detector

from igds.cli import main


def test_features_from_two_layers_in_one_run(tiny_lm, tmp_path):
    task = [{"id": f"t{i}", "instruction": f"add 7{i} and 17", "output": f"the sum is 7{i + 17}"} for i in range(16)]
    ref = [{"id": f"r{i}", "instruction": f"describe the garden {chr(97 + i)}", "output": "green"} for i in range(12)]
    pool = [{"id": f"p{i}", "prompt": f"what is 7{i} + 7" if i % 2 else f"name a colour {i}",
             "completion": "seventy" if i % 2 else "blue"} for i in range(16)]
    tiny_lm.model.save_pretrained(tmp_path / "model")
    tiny_lm.tokenizer.save_pretrained(tmp_path / "model")
    on, off = [r["instruction"] for r in task], [r["instruction"] for r in ref]
    for layer, feature in ((1, 5), (2, 3)):  # a "7" detector at each layer, an always-on feature beside it
        sae = blank_sae(tiny_lm, layer)
        plant_detector(tiny_lm, sae, feature, layer, on, off, "7")
        plant_always_on(sae, 2)
        sae.save(tmp_path / f"sae{layer}")
    for name, rows in (("task", task), ("ref", ref), ("pool", pool)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert main(["run", "--model", str(tmp_path / "model"), f"sae.paths=[{tmp_path / 'sae1'},{tmp_path / 'sae2'}]",
                 "--task-data", str(tmp_path / "task.jsonl"), "--reference", str(tmp_path / "ref.jsonl"),
                 "--pool", str(tmp_path / "pool.jsonl"), "--ratio", "0.5", "--out", str(out),
                 "filter.enabled=false", "recall.n_candidates=4"]) == 0
    fs = json.loads((out / "features.json").read_text())
    assert fs["layers"] == [1, 2]
    assert {"L1/F5", "L2/F3"} <= set(fs["validated"])  # each layer's detector recalled and scored
    table = pq.read_table(out / "scores.parquet")
    assert {"f:L1/F5", "f:L2/F3"} <= set(table.column_names)
    for key in ("f:L1/F5", "f:L2/F3"):  # each layer's feature alone ranks the "7" rows first
        col = table.column(key).to_pylist()
        ids = table.column("id").to_pylist()
        top = sorted(range(len(col)), key=lambda i: -col[i])[:8]
        assert all(int(ids[i][1:]) % 2 for i in top)
