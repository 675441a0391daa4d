import json
import os

import numpy as np
import pytest
import torch

from igds.sae import SAE, UnsupportedHook, check_compatible, hook_layer
from igds.sae_loading import load_sae


def random_sae(arch: str, d_in=16, d_sae=64, k=8, seed=0) -> SAE:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(d_in, d_sae, arch, k=k if arch == "topk" else None, apply_b_dec_to_input=True)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        if arch == "jumprelu":
            sae.threshold.copy_(torch.rand(d_sae, generator=g) * 0.5)
    return sae


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
def test_restricted_encode_equals_full_columns(arch):
    sae = random_sae(arch)
    x = torch.randn(5, 7, 16)
    full = sae.encode(x)
    cols = [3, 17, 42, 0, int(full[0, 0].argmax())]  # the last one is on for at least one token
    restricted = sae.encode(x, cols)
    torch.testing.assert_close(restricted, full[..., cols])
    assert restricted.count_nonzero() > 0 and (restricted == 0).any()


def test_restricted_encode_reads_only_its_columns():
    """ReLU/JumpReLU restriction must not depend on other features' weights."""
    sae = random_sae("jumprelu")
    x = torch.randn(4, 16)
    before = sae.encode(x, [5, 9])
    with torch.no_grad():
        sae.W_enc[:, 0] += 100.0
    torch.testing.assert_close(sae.encode(x, [5, 9]), before)


def test_topk_has_k_active():
    sae = random_sae("topk", k=8)
    acts = sae.encode(torch.randn(10, 16))
    assert (acts.count_nonzero(dim=-1) <= 8).all()


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "topk"])
def test_saelens_folder_round_trip(tmp_path, arch):
    sae = random_sae(arch)
    sae.metadata["hook_name"] = "blocks.3.hook_resid_post"
    sae.save(tmp_path / "sae")
    loaded = load_sae(tmp_path / "sae")
    x = torch.randn(6, 16)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))
    torch.testing.assert_close(loaded(x), sae(x))
    assert loaded.layer == 3


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "topk"])
def test_sae_saved_by_sae_lens_encodes_identically(tmp_path, kind):
    sae_lens = pytest.importorskip("sae_lens")
    cls, cfg_cls = {"standard": (sae_lens.StandardSAE, sae_lens.StandardSAEConfig),
                    "jumprelu": (sae_lens.JumpReLUSAE, sae_lens.JumpReLUSAEConfig),
                    "topk": (sae_lens.TopKSAE, sae_lens.TopKSAEConfig)}[kind]
    kw = {"k": 6} if kind == "topk" else {}
    lens = cls(cfg_cls(d_in=16, d_sae=48, **kw))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in lens.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if kind == "jumprelu":
            lens.threshold.copy_(torch.rand(48, generator=g) * 0.3)
    lens.save_model(tmp_path / "lens")
    ours = load_sae(tmp_path / "lens")
    x = torch.randn(9, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), lens.encode(x))
        torch.testing.assert_close(ours(x), lens.decode(lens.encode(x)))


def test_gemma_scope_npz_matches_reference(tmp_path):
    rng = np.random.default_rng(0)
    d_in, d_sae = 12, 40
    params = {"W_enc": rng.normal(size=(d_in, d_sae)).astype(np.float32),
              "W_dec": rng.normal(size=(d_sae, d_in)).astype(np.float32),
              "b_enc": rng.normal(size=d_sae).astype(np.float32),
              "b_dec": rng.normal(size=d_in).astype(np.float32),
              "threshold": rng.uniform(0, 1, size=d_sae).astype(np.float32)}
    folder = tmp_path / "layer_7" / "width_16k" / "average_l0_50"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **params)
    sae = load_sae(folder)
    x = rng.normal(size=(5, d_in)).astype(np.float32)
    # Gemma Scope's published reference: pre = x W_enc + b_enc; f = relu(pre) * (pre > threshold)
    pre = x @ params["W_enc"] + params["b_enc"]
    ref = np.maximum(pre, 0) * (pre > params["threshold"])
    np.testing.assert_allclose(sae.encode(torch.from_numpy(x)).numpy(), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sae(torch.from_numpy(x)).numpy(), ref @ params["W_dec"] + params["b_dec"],
                               rtol=1e-4, atol=1e-4)
    assert sae.layer == 7


def test_sparsify_folder(tmp_path):
    from safetensors.torch import save_file
    d_in, d_sae, k = 8, 32, 4
    enc = torch.randn(d_sae, d_in)
    tensors = {"encoder.weight": enc, "encoder.bias": torch.randn(d_sae), "W_dec": torch.randn(d_sae, d_in),
               "b_dec": torch.randn(d_in)}
    folder = tmp_path / "layers.5"
    folder.mkdir()
    save_file(tensors, folder / "sae.safetensors")
    (folder / "cfg.json").write_text(json.dumps({"d_in": d_in, "num_latents": d_sae, "k": k}))
    sae = load_sae(folder)
    x = torch.randn(3, d_in)
    pre = torch.relu((x - tensors["b_dec"]) @ enc.T + tensors["encoder.bias"])
    vals, idx = pre.topk(k)
    ref = torch.zeros_like(pre).scatter_(-1, idx, vals)
    torch.testing.assert_close(sae.encode(x), ref)
    assert sae.layer == 5


def test_mismatched_d_in_is_a_clear_error():
    sae = random_sae("standard", d_in=16)
    sae.metadata["layer"] = 1
    with pytest.raises(ValueError, match="d_in=16 does not match the model's hidden size 64"):
        check_compatible(sae, 64, 4)
    sae.metadata["layer"] = 9
    with pytest.raises(ValueError, match="out of range"):
        check_compatible(sae, 16, 4)


