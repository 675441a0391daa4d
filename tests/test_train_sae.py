"""TopK SAE trainer: learning, folding, saving, exact resume, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from igds.sae_loading import load_sae
from igds.config import TrainSAEConfig
from igds.sae_data import ActivationStream, load_training_examples, parse_source
from igds.train_sae import TopKTrainer, export_checkpoint, lr_at, train_on_activations, train_sae


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: one thread is faster, and far faster on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def planted(n: int = 24_000, d: int = 32, m: int = 48, active: int = 3, seed: int = 0):
    """Sparse combinations of ``m`` random unit directions, plus a constant offset."""
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(m, d, generator=g)
    D /= D.norm(dim=-1, keepdim=True)
    idx = torch.rand(n, m, generator=g).argsort(-1)[:, :active]
    coef = torch.zeros(n, m).scatter_(1, idx, 1.0 + 2.0 * torch.rand(n, active, generator=g))
    return coef @ D + 0.5, D


def tiny_cfg(**kw) -> TrainSAEConfig:
    base = dict(model="tiny-llama", layers=[0], d_sae=96, k=3, total_tokens=250_000, batch_tokens=256,
                lr=3e-3, warmup_steps=20, dead_tokens=20_000, progress=False, checkpoint_every=0, log_every=0)
    base.update(kw)
    return TrainSAEConfig(**base)


def fve(sae, x: torch.Tensor) -> float:
    with torch.no_grad():
        r = sae(x)
    return 1 - float((x - r).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_training_recovers_a_planted_dictionary():
    x, D = planted()
    cfg = tiny_cfg(total_tokens=120_000)
    before = train_on_activations(x, tiny_cfg(total_tokens=256))[0]  # one step: near the initialisation
    sae = train_on_activations(x, cfg)[0]
    assert fve(sae, x) > 0.95
    assert 1 - fve(sae, x) < (1 - fve(before, x)) / 4  # unexplained variance falls at least 4x
    W = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    best = (D @ W.T).max(dim=1).values  # best cosine of each planted direction
    assert float((best > 0.9).float().mean()) >= 0.9, best


def test_scale_is_folded_into_saved_weights():
    """The trainer works on x * s; the exported SAE gives the same codes on raw x."""
    x, _ = planted(n=4096)
    x = x * 1000.0
    cfg = tiny_cfg()
    tr = TopKTrainer(32, 96, 3, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    tr.init_from_data(x)
    for i in range(10):
        tr.step(x[i * 256 : (i + 1) * 256], 1e-3)
    sae = tr.to_sae({"layer": 0})
    with torch.no_grad():
        xn = x * tr.scale
        pre = ((xn - tr.b_dec) @ tr.W_enc + tr.b_enc).relu()
        v, i = pre.topk(3, dim=-1)
        codes = torch.zeros_like(pre).scatter_(-1, i, v)
        recon_raw = (codes @ tr.W_dec + tr.b_dec) / tr.scale
        torch.testing.assert_close(sae.encode(x), codes, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sae(x), recon_raw, rtol=1e-4, atol=1e-2)
    assert abs(tr.scale - 32**0.5 / float(x.norm(dim=-1).mean())) < 1e-9


def test_saved_sae_round_trips_exactly(tmp_path):
    x, _ = planted(n=4096)
    sae = train_on_activations(x, tiny_cfg(total_tokens=4096, layers=[3]))[3]
    folder = sae.save(tmp_path / "layer_3")
    back = load_sae(folder)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(back, name), getattr(sae, name)), name
    assert back.layer == 3 and back.k == 3 and back.architecture == "topk" and back.apply_b_dec_to_input
    assert torch.equal(back.encode(x), sae.encode(x))
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    assert cfg["metadata"]["hf_hook_name"] == "model.layers.3"
    assert cfg["metadata"]["model_name"] == "tiny-llama"
    assert cfg["k"] == 3 and cfg["metadata"]["input_scale_folded"] > 0


def test_saelens_loads_igds_trained_sae_identically(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    x, _ = planted(n=4096)
    sae = train_on_activations(x, tiny_cfg(total_tokens=8192, layers=[2]))[2]
    folder = sae.save(tmp_path / "layer_2")
    lens = sae_lens.SAE.load_from_disk(str(folder), device="cpu")
    with torch.no_grad():
        ours = load_sae(folder).encode(x)
        theirs = lens.encode(x)
        assert (ours > 0).sum() > 0
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(lens.decode(theirs), load_sae(folder).decode(ours), rtol=1e-5, atol=1e-5)


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path):
    x, _ = planted(n=3000)  # 11 steps per epoch: the stop falls mid-epoch
    cfg = tiny_cfg(total_tokens=40 * 256, checkpoint_every=7, dead_tokens=2000)
    full = train_on_activations(x, cfg, out_dir=tmp_path / "a")[0]
    cut = TrainSAEConfig(**{**cfg.__dict__, "stop_after_steps": 17})
    train_on_activations(x, cut, out_dir=tmp_path / "b")
    resumed = train_on_activations(x, cfg, out_dir=tmp_path / "b")[0]
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(resumed, name), getattr(full, name)), name


def _write_data(tmp_path, n: int = 60):
    path = tmp_path / "data.jsonl"
    rows = [{"instruction": f"Item {i}: add {i} and {2 * i}.", "output": f"{i} plus {2 * i} is {3 * i}."}
            for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    text = tmp_path / "text.jsonl"
    text.write_text("\n".join(json.dumps({"text": f"Plain document number {i}, a few words."}) for i in range(20)))
    return str(path), str(text)


@pytest.mark.parametrize("cache", [None, 1500])
def test_model_training_resumes_exactly(tmp_path, tiny_lm, cache):
    """Streaming (buffer refills, data passes) and cache mode: stop + rerun == one run."""
    data, text = _write_data(tmp_path)
    cfg = TrainSAEConfig(model="tiny-llama", layers=[1, 2], data=[data, text + "::limit=10"], d_sae=128, k=4,
                         total_tokens=48 * 128, batch_tokens=128, buffer_tokens=1024, activation_tokens=cache,
                         lr=1e-3, warmup_steps=5, dead_tokens=1000, progress=False, checkpoint_every=5,
                         forward_batch_tokens=1024, out_dir=str(tmp_path / "a"))
    paths = train_sae(cfg, lm=tiny_lm)
    assert set(paths) == {1, 2}
    cut = TrainSAEConfig(**{**cfg.__dict__, "out_dir": str(tmp_path / "b"), "stop_after_steps": 19})
    assert train_sae(cut, lm=tiny_lm) == {}  # stopped early: nothing saved yet
    partial = export_checkpoint(tmp_path / "b")  # a look at the unfinished run
    assert load_sae(partial[1]).metadata["training_tokens"] == 19 * 128
    again = train_sae(TrainSAEConfig(**{**cfg.__dict__, "out_dir": str(tmp_path / "b")}), lm=tiny_lm)
    for layer in (1, 2):
        a, b = load_sae(paths[layer]), load_sae(again[layer])
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            assert torch.equal(a.W_enc, b.W_enc) and torch.equal(getattr(a, name), getattr(b, name)), name
        assert a.layer == layer and a.metadata["norm_threshold"] > 0


def test_resume_refuses_a_different_config(tmp_path):
    x, _ = planted(n=2048)
    cfg = tiny_cfg(total_tokens=20 * 256, stop_after_steps=3, checkpoint_every=1)
    train_on_activations(x, cfg, out_dir=tmp_path)
    with pytest.raises(ValueError, match="different configuration"):
        train_on_activations(x, tiny_cfg(total_tokens=20 * 256, k=4), out_dir=tmp_path)


def test_stream_excludes_first_special_and_extreme_tokens(tmp_path, tiny_lm):
    data, _ = _write_data(tmp_path, n=20)
    cfg = TrainSAEConfig(layers=[1], data=[data], forward_batch_tokens=4096, norm_filter=1.05)
    examples = load_training_examples(cfg, tiny_lm.tokenizer)
    stream = ActivationStream(tiny_lm, examples, [1], cfg)
    thr = stream.calibrate()[1]
    got = 0
    for batch_index, acts in stream.iter_from(0):
        assert acts[1].shape[0] == 0 or float(acts[1].norm(dim=-1).max()) <= thr
        got += acts[1].shape[0]
        if batch_index == stream.batches_per_pass:
            break
    special = set(tiny_lm.tokenizer.all_special_ids)
    countable = sum(sum(1 for t in e.ids[1:] if t not in special) for e in examples)
    assert 0 < got < countable and got + stream.n_dropped == countable


def test_bad_arguments_fail_clearly(tmp_path, tiny_lm):
    data, _ = _write_data(tmp_path, n=5)
    base = dict(model="tiny-llama", data=[data], d_sae=64, k=4, total_tokens=1024, batch_tokens=128,
                progress=False, out_dir=str(tmp_path / "o"))
    with pytest.raises(ValueError, match="layer 7 is out of range.*0..3"):
        train_sae(TrainSAEConfig(layers=[7], **base), lm=tiny_lm)
    with pytest.raises(ValueError, match="k=65 must satisfy 0 < k <= width"):
        train_sae(TrainSAEConfig(layers=[1], **{**base, "k": 65}), lm=tiny_lm)
    with pytest.raises(ValueError, match="no training data"):
        train_sae(TrainSAEConfig(layers=[1], **{**base, "data": []}), lm=tiny_lm)
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": "   "}) + "\n")
    with pytest.raises(ValueError, match="no usable examples"):
        train_sae(TrainSAEConfig(layers=[1], **{**base, "data": [str(empty)]}), lm=tiny_lm)
    with pytest.raises(ValueError, match="bad data option"):
        parse_source("file.jsonl::colour=red")
    with pytest.raises(ValueError, match="batch_tokens"):
        train_on_activations(torch.randn(100, 8), tiny_cfg(d_sae=16, batch_tokens=256, total_tokens=512))
    with pytest.raises(ValueError, match="empty"):
        train_on_activations(torch.zeros(0, 8), tiny_cfg(d_sae=16))


def test_parse_source_and_schedule():
    src = parse_source("a/b.jsonl::limit=30,prompt_field=question,response_field=answer")
    assert (src.path, src.limit, src.prompt_field, src.response_field) == ("a/b.jsonl", 30, "question", "answer")
    assert lr_at(0, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(40, 100, 1.0, 10, 0.1) > lr_at(60, 100, 1.0, 10, 0.1)


@pytest.mark.real
def test_train_on_real_model_skips_attention_sinks(tmp_path, real_lm, shared_data):
    data = str(shared_data / "gsm8k" / "train.jsonl") + "::prompt_field=question,response_field=answer,limit=30"
    cfg = TrainSAEConfig(layers=[15], data=[data], d_sae=1152, k=16, activation_tokens=3000, total_tokens=8192,
                         batch_tokens=1024, progress=False, out_dir=str(tmp_path), max_length=256)
    path = train_sae(cfg, lm=real_lm)[15]
    sae = load_sae(path)
    thr = sae.metadata["norm_threshold"]
    assert 300 < thr < 5000  # 10x a median near 150, far below the ~25,000 of position 0
    cache = torch.from_numpy(__import__("numpy").load(tmp_path / "activation_cache" / "layer_15.npy"))
    assert float(cache.norm(dim=-1).max()) <= thr


def test_a_shared_activation_cache_serves_other_sae_settings_and_fewer_layers(tmp_path, tiny_lm, monkeypatch):
    """Collect layers 1 and 2 once; a run with another k on layer 2 alone reads the same activations
    (the model is never run again); other data or a layer not collected collects anew."""
    from igds import train_sae as ts

    data, text = _write_data(tmp_path)
    shared = str(tmp_path / "acts")
    common = dict(model="tiny-llama", data=[data, text + "::limit=10"], d_sae=64, total_tokens=8 * 128,
                  batch_tokens=128, activation_tokens=1024, activation_cache=shared, lr=1e-3, warmup_steps=2,
                  dead_tokens=1000, progress=False, checkpoint_every=0, forward_batch_tokens=1024)
    train_sae(TrainSAEConfig(layers=[1, 2], k=4, out_dir=str(tmp_path / "a"), **common), lm=tiny_lm)
    first = torch.from_numpy(__import__("numpy").load(tmp_path / "acts" / "layer_2.npy"))
    collected = []
    real_collect = ts.collect
    monkeypatch.setattr(ts, "collect", lambda *a, **kw: collected.append(a[1]) or real_collect(*a, **kw))

    paths = train_sae(TrainSAEConfig(layers=[2], k=8, out_dir=str(tmp_path / "b"), **common), lm=tiny_lm)
    assert collected == [] and load_sae(paths[2]).k == 8
    assert load_sae(paths[2]).metadata["norm_threshold"] > 0
    assert torch.equal(torch.from_numpy(__import__("numpy").load(tmp_path / "acts" / "layer_2.npy")), first)

    train_sae(TrainSAEConfig(layers=[3], k=4, out_dir=str(tmp_path / "c"), **common), lm=tiny_lm)
    assert collected == [[3]]  # layer 3 was never collected: the set is collected again
    train_sae(TrainSAEConfig(layers=[2], k=4, out_dir=str(tmp_path / "d"), **{**common, "seed": 1}), lm=tiny_lm)
    assert collected == [[3], [2]]  # another seed draws other examples
