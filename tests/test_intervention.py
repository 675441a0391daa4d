import pytest
import torch

from igds.activations import count_mask, pad, residuals
from igds.intervention import amplified_residuals, edit_losses, feature_effects, replay_from
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



def _edited_residual(lm, sae, layer, ids, mask, tgt, edit, cached_prefix, **guards):
    """(unedited, edited) residual entering block ``layer + 1`` in ``edit_losses``' two forwards."""
    seen = []

    def grab(_m, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).detach().clone())

    handle = lm.blocks[layer + 1].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        edit_losses(lm, sae, layer, [(0, 5.0)], ids, mask, tgt, edit, cached_prefix=cached_prefix, **guards)
    finally:
        handle.remove()
    base, edited = seen
    return base, edited


@pytest.mark.parametrize("cached_prefix", [True, False])
def test_edit_never_touches_special_tokens_or_norm_outliers(tiny_lm, cached_prefix):
    toks, ids, mask = _batch(tiny_lm)
    tgt = target_mask(toks, ids.shape[1])
    sae = _sae(tiny_lm, 1)
    everywhere = mask.bool()  # the caller asks for every position, special tokens included
    special = torch.isin(ids, torch.tensor(tiny_lm.tokenizer.all_special_ids)) & everywhere
    h, edited = _edited_residual(tiny_lm, sae, 1, ids, mask, tgt, everywhere, cached_prefix,
                                 special_ids=tiny_lm.tokenizer.all_special_ids, norm_guard=1.05)
    norms = h.norm(dim=-1)
    median = torch.stack([norms[i][everywhere[i] & ~special[i]].median() for i in range(len(toks))])
    outlier = (norms > 1.05 * median[:, None]) & everywhere & ~special
    changed = (edited - h).norm(dim=-1) > 1e-4
    assert special.any() and outlier.any() and (everywhere & ~special & ~outlier).any()
    assert not changed[special].any() and not changed[outlier].any()
    assert changed[everywhere & ~special & ~outlier].all()
    # without the guard the same outlier positions are edited: the guard is what spared them
    _, unguarded = _edited_residual(tiny_lm, sae, 1, ids, mask, tgt, everywhere, cached_prefix,
                                    special_ids=tiny_lm.tokenizer.all_special_ids)
    assert ((unguarded - h).norm(dim=-1) > 1e-4)[outlier].all()


def test_mixed_alphas_in_one_forward_match_separate_runs(tiny_lm):
    """The central estimator stacks alpha and 2 - alpha edits of one feature; each must equal its own run."""
    toks, ids, mask = _batch(tiny_lm)
    tgt, edit = target_mask(toks, ids.shape[1]), count_mask(toks, ids.shape[1])
    sae = _sae(tiny_lm, 2)
    edits = [(0, 2.0), (0, 0.0), (3, 2.0), (3, 0.0)]
    base, stacked = edit_losses(tiny_lm, sae, 2, edits, ids, mask, tgt, edit, chunk=4)
    _, naive = edit_losses(tiny_lm, sae, 2, edits, ids, mask, tgt, edit, chunk=3, cached_prefix=False)
    for k, (j, alpha) in enumerate(edits):
        _, alone = feature_effects(tiny_lm, sae, 2, [j], ids, mask, tgt, edit, alpha)
        torch.testing.assert_close(stacked[k], alone[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(naive[k], alone[0], atol=1e-5, rtol=1e-5)
    assert (stacked[1] - stacked[0]).abs().max() > 1e-3  # removing and doubling differ
    # alpha = 0 removes the feature's write: h - f_0 * W_dec[0] where the edit acts
    h = residuals(tiny_lm, ids, mask, [2])[2]
    removed = amplified_residuals(sae, h, [0], 0.0, edit)
    expect = h - 2.0 * edit.unsqueeze(-1) * sae.decoder_direction(0)
    torch.testing.assert_close(removed, expect)
