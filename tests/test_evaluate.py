"""Greedy generation, the reference loss and one task's evaluation on the tiny model."""

import numpy as np
import pytest
import torch

from igds.data import Example, tokenize_example
from igds.evaluate import evaluate_task, greedy_generate, reference_losses
from igds.tasks import get_task


PROMPTS = ["Add 2 and 3.", "What is the capital of France? Answer in one word.", "Hi", "Count: 1 2 3 4 5 6 7 8 9"]


def test_generation_batched_equals_one_by_one(tiny_lm):
    batched = greedy_generate(tiny_lm, PROMPTS, max_new_tokens=12, batch_size=4)
    single = [greedy_generate(tiny_lm, [p], max_new_tokens=12, batch_size=1)[0] for p in PROMPTS]
    assert batched == single
    assert any(batched)  # a random model still says something
    again = greedy_generate(tiny_lm, PROMPTS, max_new_tokens=12, batch_size=3)
    assert again == batched  # deterministic, independent of the batch split


def test_generation_respects_cap_and_stops_at_eos(tiny_lm):
    tok = tiny_lm.tokenizer
    outs = greedy_generate(tiny_lm, PROMPTS, max_new_tokens=5, batch_size=2)
    longer = greedy_generate(tiny_lm, PROMPTS, max_new_tokens=12, batch_size=2)
    # byte-level tokenizer: a token is one byte, which decodes to at most one character
    assert all(len(o) <= 5 for o in outs) and max(map(len, longer)) > 5
    # zero the final norm: every logit is 0, so greedy picks token 0; make it an EOS id
    with torch.no_grad():
        tiny_lm.model.model.norm.weight.zero_()
    assert greedy_generate(tiny_lm, PROMPTS[:2], max_new_tokens=5)[0] == tok.decode([0] * 5)
    tiny_lm.model.generation_config.eos_token_id = 0
    assert greedy_generate(tiny_lm, PROMPTS[:2], max_new_tokens=5) == ["", ""]


def _ex(i, prompt, response):
    return Example(id=f"e{i}", messages=[{"role": "user", "content": prompt}], response=response, record={},
                   dialect="fields", source="t", line=i)


def direct_loss(lm, ex, max_length=1024):
    t = tokenize_example(lm.tokenizer, ex, max_length)
    ids = torch.tensor([t.ids])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0]
    lo = max(t.prompt_len - 1, 0)
    return torch.nn.functional.cross_entropy(logits[lo:len(t.ids) - 1], ids[0, lo + 1:]).item()


def test_reference_losses_match_unbatched(tiny_lm):
    exs = [_ex(0, "Q: short", "A"), _ex(1, "A much longer prompt " * 6, "and a longer response " * 3),
           _ex(2, "mid prompt here", "twelve chars"), _ex(3, "x", "y" * 40)]
    got = reference_losses(tiny_lm, exs, max_batch=8)  # all four in one padded batch
    want = [direct_loss(tiny_lm, ex) for ex in exs]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert len(set(np.round(got, 6))) == 4


def test_evaluate_task_end_to_end(tiny_lm):
    task = get_task({"name": "add", "prompt_template": "{q}", "response_field": "a", "metric": "exact_match",
                     "max_new_tokens": 6})
    exs = [_ex(i, f"What is {i} + {i}?", str(2 * i)) for i in range(5)]
    exs = [Example(**{**e.__dict__, "record": {"q": e.prompt, "a": e.response}}) for e in exs]
    out = evaluate_task(tiny_lm, task, exs, batch_size=2, progress=False)
    assert set(out["metrics"]) == {"exact_match", "ref_loss"}
    assert 0.0 <= out["metrics"]["exact_match"] <= 1.0
    assert out["metrics"]["ref_loss"] == pytest.approx(np.mean([direct_loss(tiny_lm, e) for e in exs]), rel=1e-4)
    assert [r["id"] for r in out["records"]] == [e.id for e in exs]
    assert all(isinstance(r["prediction"], str) for r in out["records"])
    assert out["records"][3]["gold"] == "6" and out["records"][3]["references"] == ["6"]
    no_gen = evaluate_task(tiny_lm, task, exs, generate=False, progress=False)
    assert set(no_gen["metrics"]) == {"ref_loss"}
    assert no_gen["records"][0]["prediction"] is None
