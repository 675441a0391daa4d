"""Sparse autoencoders: the one native SAE module igds scores with.

Architectures (SAELens names):

* ``standard`` - ``f = relu(x W_enc + b_enc)``
* ``jumprelu`` - ``f = pre * [pre > threshold]`` (Gemma Scope, Llama Scope)
* ``topk``     - keep the k largest pre-activations, then ReLU (sparsify, igds-trained)

``encode(x, features=F)`` returns only the columns ``F``. For ``standard`` and
``jumprelu`` a feature depends on its own encoder column alone, so only
``W_enc[:, F]`` is multiplied: exact and far cheaper on wide SAEs. TopK
membership depends on every feature, so the full pre-activations are computed
and the top-k mask is taken before slicing (exact, not cheaper).

Loading the formats users bring (SAELens, Gemma Scope, sparsify) is
:mod:`igds.sae_loading`; this module is the SAE itself and its hook semantics, which
``SAE.layer`` reads (so they live here: the loaders import them, not the other way round).

Hook points (:func:`hook_layer`): igds reads the output of decoder block L ("layer L").
``blocks.L.hook_resid_post`` and HF block modules (``model.layers.L``) are layer L;
``blocks.L.hook_resid_pre`` is layer L-1 (L=0, the embeddings, is refused). Any other
site (MLP / attention outputs, transcoders) is refused unless the caller gives the layer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file
from torch import nn

from .artifacts import atomic_path, atomic_write_json

ARCHITECTURES = ("standard", "jumprelu", "topk")
NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm")


class SAE(nn.Module):
    """A residual-stream SAE in raw activation space (any input scale folded in)."""

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        architecture: str = "topk",
        k: int | None = None,
        apply_b_dec_to_input: bool = False,
        normalize_activations: str = "none",
        rescale_acts_by_decoder_norm: bool = False,
        metadata: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown SAE architecture {architecture!r}; expected one of {ARCHITECTURES}")
        if architecture == "topk" and (k is None or not 0 < k <= d_sae):
            raise ValueError(f"a topk SAE needs 0 < k <= d_sae ({d_sae}), got k={k}")
        if normalize_activations not in NORMALIZATIONS:
            raise ValueError(
                f"normalize_activations={normalize_activations!r} is not supported; "
                f"igds applies one of {NORMALIZATIONS} (fold any constant scale into the weights)"
            )
        self.d_in, self.d_sae, self.architecture, self.k = d_in, d_sae, architecture, k
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.normalize_activations = normalize_activations
        self.rescale_acts_by_decoder_norm = rescale_acts_by_decoder_norm
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype))
        if architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(d_sae, dtype=dtype))

    # ------------------------------------------------------------------ identity
    @property
    def layer(self) -> int | None:
        """The decoder block whose *output* this SAE reads (HF ``hidden_states[layer+1]``)."""
        if self.metadata.get("layer") is not None:
            return int(self.metadata["layer"])
        for key in ("hook_name", "hf_hook_name"):
            name = self.metadata.get(key)
            if name:
                try:
                    return hook_layer(str(name))
                except UnsupportedHook:
                    return None
        return None

    def describe(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "d_in": self.d_in, "d_sae": self.d_sae,
                "k": self.k, "layer": self.layer, **{k: v for k, v in self.metadata.items()
                                                     if isinstance(v, (str, int, float, bool))}}

    # ------------------------------------------------------------------ maths
    def _normalize_in(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        if self.normalize_activations == "constant_norm_rescale":
            coeff = self.d_in**0.5 / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return x * coeff, coeff
        if self.normalize_activations == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            xc = x - mu
            std = xc.std(dim=-1, keepdim=True)
            return xc / (std + 1e-5), (mu, std)
        return x, None

    def _normalize_out(self, x: torch.Tensor, state: Any) -> torch.Tensor:
        if self.normalize_activations == "constant_norm_rescale":
            return x / state
        if self.normalize_activations == "layer_norm":
            mu, std = state
            return x * std + mu
        return x

    def _pre_normalized(self, x: torch.Tensor, features: Sequence[int] | torch.Tensor | None) -> torch.Tensor:
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        if features is None:
            pre = x @ self.W_enc + self.b_enc
            return pre * self.W_dec.norm(dim=-1) if self.rescale_acts_by_decoder_norm else pre
        idx = torch.as_tensor(features, dtype=torch.long, device=self.W_enc.device)
        pre = x @ self.W_enc[:, idx] + self.b_enc[idx]
        return pre * self.W_dec[idx].norm(dim=-1) if self.rescale_acts_by_decoder_norm else pre

    def _encode_normalized(self, x: torch.Tensor, features: Sequence[int] | torch.Tensor | None) -> torch.Tensor:
        if self.architecture == "topk":
            pre = self._pre_normalized(x, None)  # the top-k needs every pre-activation
            vals, idx = self._top_k(pre)
            if features is None:
                return torch.zeros_like(pre).scatter_(-1, idx, vals)
            # a feature is on iff it reaches the k-th largest pre-activation; this skips
            # materialising the dense (tokens, d_sae) activation tensor for a few columns
            sel = pre[..., torch.as_tensor(features, dtype=torch.long, device=pre.device)]
            return sel.relu() * (sel >= vals.amin(dim=-1, keepdim=True))
        pre = self._pre_normalized(x, features)
        if self.architecture == "standard":
            return pre.relu()
        thr = self.threshold if features is None else self.threshold[
            torch.as_tensor(features, dtype=torch.long, device=pre.device)]
        return pre.relu() * (pre > thr)

    def encode(self, x: torch.Tensor, features: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Feature activations, all of them or only the columns ``features``."""
        return self._encode_normalized(self._normalize_in(x.to(self.W_enc.dtype))[0], features)

    def encode_sparse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A TopK SAE's k chosen features per token as (activations, feature indices), each (..., k):
        what :meth:`encode` scatters into the dense (..., d_sae) tensor, without building it. None for
        the other architectures, which have no fixed number of active features (use :meth:`encode`)."""
        if self.architecture != "topk":
            return None
        return self._top_k(self._pre_normalized(self._normalize_in(x.to(self.W_enc.dtype))[0], None))

    def _top_k(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The k largest pre-activations per token, rectified, and their feature indices."""
        vals, idx = pre.topk(self.k, dim=-1, sorted=False)
        return vals.relu(), idx

    def output_scale(self, x: torch.Tensor) -> torch.Tensor | float:
        """Factor mapping a normalised-space write back to the raw residual of ``x``."""
        if self.normalize_activations == "constant_norm_rescale":
            return x.norm(dim=-1, keepdim=True) / self.d_in**0.5
        if self.normalize_activations == "layer_norm":
            return (x - x.mean(dim=-1, keepdim=True)).std(dim=-1, keepdim=True) + 1e-5
        return 1.0

    def decode(self, acts: torch.Tensor, features: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruct from activations (of all features, or of the subset ``features``)."""
        W = self.W_dec if features is None else self.W_dec[
            torch.as_tensor(features, dtype=torch.long, device=self.W_dec.device)]
        if self.rescale_acts_by_decoder_norm:
            acts = acts / W.norm(dim=-1)
        return acts.to(W.dtype) @ W + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of ``x`` in its own (raw) space."""
        xn, state = self._normalize_in(x.to(self.W_enc.dtype))
        return self._normalize_out(self.decode(self._encode_normalized(xn, None)), state)

    def decoder_direction(self, feature: int) -> torch.Tensor:
        """The residual-space direction written by one unit of ``feature``."""
        d = self.W_dec[feature]
        if self.rescale_acts_by_decoder_norm:
            d = d / d.norm()
        return d

    # ------------------------------------------------------------------ saving
    def saelens_config(self) -> dict[str, Any]:
        """A SAELens v6 ``cfg.json`` for this SAE."""
        layer = self.layer
        meta = {k: v for k, v in self.metadata.items() if k != "layer"}
        if layer is not None:
            meta.setdefault("hook_name", f"blocks.{layer}.hook_resid_post")
        cfg: dict[str, Any] = {
            "architecture": self.architecture,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": str(self.W_enc.dtype).replace("torch.", ""),
            "device": "cpu",
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": self.normalize_activations,
            "reshape_activations": "none",
            "metadata": meta,
        }
        if self.architecture == "topk":
            cfg["k"] = self.k
            cfg["rescale_acts_by_decoder_norm"] = self.rescale_acts_by_decoder_norm
        return cfg

    def save(self, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``) atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {n: p.detach().to(dtype or p.dtype).contiguous().cpu() for n, p in self.named_parameters()}
        cfg = self.saelens_config()
        if dtype is not None:
            cfg["dtype"] = str(dtype).replace("torch.", "")
        with atomic_path(folder / "sae_weights.safetensors") as tmp:
            save_file(tensors, str(tmp))
        atomic_write_json(folder / "cfg.json", cfg)
        return folder


# ---------------------------------------------------------------------- hook points
class UnsupportedHook(ValueError):
    """An SAE trained on a site that is not the residual stream after a decoder block."""


# SAELens / TransformerLens hook names, and HF module names (sparsify hookpoints, hf_hook_name)
_RESID_POST = re.compile(r"blocks\.(\d+)\.hook_resid_post")
_RESID_PRE = re.compile(r"blocks\.(\d+)\.hook_resid_pre")
_HF_BLOCK = re.compile(r"(?:\w+\.)*(?:layers|h|blocks)\.(\d+)")


def hook_layer(hook_name: str) -> int:
    """igds's layer (the output of block L) for an SAE hook point; :class:`UnsupportedHook` otherwise.

    ``blocks.L.hook_resid_post`` and a decoder block's module (``model.layers.L``,
    ``transformer.h.L``) are the output of block L. ``blocks.L.hook_resid_pre`` is the
    input of block L, i.e. the output of block L-1 (for L=0 the embeddings, which igds
    does not read). Every other site (``hook_mlp_out``, ``hook_attn_out``, ``attn.hook_z``,
    ``hook_resid_mid``, ``layers.L.mlp``, ...) is not the residual stream after a block."""
    name = hook_name.strip()
    if m := _RESID_POST.fullmatch(name):
        return int(m.group(1))
    if m := _RESID_PRE.fullmatch(name):
        if int(m.group(1)) == 0:
            raise UnsupportedHook(f"hook {name!r} reads the embeddings (the input of block 0); "
                                  "igds reads the outputs of decoder blocks only")
        return int(m.group(1)) - 1
    if m := _HF_BLOCK.fullmatch(name):
        return int(m.group(1))
    raise UnsupportedHook(f"hook {name!r} is not the residual stream after a decoder block (igds reads "
                          "blocks.L.hook_resid_post, blocks.L.hook_resid_pre or a block's output such as model.layers.L)")


def check_compatible(sae: SAE, d_model: int, n_layers: int, source: str = "SAE") -> None:
    """Fail clearly when an SAE cannot read this model's residual stream."""
    if sae.d_in != d_model:
        raise ValueError(f"{source}: SAE d_in={sae.d_in} does not match the model's hidden size {d_model}")
    if sae.layer is None:
        raise ValueError(f"{source}: the SAE does not say which layer it reads; pass the layer explicitly")
    if not 0 <= sae.layer < n_layers:
        raise ValueError(f"{source}: SAE layer {sae.layer} is out of range for a model with {n_layers} blocks")
