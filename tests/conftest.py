"""Shared fixtures: a tiny random Llama with a byte-level tokenizer, built offline in memory."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

# The benchmark scripts import each other as top-level modules (`from splice import splice`, as
# when run as `python benchmarks/X.py`); the tests import them the same way, through this one entry.
sys.path.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))

SHARED_DATA = Path(os.environ.get("IGDS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    # Byte-level: every UTF-8 byte is a token, so any text round-trips with no training.
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_lm(n_layers: int = 4, d: int = 64, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    from igds.model import LoadedModel

    torch.manual_seed(seed)
    tok = make_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=d, intermediate_size=2 * d, num_hidden_layers=n_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg).eval()
    return LoadedModel(model=model, tokenizer=tok, name="tiny-llama", device=torch.device("cpu"),
                       dtype=torch.float32)


@pytest.fixture(autouse=True)
def reference_stats_in_the_tests_folder(tmp_path, monkeypatch):
    """Runs keep the reference's statistics under $IGDS_CACHE (igds.pipeline); a test keeps them in its own
    folder, so that no test reads another's and the user's cache gets nothing from a test run."""
    import igds.pipeline

    monkeypatch.setattr(igds.pipeline, "cache_dir", lambda: tmp_path / "igds-cache")


@pytest.fixture
def tiny_lm():
    return make_tiny_lm()


@pytest.fixture(scope="session")
def real_lm():
    """The real SmolLM2-135M (converted once into the igds cache)."""
    from igds.model import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"benchmark data not found at {SHARED_DATA} (set IGDS_SHARED_DATA)")
    return SHARED_DATA


TASK = [{"id": f"t{i}", "instruction": f"add 7{i} and 17", "output": f"the sum is 7{i + 17}"} for i in range(16)]
REF = [{"id": f"r{i}", "instruction": f"describe the garden {chr(97 + i)}", "output": "it is green"} for i in range(12)]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def setup(tiny_lm, tmp_path):
    """A tiny model saved to disk with a planted SAE, and task/reference/pool files (the CLI tests' world)."""
    from planted import save_model_and_seven_detector

    model_dir, _ = save_model_and_seven_detector(tiny_lm, tmp_path, [r["instruction"] for r in TASK],
                                                 [r["instruction"] for r in REF])
    pool = [{"id": f"p{i}", "prompt": f"what is 7{i} + 7" if i % 2 else f"name a colour {i}",
             "completion": "seventy" if i % 2 else "blue", "source": "math" if i % 2 else "other"} for i in range(20)]
    return {"model": str(model_dir), "sae": str(tmp_path / "sae"), "task": _write_jsonl(tmp_path / "task.jsonl", TASK),
            "ref": _write_jsonl(tmp_path / "ref.jsonl", REF), "pool": _write_jsonl(tmp_path / "pool.jsonl", pool),
            "out": str(tmp_path / "run"), "pool_rows": pool}
