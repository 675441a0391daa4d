import numpy as np
import pytest
import torch

from igds.activations import count_mask, pad
from igds.attribution import Screen, attribution_screen
from igds.intervention import feature_effects
from igds.losses import target_mask

from planted import blank_sae, example, plant_always_on, plant_detector, tokenized

TASK = [example(i, f"write the number 7{i} twice", f"7{i} 7{i}") for i in range(5)]
OFF = [f"describe a quiet garden path {chr(97 + i)}" for i in range(10)]


def finite_difference(lm, sae, layer, feature, exs, positions, eps):
    """[L(1 - eps) - L(1 + eps)] / (2 eps) per example, with Stage 1b's own edit at the same positions."""
    ids, mask = pad(exs, lm.tokenizer.pad_token_id)
    target = target_mask(exs, ids.shape[1], "response")
    special = list(lm.tokenizer.all_special_ids)
    edit = count_mask(exs, ids.shape[1], positions, special_ids=special, input_ids=ids)
    lo = feature_effects(lm, sae, layer, [feature], ids, mask, target, edit, 1 - eps)[1][0]
    hi = feature_effects(lm, sae, layer, [feature], ids, mask, target, edit, 1 + eps)[1][0]
    return ((lo - hi) / (2 * eps)).numpy()


def chat(lm, e):
    return lm.tokenizer.apply_chat_template(e.messages + [{"role": "assistant", "content": e.response}],
                                            tokenize=False)


@pytest.mark.parametrize("positions,normalize", [("all", "none"), ("response", "none"),
                                                ("all", "constant_norm_rescale")])
def test_attribution_equals_the_finite_difference_of_the_edit(tiny_lm, positions, normalize):
    """Per example and feature, the attribution is the central difference of Stage 1b's edit around
    alpha = 1 (sign and magnitude; at eps = 3e-3 the difference's own error is below 0.2 %)."""
    sae = blank_sae(tiny_lm, 2)
    off = [example(50 + i, text, "ok") for i, text in enumerate(OFF)]
    plant_detector(tiny_lm, sae, 5, 2, [chat(tiny_lm, e) for e in TASK], [chat(tiny_lm, e) for e in off], "7")
    with torch.no_grad():  # ReLU is positively homogeneous: the same on/off pattern, a 30x larger push
        sae.W_enc[:, 5] *= 30
        sae.b_enc[5] *= 30
    plant_always_on(sae, 2, 3.0)  # fires everywhere
    sae.normalize_activations = normalize  # constant_norm_rescale: the edit is scaled per token
    exs = tokenized(tiny_lm, TASK)
    screen = attribution_screen(tiny_lm, sae, 2, exs, positions=positions)
    assert screen.per_example.shape == (len(TASK), sae.d_sae) and screen.n == len(TASK)
    for feature in (2, 5):
        fd = finite_difference(tiny_lm, sae, 2, feature, exs, positions, eps=3e-3)
        assert np.abs(fd).min() > 1e-2 and (fd > 0).any() and (fd < 0).any()  # it moves the loss both ways
        np.testing.assert_allclose(screen.per_example[:, feature], fd, rtol=0, atol=5e-3 * np.abs(fd).max())
    dead = [j for j in range(sae.d_sae) if j not in (2, 5)]
    assert np.all(screen.per_example[:, dead] == 0)  # a feature that never fires has no effect


