"""Sparse autoencoders: one native module, loaders for the formats users bring.

Architectures (SAELens names):

* ``standard`` - ``f = relu(x W_enc + b_enc)``
* ``jumprelu`` - ``f = pre * [pre > threshold]`` (Gemma Scope, Llama Scope)
* ``topk``     - keep the k largest pre-activations, then ReLU (sparsify, igds-trained)

``encode(x, features=F)`` returns only the columns ``F``. For ``standard`` and
``jumprelu`` a feature depends on its own encoder column alone, so only
``W_enc[:, F]`` is multiplied: exact and far cheaper on wide SAEs. TopK
membership depends on every feature, so the full pre-activations are computed
and the top-k mask is taken before slicing (exact, not cheaper).

Formats: SAELens folders (``cfg.json`` + ``sae_weights.safetensors``, v5 flat and
v6 ``metadata`` layouts), Gemma Scope ``params.npz`` / ``params.safetensors``,
EleutherAI sparsify (``cfg.json`` + ``sae.safetensors``), and - with ``sae-lens``
installed - ``release/sae_id`` registry names. Weights are read with safetensors
or numpy only (never pickle).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .artifacts import atomic_path, atomic_write_json

ARCHITECTURES = ("standard", "jumprelu", "topk")
NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm")
ASSETS = Path(__file__).parent / "assets" / "saes"


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
            name = self.metadata.get(key) or ""
            m = re.search(r"(?:blocks|layers|h)\.(\d+)", name)
            if m:
                return int(m.group(1))
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
            vals, idx = pre.topk(self.k, dim=-1, sorted=False)
            if features is None:
                return torch.zeros_like(pre).scatter_(-1, idx, vals.relu())
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

    def pre_activations(self, x: torch.Tensor, features: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        return self._pre_normalized(self._normalize_in(x.to(self.W_enc.dtype))[0], features)

    def encode(self, x: torch.Tensor, features: Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
        """Feature activations, all of them or only the columns ``features``."""
        return self._encode_normalized(self._normalize_in(x.to(self.W_enc.dtype))[0], features)

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


# ---------------------------------------------------------------------- loaders
def _from_tensors(tensors: dict[str, torch.Tensor], **kw: Any) -> SAE:
    d_in, d_sae = tensors["W_enc"].shape
    sae = SAE(d_in, d_sae, **kw)
    missing = {"W_enc", "b_enc", "W_dec", "b_dec"} - tensors.keys()
    if sae.architecture == "jumprelu":
        missing |= {"threshold"} - tensors.keys()
    if missing:
        raise ValueError(f"SAE weights lack {sorted(missing)}")
    if tensors["W_dec"].shape != (d_sae, d_in):
        raise ValueError(f"W_dec has shape {tuple(tensors['W_dec'].shape)}, expected {(d_sae, d_in)}")
    with torch.no_grad():
        for name, param in sae.named_parameters():
            t = tensors[name].to(torch.float32)
            if name == "threshold" and t.numel() == 1:  # Llama Scope stores a scalar
                t = t.expand(d_sae)
            param.copy_(t.reshape(param.shape))
    return sae


def _architecture_from_cfg(cfg: dict[str, Any]) -> tuple[str, int | None]:
    arch = cfg.get("architecture")
    act = cfg.get("activation_fn_str") or cfg.get("activation_fn")
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    if arch in (None, "standard") and act == "topk":
        arch = "topk"
    if arch == "jumprelu" or arch == "jump_relu":
        arch = "jumprelu"
    return arch or "standard", k


def load_saelens_folder(folder: Path) -> SAE:
    cfg = json.loads((folder / "cfg.json").read_text())
    arch, k = _architecture_from_cfg(cfg)
    norm = cfg.get("normalize_activations") or "none"
    meta = dict(cfg.get("metadata") or {})
    # pre-v6 configs keep these keys flat
    for key in ("hook_name", "hf_hook_name", "model_name", "neuronpedia_id", "hook_layer"):
        if key in cfg and key not in meta:
            meta[key] = cfg[key]
    if "hook_point" in cfg and "hook_name" not in meta:
        meta["hook_name"] = cfg["hook_point"]
    if meta.get("hook_layer") is not None:
        meta.setdefault("layer", int(meta["hook_layer"]))
    if norm == "expected_average_only_in":
        # SAELens applies nothing at inference for this mode either: the scale is
        # expected to be folded into the weights. Follow it, and say so.
        meta["igds_note"] = "normalize_activations=expected_average_only_in treated as folded (as SAELens does)"
        norm = "none"
    tensors = load_file(str(folder / "sae_weights.safetensors"))
    if "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    sae = _from_tensors(tensors, architecture=arch, k=k,
                        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", False)),
                        normalize_activations=norm,
                        rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
                        metadata={**meta, "source": str(folder)})
    return sae


def load_gemma_scope(path: Path) -> SAE:
    """Gemma Scope ``params.npz`` (upper-case keys) or Gemma Scope 2 ``params.safetensors``."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            tensors = {key: torch.from_numpy(np.asarray(z[key])) for key in z.files}
    else:
        tensors = load_file(str(path))
    tensors = {("W_enc" if k.lower() == "w_enc" else "W_dec" if k.lower() == "w_dec" else k.lower()): v
               for k, v in tensors.items()}
    meta: dict[str, Any] = {"source": str(path)}
    m = re.search(r"layer_(\d+)", str(path))
    if m:
        meta["layer"] = int(m.group(1))
        meta["hook_name"] = f"blocks.{m.group(1)}.hook_resid_post"
    return _from_tensors(tensors, architecture="jumprelu", apply_b_dec_to_input=False, metadata=meta)


