"""The house's one loss: matches full logits, and the filter and training agree on every model family."""

import pytest
import torch

from igds.activations import pad
from igds.finetune import ResponseOnlyLoss
from igds.losses import masked_losses, postprocess_logits, target_mask
from igds.model import pad_id

from oracles import sequence_losses
from planted import example, tokenized


def _batch(lm):
    exs = [example(0, "what is two plus two", "four"), example(1, "say hi", "hello there friend")]
    toks = tokenized(lm, exs)
    ids, mask = pad(toks, lm.tokenizer.pad_token_id)
    return toks, ids, mask


def test_masked_losses_match_full_logits(tiny_lm):
    toks, ids, mask = _batch(tiny_lm)
    tgt = target_mask(toks, ids.shape[1])
    with torch.no_grad():
        logits = tiny_lm.model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(masked_losses(tiny_lm, ids, mask, tgt), sequence_losses(logits, ids, tgt))


def test_plain_config_leaves_logits_untouched(tiny_lm):
    x = torch.randn(3, 7)
    assert postprocess_logits(tiny_lm.model.config, x) is x  # Llama/SmolLM2: bit-identical by construction


def _training_loss(lm, ids, mask, tgt) -> torch.Tensor:
    """ResponseOnlyLoss per row: labels hold the tokens that ``tgt`` positions predict."""
    labels = torch.full_like(ids, -100)
    labels[:, 1:][tgt[:, :-1]] = ids[:, 1:][tgt[:, :-1]]
    loss = ResponseOnlyLoss(lm.model)
    with torch.no_grad():
        return torch.stack([loss(ids[i:i + 1], mask[i:i + 1], labels[i:i + 1])["loss"] for i in range(len(ids))])


@pytest.mark.parametrize("fields", [
    {"final_logit_softcapping": 0.5},  # Gemma-2/3
    {"logit_scale": 3.0},  # Cohere
    {"logits_scaling": 0.25},  # Granite
    {"logit_scale": 4.0, "final_logit_softcapping": 1.0},
])
def test_filter_and_training_losses_agree(tiny_lm, monkeypatch, fields):
    toks, ids, mask = _batch(tiny_lm)
    tgt = target_mask(toks, ids.shape[1])
    plain = masked_losses(tiny_lm, ids, mask, tgt)
    for name, value in fields.items():
        monkeypatch.setattr(tiny_lm.model.config, name, value, raising=False)
    filt = masked_losses(tiny_lm, ids, mask, tgt)
    assert (filt - plain).abs().min() > 1e-3  # the planted fields really change the loss
    torch.testing.assert_close(filt, _training_loss(tiny_lm, ids, mask, tgt), rtol=1e-5, atol=1e-6)


def test_pad_id_falls_back():
    class Tok:
        pad_token_id = None

    assert pad_id(Tok()) == 0 and pad_id(Tok(), 7) == 7
    Tok.pad_token_id = 3
    assert pad_id(Tok(), 7) == 3
