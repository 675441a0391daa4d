"""benchmarks/gpu_throughput.py in its CPU smoke mode: every pass measured, igds's scores right, the deadline kept."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_throughput as gt  # noqa: E402


def test_smoke_run_measures_every_pass_and_writes_its_block(tmp_path):
    md = tmp_path / "B.md"
    md.write_text("# B\n<!-- begin: gpu-throughput -->\nold\n<!-- end: gpu-throughput -->\ntail\n")
    out = tmp_path / "gpu.json"
    gt.main(["--smoke", "--no-ray", "--out", str(out), "--md", str(md)])
    data = json.loads(out.read_text())
    assert data["status"] == "complete" and data["mode"] == "smoke" and data["matmul_tflops"] > 0
    assert set(data["models"]) == {"tiny-llama", "tiny-gemma2"}
    for model in data["models"].values():
        assert set(model["passes"]) == {"bare", "igds", "igds_sae_fp32", "loss", "ifd"}
        for r in model["passes"].values():
            assert r["tok_s"] > 0 and r["real_tokens"] >= model["real_tokens"] and 0 < r["mfu"]
        assert model["ratios_to_bare"]["bare"] == 1.0
    assert data["models"]["tiny-llama"]["attention"] == "sdpa"
    assert data["models"]["tiny-gemma2"]["attention"] == "eager"  # Gemma-2 has no SDPA path in transformers
    proj = data["projection"]
    assert proj["pool_tokens"] == 10_000_000 * 256
    assert round(proj["needed_tok_s"]) == 11_111
    for tag in ("", "_sae_fp32"):
        assert proj[f"hours{tag}"] == proj["pool_tokens"] / (64 * proj[f"per_gpu_tok_s{tag}"]) / 3600
        assert proj[f"met{tag}"] is (proj[f"per_gpu_tok_s{tag}"] >= proj["needed_tok_s"])
    text = md.read_text()
    assert "old" not in text and text.endswith("<!-- end: gpu-throughput -->\ntail\n")
    assert "CPU smoke run" in text and "| tiny-llama" in text and "(d) IFD" in text
    assert ("**met**" if proj["met"] else "**not met**") in text


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-gemma2"])  # TopK and JumpReLU SAEs
def test_benchmarked_scoring_equals_a_direct_computation(shape):
    lm = gt.build_model(shape, torch.device("cpu"), torch.float32)
    sae = gt.random_sae(shape, torch.device("cpu"), torch.float32)
    layer = gt.SHAPES[shape][2]
    toks = gt.synthetic_pool(10, lm.model.config.vocab_size, 20, 64)
    assert len({len(t.ids) for t in toks}) > 1  # several lengths: padding and bucketing are exercised
    scorer, examples = gt.make_scorer(lm, sae, layer, toks, 6, batch_tokens=128)
    acts = scorer.activations(examples)["acts"]
    feats = [c.feature for c in scorer.features]
    with torch.no_grad():
        for i, t in enumerate(toks):
            h = lm.model(torch.tensor([t.ids]), output_hidden_states=True).hidden_states[layer + 1][0]
            want = sae.encode(h, feats)[1:].mean(dim=0)  # the first token never counts
            np.testing.assert_allclose(acts[i], want.double().numpy(), rtol=1e-4, atol=1e-6)
    assert (acts > 0).any()  # a test of zeros against zeros would prove nothing


def test_deadline_stops_the_run_with_partial_results(tmp_path):
    out = tmp_path / "gpu.json"
    data = gt.main(["--smoke", "--no-ray", "--deadline", "0.001", "--out", str(out), "--md", ""])
    saved = json.loads(out.read_text())
    assert saved["status"] == data["status"] == "stopped at the 0.001 s deadline"
    assert not any(len(m.get("passes", {})) == 4 for m in saved["models"].values())


def test_full_size_shapes_are_the_real_models():
    from transformers import AutoConfig, AutoModelForCausalLM

    from igds.model import with_sdpa

    for name, params, attention in (("llama-3.1-8b", 8.03e9, "sdpa"), ("gemma-2-2b", 2.61e9, "eager")):
        model_type, fields, layer, _ = gt.SHAPES[name]
        with torch.device("meta"):  # no memory: shapes only
            model = with_sdpa(AutoModelForCausalLM.from_config, AutoConfig.for_model(model_type, **fields))
        assert abs(sum(p.numel() for p in model.parameters()) / params - 1) < 0.005
        assert model.config._attn_implementation == attention
        assert layer == fields["num_hidden_layers"] // 2 - (name == "gemma-2-2b")  # mid-depth


def test_ray_measurement_scores_the_whole_pool_on_an_actor(tmp_path):
    pytest.importorskip("ray")
    import argparse

    args = argparse.Namespace(examples=12, median_len=24, max_len=48, features=4, batch_tokens=512, ray_shard=6)
    rec = gt.Recorder(tmp_path / "gpu.json", None, {})
    gt.run_ray(rec, "tiny-llama", args, torch.device("cpu"), torch.float32)
    ray = rec.data["ray"]
    vocab = gt.SHAPES["tiny-llama"][1]["vocab_size"]
    assert ray["real_tokens"] == sum(len(t.ids) for t in gt.synthetic_pool(12, vocab, 24, 48))  # every row scored
    assert ray["tok_s_end_to_end"] > 0 and ray["gpus_per_actor"] == 0