def load_sparsify_folder(folder: Path) -> SAE:
    cfg = json.loads((folder / "cfg.json").read_text())
    raw = load_file(str(folder / "sae.safetensors"))
    enc = raw["encoder.weight"]  # (d_sae, d_in)
    d_sae, d_in = enc.shape
    tensors = {"W_enc": enc.T.contiguous(), "b_enc": raw["encoder.bias"], "W_dec": raw["W_dec"], "b_dec": raw["b_dec"]}
    meta: dict[str, Any] = {"source": str(folder)}
    m = re.search(r"layers\.(\d+)", folder.name)
    if m:
        meta["layer"] = int(m.group(1))
        meta["hf_hook_name"] = f"model.layers.{m.group(1)}"
    return _from_tensors(tensors, architecture="topk", k=int(cfg["k"]), apply_b_dec_to_input=True, metadata=meta)


def default_sae_path(model_name: str, layer: int | None = None) -> Path:
    """The SAE shipped with igds for a built-in model (the first layer shipped, by default)."""
    base = ASSETS / model_name
    layers = sorted(int(p.name.split("_")[1]) for p in base.glob("layer_*")) if base.exists() else []
    if not layers:
        raise FileNotFoundError(f"igds ships no default SAE for {model_name!r}; train one with `igds train-sae`")
    if layer is None:
        layer = layers[0]
    if layer not in layers:
        raise FileNotFoundError(f"igds ships default SAEs for {model_name!r} at layers {layers}, not {layer}")
    return base / f"layer_{layer}"


def load_sae(
    spec: str | Path,
    model_name: str | None = None,
    layer: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SAE:
    """Load an SAE from a path, ``default`` (the shipped SAE of a built-in model) or ``release/sae_id``."""
    spec_str = str(spec)
    if spec_str == "default":
        if model_name is None:
            raise ValueError("--sae default needs a built-in model name")
        path = default_sae_path(model_name, layer)
    else:
        path = Path(spec_str).expanduser()
    if path.is_dir():
        if (path / "sae_weights.safetensors").exists() and (path / "cfg.json").exists():
            sae = load_saelens_folder(path)
        elif (path / "sae.safetensors").exists() and (path / "cfg.json").exists():
            sae = load_sparsify_folder(path)
        elif (path / "params.npz").exists():
            sae = load_gemma_scope(path / "params.npz")
        elif (path / "params.safetensors").exists():
            sae = load_gemma_scope(path / "params.safetensors")
        else:
            raise FileNotFoundError(
                f"{path}: not an SAE folder (expected cfg.json + sae_weights.safetensors (SAELens), "
                "cfg.json + sae.safetensors (sparsify), or params.npz / params.safetensors (Gemma Scope))")
    elif path.is_file() and path.name.startswith("params") and path.suffix in (".npz", ".safetensors"):
        sae = load_gemma_scope(path)
    elif path.exists():
        raise ValueError(f"{path}: unsupported SAE file (only SAELens/sparsify folders and Gemma Scope params)")
    elif "/" in spec_str and not spec_str.startswith((".", "/", "~")):
        sae = _load_from_saelens_registry(spec_str)
    else:
        raise FileNotFoundError(f"SAE not found: {spec_str}")
    if layer is not None and sae.layer is not None and sae.layer != layer:
        raise ValueError(f"SAE {spec_str} reads layer {sae.layer}, but layer {layer} was requested")
    if layer is not None and sae.layer is None:
        sae.metadata["layer"] = layer
    return sae.to(device=device, dtype=dtype).eval().requires_grad_(False)


def _load_from_saelens_registry(name: str) -> SAE:
    try:
        from sae_lens import SAE as LensSAE
    except ImportError as e:  # pragma: no cover - depends on the extra
        raise ImportError(f"{name!r} looks like a SAELens release/sae_id; install igds[saelens]") from e
    release, sae_id = name.split("/", 1)
    lens = LensSAE.from_pretrained(release, sae_id, device="cpu")
    cfg = lens.cfg.to_dict()
    arch, k = _architecture_from_cfg(cfg)
    tensors = {n: p.detach() for n, p in lens.state_dict().items()}
    meta = dict(cfg.get("metadata") or {})
    return _from_tensors(tensors, architecture=arch, k=k,
                         apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input")),
                         normalize_activations=cfg.get("normalize_activations") or "none",
                         metadata={**meta, "source": name})


def check_compatible(sae: SAE, d_model: int, n_layers: int, source: str = "SAE") -> None:
    """Fail clearly when an SAE cannot read this model's residual stream."""
    if sae.d_in != d_model:
        raise ValueError(f"{source}: SAE d_in={sae.d_in} does not match the model's hidden size {d_model}")
    if sae.layer is None:
        raise ValueError(f"{source}: the SAE does not say which layer it reads; pass the layer explicitly")
    if not 0 <= sae.layer < n_layers:
        raise ValueError(f"{source}: SAE layer {sae.layer} is out of range for a model with {n_layers} blocks")