def test_unknown_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an SAE folder"):
        load_sae(tmp_path)


@pytest.mark.parametrize("hook,layer", [
    ("blocks.3.hook_resid_post", 3), ("blocks.3.hook_resid_pre", 2), ("model.layers.7", 7),
    ("transformer.h.2", 2), ("gpt_neox.layers.0", 0), ("layers.5", 5)])
def test_hook_names_map_to_block_outputs(hook, layer):
    assert hook_layer(hook) == layer


@pytest.mark.parametrize("hook", ["blocks.3.hook_mlp_out", "blocks.3.hook_attn_out", "blocks.3.attn.hook_z",
                                  "blocks.3.hook_resid_mid", "layers.3.mlp", "hook_embed", "blocks.0.hook_resid_pre"])
def test_other_hook_sites_are_unsupported(hook):
    with pytest.raises(UnsupportedHook):
        hook_layer(hook)


def saved_with_hook(tmp_path, hook, **flat):
    sae = random_sae("standard")
    sae.metadata["hook_name"] = hook
    folder = sae.save(tmp_path / "sae")
    if flat:  # a pre-v6 SAELens config keeps hook_name / hook_layer at the top level
        cfg = json.loads((folder / "cfg.json").read_text())
        cfg.pop("metadata")
        (folder / "cfg.json").write_text(json.dumps({**cfg, "hook_name": hook, **flat}))
    return folder


def test_resid_pre_sae_reads_the_previous_block(tmp_path):
    assert load_sae(saved_with_hook(tmp_path, "blocks.4.hook_resid_pre")).layer == 3
    # SAELens's pre-v6 hook_layer is the block number in the name, not igds's layer
    assert load_sae(saved_with_hook(tmp_path, "blocks.4.hook_resid_pre", hook_layer=4)).layer == 3
    with pytest.raises(ValueError, match=r"reads layer 3, but layer 4 was requested \(hook_name 'blocks\.4\.hook_resid_pre'"):
        load_sae(tmp_path / "sae", layer=4)


def test_embedding_and_mlp_saes_are_refused_naming_the_config(tmp_path):
    folder = saved_with_hook(tmp_path, "blocks.0.hook_resid_pre")
    with pytest.raises(UnsupportedHook, match=r"sae/cfg\.json: field 'hook_name': .*embeddings"):
        load_sae(folder)
    folder = saved_with_hook(tmp_path, "blocks.2.hook_mlp_out")
    with pytest.raises(UnsupportedHook, match=r"sae/cfg\.json: field 'hook_name': hook 'blocks\.2\.hook_mlp_out' "
                                              r"is not the residual stream.*sae\.layers=\[L\]"):
        load_sae(folder)
    forced = load_sae(folder, layer=2)  # an explicit layer is the user's override
    assert forced.layer == 2 and "overridden" in forced.metadata["igds_note"]


def test_gemma_scope_and_sparsify_sites_come_from_the_path(tmp_path):
    from safetensors.torch import save_file
    d_in, d_sae = 8, 16
    params = {"W_enc": np.ones((d_in, d_sae), np.float32), "W_dec": np.ones((d_sae, d_in), np.float32),
              "b_enc": np.zeros(d_sae, np.float32), "b_dec": np.zeros(d_in, np.float32),
              "threshold": np.zeros(d_sae, np.float32)}
    for release, ok in (("gemma-scope-2b-pt-res", True), ("gemma-scope-2b-pt-mlp", False),
                        ("gemma-scope-9b-it-att", False)):
        folder = tmp_path / f"models--google--{release}" / "layer_4" / "width_16k" / "average_l0_50"
        folder.mkdir(parents=True)
        np.savez(folder / "params.npz", **params)
        if ok:
            assert load_sae(folder).layer == 4
        else:
            with pytest.raises(UnsupportedHook, match=r"params\.npz \(Gemma Scope site from the path\)"):
                load_sae(folder)
    folder = tmp_path / "layers.5.mlp"
    folder.mkdir()
    save_file({"encoder.weight": torch.randn(d_sae, d_in), "encoder.bias": torch.zeros(d_sae),
               "W_dec": torch.randn(d_sae, d_in), "b_dec": torch.zeros(d_in)}, folder / "sae.safetensors")
    (folder / "cfg.json").write_text(json.dumps({"k": 4}))
    with pytest.raises(UnsupportedHook, match=r"layers\.5\.mlp.*hook 'layers\.5\.mlp' is not the residual"):
        load_sae(folder)


def test_non_finite_and_damaged_weights_are_refused_naming_file_and_tensor(tmp_path):
    from safetensors.torch import load_file, save_file
    folder = saved_with_hook(tmp_path, "blocks.1.hook_resid_post")
    weights = folder / "sae_weights.safetensors"
    tensors = load_file(str(weights))
    tensors["W_dec"][3, 2] = float("nan")
    save_file(tensors, str(weights))
    with pytest.raises(ValueError, match=r"sae_weights\.safetensors: tensor 'W_dec' has 1 non-finite values"):
        load_sae(folder)
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"sae_weights\.safetensors: cannot read SAE weights"):
        load_sae(folder)
    (folder / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cfg\.json: not a valid JSON SAE config"):
        load_sae(folder)


def test_saved_sae_files_get_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        folder = saved_with_hook(tmp_path, "blocks.1.hook_resid_post")
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {
        "cfg.json": 0o644, "sae_weights.safetensors": 0o644}
