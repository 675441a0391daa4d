"""Planted SAEs for the tiny model: features whose behaviour the tests know in advance."""

from __future__ import annotations

import torch

from igds.activations import count_mask, pad, residuals
from igds.data import Example, TokenizedExample, tokenize_example
from igds.sae import SAE


def example(i: int, prompt: str, response: str) -> Example:
    return Example(id=f"ex{i}", messages=[{"role": "user", "content": prompt}], response=response,
                   record={"id": f"ex{i}", "instruction": prompt, "output": response}, dialect="alpaca",
                   source="mem", line=i + 1)


def tokenized(lm, examples, max_length=256) -> list[TokenizedExample]:
    return [tokenize_example(lm.tokenizer, e, max_length) for e in examples]


def blank_sae(lm, layer: int, d_sae: int = 16) -> SAE:
    sae = SAE(lm.d_model, d_sae, "standard", metadata={"layer": layer})
    with torch.no_grad():
        sae.b_enc.fill_(-1e4)  # every feature dead unless a test plants it
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(d_sae, lm.d_model), dim=-1))
    return sae


def plant_detector(lm, sae: SAE, feature: int, layer: int, on_texts: list[str], off_texts: list[str],
                   char: str) -> None:
    """Make ``feature`` fire on positions holding ``char`` (a direction fitted on the residuals)."""
    tok = lm.tokenizer
    target = tok.convert_tokens_to_ids(tok.tokenize(char))[0]
    exs = [TokenizedExample(ids=tok(t)["input_ids"], prompt_len=1, truncated=False) for t in on_texts + off_texts]
    ids, mask = pad(exs, tok.pad_token_id)
    h = residuals(lm, ids, mask, [layer])[layer]
    counted = count_mask(exs, ids.shape[1], "all") & mask.bool()
    is_char = (ids == target) & counted
    mu_on, mu_off = h[is_char].mean(0), h[counted & ~is_char].mean(0)
    w = mu_on - mu_off
    proj_on, proj_off = h[is_char] @ w, h[counted & ~is_char] @ w
    with torch.no_grad():
        sae.W_enc[:, feature] = w
        sae.b_enc[feature] = -(proj_on.min() + proj_off.max()) / 2 if proj_on.min() > proj_off.max() \
            else -(proj_on.mean() + proj_off.mean()) / 2


def plant_always_on(sae: SAE, feature: int, value: float = 1.0) -> None:
    with torch.no_grad():
        sae.W_enc[:, feature] = 0
        sae.b_enc[feature] = value


def save_model_and_seven_detector(lm, folder, on_texts: list[str], off_texts: list[str]):
    """Save the tiny model and an SAE whose feature 5 fires on "7" (feature 2 always on) to disk.

    Returns ``(model_dir, sae_dir)`` for tests that drive the CLI or the experiment runner."""
    from pathlib import Path

    folder = Path(folder)
    lm.model.save_pretrained(folder / "model")
    lm.tokenizer.save_pretrained(folder / "model")
    sae = blank_sae(lm, 1)
    plant_detector(lm, sae, 5, 1, on_texts, off_texts, "7")
    plant_always_on(sae, 2)
    sae.save(folder / "sae")
    return folder / "model", folder / "sae"
