import torch

from igds.activations import count_mask, pad, residuals
from igds.intervention import amplified_residuals, feature_effects, replay_from
from igds.losses import logits_at, target_mask

from planted import blank_sae, example, plant_always_on, tokenized


def _batch(lm):
    exs = [example(0, "what is two plus two", "four"), example(1, "say hi", "hello there friend")]
    toks = tokenized(lm, exs)
    ids, mask = pad(toks, lm.tokenizer.pad_token_id)
    return toks, ids, mask


def _sae(lm, layer):
    sae = blank_sae(lm, layer)
    plant_always_on(sae, 0, 2.0)
    plant_always_on(sae, 3, 0.5)
    return sae


def test_alpha_one_leaves_logits_unchanged(tiny_lm):
    toks, ids, mask = _batch(tiny_lm)
    sae = _sae(tiny_lm, 1)
    h = residuals(tiny_lm, ids, mask, [1])[1]
    edit = count_mask(toks, ids.shape[1])
    same = amplified_residuals(sae, h, [0, 3], 1.0, edit)
    torch.testing.assert_close(same, h.repeat(2, 1, 1))
    everywhere = mask.bool()
    full = tiny_lm.model(input_ids=ids, attention_mask=mask).logits[everywhere]
    with replay_from(tiny_lm, 1, same[: len(toks)]):
        replayed = logits_at(tiny_lm, ids, mask, everywhere)
    torch.testing.assert_close(replayed, full, atol=1e-5, rtol=1e-4)


def test_amplification_changes_the_loss(tiny_lm):
    toks, ids, mask = _batch(tiny_lm)
    tgt = target_mask(toks, ids.shape[1])
    base, amp = feature_effects(tiny_lm, _sae(tiny_lm, 1), 1, [0, 3], ids, mask, tgt,
                                count_mask(toks, ids.shape[1]), alpha=6.0)
    assert (amp - base).abs().max() > 1e-3


def test_cached_prefix_equals_full_rerun(tiny_lm):
    toks, ids, mask = _batch(tiny_lm)
    tgt = target_mask(toks, ids.shape[1])
    edit = count_mask(toks, ids.shape[1])
    sae = _sae(tiny_lm, 2)
    base_c, amp_c = feature_effects(tiny_lm, sae, 2, [0, 3], ids, mask, tgt, edit, 4.0, chunk=2, cached_prefix=True)
    base_n, amp_n = feature_effects(tiny_lm, sae, 2, [0, 3], ids, mask, tgt, edit, 4.0, chunk=1, cached_prefix=False)
    torch.testing.assert_close(base_c, base_n, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(amp_c, amp_n, atol=1e-5, rtol=1e-5)
    # the blocks are restored afterwards
    assert all(type(b).__name__ != "_Replay" for b in tiny_lm.blocks)