def test_norm_guard_leaves_out_the_positions_the_edit_skips(tiny_lm):
    """With a norm guard the attribution is still the derivative of Stage 1b's edit, which then skips
    the high-norm positions; a guard that catches nothing changes nothing."""
    from igds.intervention import edit_losses, editable_positions
    from igds.activations import residuals

    sae = blank_sae(tiny_lm, 2)
    plant_always_on(sae, 2, 3.0)
    exs = tokenized(tiny_lm, TASK)
    ids, mask = pad(exs, tiny_lm.tokenizer.pad_token_id)
    target = target_mask(exs, ids.shape[1], "response")
    special = list(tiny_lm.tokenizer.all_special_ids)
    edit = count_mask(exs, ids.shape[1], "all", special_ids=special, input_ids=ids)
    h = residuals(tiny_lm, ids, mask, [2])[2]
    guard = 1.02  # just above the median norm: drops a good share of the positions
    kept = editable_positions(h, ids, mask, edit, special, guard)
    assert 0 < kept.sum() < edit.sum()
    eps = 3e-3
    _, out = edit_losses(tiny_lm, sae, 2, [(2, 1 - eps), (2, 1 + eps)], ids, mask, target, edit,
                         special_ids=special, norm_guard=guard)
    fd = ((out[0] - out[1]) / (2 * eps)).numpy()
    guarded = attribution_screen(tiny_lm, sae, 2, exs, positions="all", norm_guard=guard)
    np.testing.assert_allclose(guarded.per_example[:, 2], fd, rtol=0, atol=5e-3 * np.abs(fd).max())
    plain = attribution_screen(tiny_lm, sae, 2, exs, positions="all")
    assert np.abs(plain.per_example[:, 2] - guarded.per_example[:, 2]).max() > 0.05 * np.abs(fd).max()
    np.testing.assert_array_equal(attribution_screen(tiny_lm, sae, 2, exs, positions="all", norm_guard=1e9).per_example,
                                  plain.per_example)


def test_helpful_feature_positive_harmful_negative(tiny_lm):
    """At the last block, writing the unembedding row of "7" raises the logit of the response's sevens
    (a lower loss) and writing its negative lowers it: the first gets a positive attribution, the second
    a negative one, and the edit at a finite alpha agrees."""
    layer = tiny_lm.n_layers - 1
    seven = tiny_lm.tokenizer.convert_tokens_to_ids("7")
    _, W_U = tiny_lm.unembedding()
    up = torch.nn.functional.normalize(W_U[seven].detach(), dim=0)
    sae = blank_sae(tiny_lm, layer)
    with torch.no_grad():
        sae.W_dec[0], sae.W_dec[1] = up, -up
    plant_always_on(sae, 0)
    plant_always_on(sae, 1)
    exs = tokenized(tiny_lm, [example(i, f"say seven {i} times", "7" * (8 + i)) for i in range(6)])
    screen = attribution_screen(tiny_lm, sae, layer, exs, positions="all")
    assert np.all(screen.per_example[:, 0] > 0) and np.all(screen.per_example[:, 1] < 0)
    assert screen.t[0] > 2 and screen.t[1] < -2 and screen.ranked(1) == [0]
    np.testing.assert_allclose(screen.per_example[:, 0], -screen.per_example[:, 1], rtol=1e-3)
    fd = finite_difference(tiny_lm, sae, layer, 0, exs, "all", eps=0.5)
    assert np.all(fd > 0)


def test_screen_summary_and_unscored_rows():
    per = np.array([[1.0, 0.0, -2.0], [3.0, 0.0, -2.0], [np.nan, np.nan, np.nan]], dtype=np.float32)
    s = Screen.of(per, layer=1, positions="all")
    assert s.n == 2
    np.testing.assert_allclose(s.mean, [2.0, 0.0, -2.0])
    np.testing.assert_allclose(s.se, [1.0, 0.0, 0.0])
    np.testing.assert_allclose(s.t, [2.0, 0.0, 0.0])  # se 0: t is 0, never inf
    assert s.ranked() == [0, 1, 2]


def test_prompt_without_response_rows_are_nan(tiny_lm):
    sae = blank_sae(tiny_lm, 1)
    plant_always_on(sae, 2)
    exs = tokenized(tiny_lm, TASK[:2])
    exs[1] = type(exs[1])(ids=exs[1].ids, prompt_len=len(exs[1].ids), truncated=True, content=exs[1].content)
    screen = attribution_screen(tiny_lm, sae, 1, exs, positions="all")
    assert np.isnan(screen.per_example[1]).all() and np.isfinite(screen.per_example[0]).all()
    assert screen.n == 1 and screen.per_example[0, 2] != 0
    with pytest.raises(ValueError, match="reads layer 1"):
        attribution_screen(tiny_lm, sae, 2, exs)
    assert all(p.requires_grad for p in tiny_lm.model.parameters())  # the weights are thawed again
