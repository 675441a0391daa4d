import json

import pytest
import torch

from igds.activations import pad
from igds.config import ConfigError, ExperimentConfig, load_config
from igds.data import Example, tokenize_example
from igds.finetune import (FinetuneConfig, ResponseCollator, ResponseOnlyLoss, build_train_data, finetune,
                           load_finetuned, train_model)
from igds.losses import target_mask

from oracles import sequence_losses

pytest.importorskip("peft")


def _ex(i: int, prompt: str, response: str) -> Example:
    return Example(id=str(i), messages=[{"role": "user", "content": prompt}], response=response,
                   record={"prompt": prompt, "completion": response}, dialect="prompt_completion",
                   source="mem", line=i + 1)


def _response_loss(lm, examples) -> float:
    toks = [tokenize_example(lm.tokenizer, e) for e in examples]
    ids, mask = pad(toks, lm.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = lm.model(input_ids=ids, attention_mask=mask).logits
    return float(sequence_losses(logits, ids, target_mask(toks, ids.shape[1])).mean())


def test_labels_mask_prompt_and_padding(tiny_lm):
    exs = [_ex(0, "What is two plus two?", "4"), _ex(1, "Hi", "hello there friend")]
    data = build_train_data(tiny_lm.tokenizer, exs, max_length=512)
    batch = ResponseCollator(tiny_lm.tokenizer.pad_token_id)(data.rows)
    for i, (ex, row) in enumerate(zip(exs, data.rows)):
        tok = tokenize_example(tiny_lm.tokenizer, ex)
        p, n = tok.prompt_len, len(tok.ids)
        assert row["prompt_len"] == p and row["input_ids"] == tok.ids
        labels = batch["labels"][i]
        assert (labels[:p] == -100).all()  # prompt
        assert (labels[n:] == -100).all()  # padding
        assert labels[p:n].tolist() == tok.ids[p:]  # the response tokens, including EOS
        assert batch["attention_mask"][i].sum() == n
        # the response text (plus EOS) is exactly what the labels hold
        assert tiny_lm.tokenizer.decode(labels[p:n].tolist()) == ex.response + tiny_lm.tokenizer.eos_token
    assert data.n_response_tokens == sum(int((batch["labels"][i] != -100).sum()) for i in range(2))


def test_truncation_drops_examples_without_response(tiny_lm):
    exs = [_ex(0, "x" * 60, "yes"), _ex(1, "short", "ok")]
    data = build_train_data(tiny_lm.tokenizer, exs, max_length=40)
    assert data.n_dropped == 1 and data.n_truncated == 1 and len(data.rows) == 1


@pytest.mark.parametrize("num_items", [None, 7])
def test_response_only_loss_equals_full_logits_loss(tiny_lm, num_items):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = get_peft_model(tiny_lm.model, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
    for name, p in model.named_parameters():  # non-zero B so the adapter matters
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    exs = [_ex(0, "Translate: cat", "chat"), _ex(1, "Sum 12 and 30, then explain.", "42 because 12 + 30 = 42"),
           _ex(2, "Q", "a b")]
    batch = ResponseCollator(tiny_lm.tokenizer.pad_token_id)(build_train_data(tiny_lm.tokenizer, exs, 512).rows)

    full = model(**batch).loss if num_items is None else model(**batch, num_items_in_batch=num_items).loss
    full.backward()
    g_full = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    ours = ResponseOnlyLoss(model)(**batch, num_items_in_batch=num_items)["loss"]
    ours.backward()
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, g_full[n], rtol=1e-4, atol=1e-6)
    # and it is the mean response-token cross-entropy, not something that merely agrees with HF
    if num_items is None:
        toks = [tokenize_example(tiny_lm.tokenizer, e) for e in exs]
        ids, mask = pad(toks, tiny_lm.tokenizer.pad_token_id)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        m = target_mask(toks, ids.shape[1])
        ce = torch.nn.functional.cross_entropy(logits[:, :-1][m[:, :-1]], ids[:, 1:][m[:, :-1]])
        torch.testing.assert_close(ours.detach(), ce, rtol=1e-5, atol=1e-6)


def _planted(n: int = 32):
    return [_ex(i, "Repeat the pattern.", "abc abc abc") for i in range(n)]


def test_lora_learns_planted_pattern_and_keeps_base(tiny_lm, tmp_path):
    # At the fixture's init (std 0.02, tied embeddings) RMS-normed states can only reach
    # logit margins of about 1, which caps the loss near 4.4 whatever an adapter does;
    # a trained model's embeddings are larger, so scale them like one.
    with torch.no_grad():
        tiny_lm.model.get_input_embeddings().weight.mul_(5.0)
    exs = _planted()
    before = _response_loss(tiny_lm, exs[:4])
    w0 = next(tiny_lm.model.parameters()).detach().clone()
    cfg = FinetuneConfig(lora_r=8, lora_alpha=16, learning_rate=1e-2, max_steps=40, batch_size=8,
                         warmup_ratio=0.0, lr_scheduler="constant", progress=False, logging_steps=10)
    result = train_model(tiny_lm, exs, cfg, tmp_path / "run")
    after = _response_loss(result.lm, exs[:4])
    assert after < 0.3 * before, (before, after)
    # the caller's model is untouched
    assert torch.equal(next(tiny_lm.model.parameters()), w0)
    assert _response_loss(tiny_lm, exs[:4]) == pytest.approx(before)
    # saved adapter reloads to the same model
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").exists()
    reloaded = load_finetuned(tiny_lm, tmp_path / "run")
    assert _response_loss(reloaded, exs[:4]) == pytest.approx(after, rel=1e-4)
    stats = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert stats["steps"] == 40 and stats["n_trained"] == 32
    assert stats["tokens_seen"] > 0 and stats["tokens_per_s"] > 0
    assert stats["n_trainable"] < stats["n_parameters"]


def test_lora_upper_layers_only(tiny_lm, tmp_path):
    cfg = FinetuneConfig(lora_r=4, layers_to_transform=[-1], max_steps=2, batch_size=4, progress=False)
    path = finetune(tiny_lm, _planted(8), cfg, tmp_path / "ft")
    from safetensors.torch import load_file

    keys = list(load_file(str(path / "adapter_model.safetensors")))
    assert keys and all(".layers.3." in k for k in keys), keys


def test_full_finetune_is_seeded(tiny_lm, tmp_path):
    cfg = FinetuneConfig(method="full", learning_rate=1e-3, max_steps=3, batch_size=4, progress=False, save=False)
    a = train_model(tiny_lm, _planted(8), cfg)
    b = train_model(tiny_lm, _planted(8), cfg)
    for pa, pb in zip(a.lm.model.parameters(), b.lm.model.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(next(a.lm.model.parameters()), next(tiny_lm.model.parameters()))


def test_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="lora_rank"):
        load_config(None, ["finetune.lora_rank=8"], cls=ExperimentConfig)
    with pytest.raises(ValueError, match="method"):
        FinetuneConfig(method="qlora")


def test_equal_steps_is_refused_outside_an_experiment(tiny_lm):
    from igds.config import FinetuneConfig
    from igds.finetune import train_model

    with pytest.raises(ValueError, match="equal_steps"):
        train_model(tiny_lm, [], FinetuneConfig(equal_steps=True))
