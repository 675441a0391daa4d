"""SAE quality metrics against direct computations on a tiny model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from igds.activations import count_mask, pad, residuals
from igds.data import TokenizedExample
from igds.eval_sae import evaluate_sae
from igds.sae import SAE

TEXTS = ["the cat sat on the mat", "a longer sentence about numbers: 12 + 30 = 42", "hi there",
         "some more words to read through the model"]


def _examples(lm):
    return [TokenizedExample(ids=lm.tokenizer(t)["input_ids"], prompt_len=0, truncated=False) for t in TEXTS]


def identity_sae(d: int, layer: int) -> SAE:
    """ReLU SAE with W_enc = [I, -I], W_dec = [I; -I]: relu(x) - relu(-x) = x exactly."""
    sae = SAE(d, 2 * d, architecture="standard", metadata={"layer": layer, "source": "identity"})
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
    return sae.eval()


def direct(lm, examples, layer):
    """Counted residuals and the clean next-token loss, computed without evaluate_sae."""
    tok = lm.tokenizer
    ids, mask = pad(examples, tok.pad_token_id)
    counted = count_mask(examples, ids.shape[1], "all", True, tok.all_special_ids, ids)
    h = residuals(lm, ids, mask, [layer], stop=False)[layer][counted]
    with torch.no_grad():
        logits = lm.model(input_ids=ids, attention_mask=mask).logits
    at = counted[:, :-1] & mask[:, 1:].bool()
    ce = F.cross_entropy(logits[:, :-1][at], ids[:, 1:][at])
    return h, float(ce), int(at.sum())


def test_identity_sae_recovers_everything(tiny_lm):
    exs = _examples(tiny_lm)
    res = evaluate_sae(tiny_lm, identity_sae(tiny_lm.d_model, 2), exs, max_batch=2)
    h, ce, n = direct(tiny_lm, exs, 2)
    assert res["n_tokens"] == h.shape[0] and res["n_loss_tokens"] == n
    assert res["fve"] == pytest.approx(1.0, abs=1e-6)
    assert res["ce_clean"] == pytest.approx(ce, rel=1e-5)
    assert res["ce_recon"] == pytest.approx(ce, rel=1e-5)
    assert res["loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert res["ce_zero"] != pytest.approx(ce, rel=1e-3)  # the ablation really changes the model
    assert res["l0"] == pytest.approx(float((h != 0).sum()) / h.shape[0])
    assert res["sae"] == "identity" and res["layer"] == 2


def test_mean_sae_explains_nothing(tiny_lm):
    """Output = mean of the counted residuals: FVE 0; zero output: loss recovered 0, all latents dead."""
    exs = _examples(tiny_lm)
    h, _, _ = direct(tiny_lm, exs, 1)
    mean_sae = SAE(tiny_lm.d_model, 8, architecture="standard", metadata={"layer": 1})
    with torch.no_grad():
        mean_sae.b_dec.copy_(h.mean(0))
    res = evaluate_sae(tiny_lm, mean_sae, exs)
    assert res["fve"] == pytest.approx(0.0, abs=1e-5)
    assert res["dead_fraction"] == 1.0 and res["l0"] == 0.0
    zero = SAE(tiny_lm.d_model, 8, architecture="standard", metadata={"layer": 1})
    res0 = evaluate_sae(tiny_lm, zero, exs)
    assert res0["loss_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert res0["ce_recon"] == pytest.approx(res0["ce_zero"], rel=1e-6)
    assert res0["fve"] < 0


def test_random_topk_sae_matches_direct_metrics(tiny_lm):
    exs = _examples(tiny_lm)
    torch.manual_seed(0)
    d = tiny_lm.d_model
    sae = SAE(d, 4 * d, architecture="topk", k=5, apply_b_dec_to_input=True, metadata={"layer": 3})
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    res = evaluate_sae(tiny_lm, sae, exs, max_batch=3)
    h, _, _ = direct(tiny_lm, exs, 3)
    with torch.no_grad():
        r = sae(h)
        acts = sae.encode(h)
    fve = 1 - float((h - r).pow(2).sum() / (h - h.mean(0)).pow(2).sum())
    assert res["fve"] == pytest.approx(fve, rel=1e-4, abs=1e-5)
    assert res["l0"] == pytest.approx(float((acts > 0).sum()) / h.shape[0])
    assert res["dead_fraction"] == pytest.approx(1 - float((acts > 0).any(0).float().mean()))
    assert res["n_dead"] == int((~(acts > 0).any(0)).sum())


def test_max_norm_excludes_tokens(tiny_lm):
    exs = _examples(tiny_lm)
    h, _, _ = direct(tiny_lm, exs, 1)
    cut = float(h.norm(dim=-1).median())
    res = evaluate_sae(tiny_lm, identity_sae(tiny_lm.d_model, 1), exs, max_norm=cut)
    assert res["n_tokens"] + res["n_tokens_over_max_norm"] == h.shape[0]
    assert 0 < res["n_tokens_over_max_norm"] < h.shape[0]


def test_bad_inputs(tiny_lm):
    with pytest.raises(ValueError, match="does not match the model's hidden size"):
        evaluate_sae(tiny_lm, identity_sae(8, 1), _examples(tiny_lm))
    with pytest.raises(ValueError, match="out of range"):
        evaluate_sae(tiny_lm, identity_sae(tiny_lm.d_model, 9), _examples(tiny_lm))
    with pytest.raises(ValueError, match="no evaluation examples"):
        evaluate_sae(tiny_lm, identity_sae(tiny_lm.d_model, 1), ["x"])


@pytest.mark.real
def test_default_sae_quality_on_held_out_text(real_lm, shared_data):
    from igds.eval_sae import load_eval_examples
    from igds.sae_loading import load_sae

    sae = load_sae("default", model_name="smollm2-135m")
    assert (sae.layer, sae.d_in, sae.d_sae, sae.k) == (15, 576, 8192, 64)
    later = load_sae("default", model_name="smollm2-135m", layer=22)
    assert (later.layer, later.d_sae, later.k) == (22, 8192, 128)
    spec = str(shared_data / "gsm8k" / "test.jsonl") + "::prompt_field=question,response_field=answer,limit=6"
    examples = load_eval_examples(real_lm, [spec], None, 256)
    res = evaluate_sae(real_lm, sae, examples)
    assert res["n_tokens"] > 500
    assert res["fve"] > 0.75
    assert res["loss_recovered"] > 0.6
    assert res["ce_clean"] < res["ce_recon"] < res["ce_zero"]
