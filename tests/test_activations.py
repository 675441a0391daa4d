import torch

from igds.activations import count_mask, iter_activation_batches, length_batches, pad, residuals
from igds.data import TokenizedExample


def _batch(lm, texts):
    tok = lm.tokenizer
    exs = [TokenizedExample(ids=tok(t)["input_ids"], prompt_len=3, truncated=False) for t in texts]
    return exs, *pad(exs, tok.pad_token_id)


def test_hook_equals_hidden_states_plus_one(tiny_lm):
    exs, ids, mask = _batch(tiny_lm, ["hello there", "a much longer example text"])
    with torch.no_grad():
        out = tiny_lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    for layer in range(tiny_lm.n_layers - 1):  # the last entry is post-final-norm in HF
        got = residuals(tiny_lm, ids, mask, [layer], stop=False)[layer]
        torch.testing.assert_close(got, out.hidden_states[layer + 1])
        assert not torch.allclose(got, out.hidden_states[layer])


def test_stopped_forward_matches_full_forward(tiny_lm):
    exs, ids, mask = _batch(tiny_lm, ["one two three", "four"])
    full = residuals(tiny_lm, ids, mask, [1, 2], stop=False)
    stopped = residuals(tiny_lm, ids, mask, [1, 2], stop=True)
    for layer in (1, 2):
        torch.testing.assert_close(stopped[layer], full[layer])


def test_stopped_forward_skips_upper_blocks(tiny_lm):
    ran = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(tiny_lm.blocks)]
    exs, ids, mask = _batch(tiny_lm, ["abc"])
    residuals(tiny_lm, ids, mask, [1])
    for h in handles:
        h.remove()
    assert ran == [0, 1]


def test_count_mask_excludes_padding_first_and_selects_positions():
    exs = [TokenizedExample(ids=[5, 6, 7, 8, 9], prompt_len=3, truncated=False),
           TokenizedExample(ids=[5, 6, 7], prompt_len=2, truncated=False)]
    m = count_mask(exs, 5, "all")
    assert m.tolist() == [[False, True, True, True, True], [False, True, True, False, False]]
    assert count_mask(exs, 5, "response").tolist()[0] == [False, False, False, True, True]
    assert count_mask(exs, 5, "prompt").tolist()[1] == [False, True, False, False, False]
    flagged = [TokenizedExample(ids=[5, 6, 7, 8, 9], prompt_len=3, truncated=False,
                                content=[True, False, True, False, True])]
    assert count_mask(flagged, 6, "content").tolist() == [[False, False, True, False, True, False]]
    assert count_mask(flagged, 6, "content", exclude_first=False).tolist()[0][0]


def test_padding_never_changes_activations(tiny_lm):
    tok = tiny_lm.tokenizer
    short = TokenizedExample(ids=tok("hi")["input_ids"], prompt_len=1, truncated=False)
    long = TokenizedExample(ids=tok("a much longer sentence")["input_ids"], prompt_len=1, truncated=False)
    alone = next(iter_activation_batches(tiny_lm, [short], [1]))
    together = next(iter_activation_batches(tiny_lm, [short, long], [1], batches=[[0, 1]]))
    n = len(short.ids)
    torch.testing.assert_close(together.resid[1][0, :n], alone.resid[1][0, :n], atol=1e-5, rtol=1e-4)


def test_length_batches_respect_token_budget():
    lengths = [10, 200, 15, 190, 12, 5]
    batches = length_batches(lengths, max_tokens=400, max_batch=8)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert max(lengths[i] for i in b) * len(b) <= 400


def test_length_batches_token_budget_alone_and_same_groups_as_a_scan():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(200)]
    budget_only = length_batches(lengths, max_tokens=2048, max_batch=None)
    assert sorted(i for b in budget_only for i in b) == list(range(200))
    assert max(len(b) for b in budget_only) > 32  # short rows fill wide batches without a row cap
    for b in budget_only:
        assert max(lengths[i] for i in b) * len(b) <= 2048 or len(b) == 1
    # the greedy scan over rows sorted by (length, index), checked against its definition
    order = sorted(range(200), key=lambda i: (lengths[i], i))
    expected, cur = [], []
    for i in order:
        if cur and (len(cur) + 1 > 16 or max(lengths[j] for j in cur + [i]) * (len(cur) + 1) > 2048):
            expected.append(cur)
            cur = []
        cur.append(i)
    assert length_batches(lengths, max_tokens=2048, max_batch=16) == expected + [cur]


def test_to_device_on_cpu_is_the_same_tensor():
    from igds.activations import to_device

    t = torch.arange(6).reshape(2, 3)
    assert to_device(t, torch.device("cpu")) is t


def test_load_model_asks_for_sdpa_attention(tiny_lm, tmp_path):
    from igds.model import load_model

    tiny_lm.model.save_pretrained(tmp_path)
    tiny_lm.tokenizer.save_pretrained(tmp_path)
    lm = load_model(str(tmp_path), "cpu")
    assert lm.model.config._attn_implementation == "sdpa" and lm.dtype == torch.float32
    exs, ids, mask = _batch(lm, ["same weights, same residuals"])
    torch.testing.assert_close(residuals(lm, ids, mask, [1])[1], residuals(tiny_lm, ids, mask, [1])[1])
