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
or numpy only (never pickle) and must be finite.

Hook points (:func:`hook_layer`): igds reads the output of decoder block L ("layer L").
``blocks.L.hook_resid_post`` and HF block modules (``model.layers.L``) are layer L;
``blocks.L.hook_resid_pre`` is layer L-1 (L=0, the embeddings, is refused). Any other
site (MLP / attention outputs, transcoders) is refused unless the caller gives the layer.
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


def _resolve_layer(sae: SAE, where: str, layer: int | None, spec: str) -> None:
    """Set the layer from the SAE's hook point; an explicit ``layer`` overrides an unsupported hook."""
    field_name = "hook_name" if sae.metadata.get("hook_name") else "hf_hook_name"
    name = sae.metadata.get(field_name)
    if not name:  # no hook point recorded: the file's layer or the caller's
        if layer is not None and sae.layer is not None and sae.layer != layer:
            raise ValueError(f"SAE {spec} reads layer {sae.layer}, but layer {layer} was requested")
        if layer is not None:
            sae.metadata["layer"] = layer
        return
    try:
        read = hook_layer(str(name))
    except UnsupportedHook as e:
        if layer is None:
            raise UnsupportedHook(f"{where}: field {field_name!r}: {e}; to apply this SAE to the output of "
                                  "block L anyway, give that layer explicitly (sae.layers=[L])") from None
        sae.metadata["layer"] = layer
        sae.metadata["igds_note"] = f"hook {name!r} overridden by the caller: read at the output of block {layer}"
        return
    if layer is not None and read != layer:
        raise ValueError(f"SAE {spec} reads layer {read}, but layer {layer} was requested ({field_name} "
                         f"{name!r}; layer L is the output of block L)")
    sae.metadata["layer"] = read


# ---------------------------------------------------------------------- loaders
def _read_cfg(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a valid JSON SAE config ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Safetensors or ``.npz`` weights (never pickle), each checked finite."""
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                tensors = {key: torch.from_numpy(np.asarray(z[key])) for key in z.files}
        else:
            tensors = load_file(str(path))
    except Exception as e:  # safetensors, zipfile and numpy each raise their own types on a damaged file
        raise ValueError(f"{path}: cannot read SAE weights ({type(e).__name__}: {e}); the file is damaged or "
                         "truncated") from None
    _check_finite(tensors, str(path))
    return tensors


def _check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse NaN/inf weights: they would flow silently into every score."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{where}: tensor {name!r} has {bad} non-finite values (NaN or inf)")


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


def _saelens_metadata(cfg: dict[str, Any]) -> dict[str, Any]:
    meta = dict(cfg.get("metadata") or {})
    # pre-v6 configs keep these keys flat
    for key in ("hook_name", "hf_hook_name", "model_name", "neuronpedia_id", "hook_layer"):
        if key in cfg and key not in meta:
            meta[key] = cfg[key]
    if "hook_point" in cfg and "hook_name" not in meta:
        meta["hook_name"] = cfg["hook_point"]
    # hook_layer is the block *number* in the hook name (L for blocks.L.hook_resid_pre, which
    # igds reads as layer L-1): the hook name decides the layer, hook_layer only without one
    if meta.get("hook_layer") is not None and not (meta.get("hook_name") or meta.get("hf_hook_name")):
        meta.setdefault("layer", int(meta["hook_layer"]))
    return meta


def load_saelens_folder(folder: Path) -> SAE:
    cfg = _read_cfg(folder / "cfg.json")
    arch, k = _architecture_from_cfg(cfg)
    norm = cfg.get("normalize_activations") or "none"
    meta = _saelens_metadata(cfg)
    if norm == "expected_average_only_in":
        # SAELens applies nothing at inference for this mode either: the scale is
        # expected to be folded into the weights. Follow it, and say so.
        meta["igds_note"] = "normalize_activations=expected_average_only_in treated as folded (as SAELens does)"
        norm = "none"
    tensors = _read_tensors(folder / "sae_weights.safetensors")
    if "log_threshold" in tensors and "threshold" not in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    sae = _from_tensors(tensors, architecture=arch, k=k,
                        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", False)),
                        normalize_activations=norm,
                        rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
                        metadata={**meta, "source": str(folder)})
    return sae


# Gemma Scope names the site in the release (gemma-scope-2b-pt-res / -mlp / -att / -transcoders)
# and Gemma Scope 2 in a folder (resid_post / mlp_out / attn_out / transcoder...)
_GEMMA_RELEASE_SITE = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "hook_attn_out",
                       "transcoders": "transcoder"}
_GEMMA_FOLDER_SITE = {"resid_post": "hook_resid_post", "mlp_out": "hook_mlp_out", "attn_out": "hook_attn_out"}


def _gemma_scope_site(path: Path) -> str:
    for part in path.parts:
        m = re.search(r"gemma[-_]scope[-\w]*?-(res|mlp|att|transcoders)$", part)
        if m:
            return _GEMMA_RELEASE_SITE[m.group(1)]
        if part in _GEMMA_FOLDER_SITE:
            return _GEMMA_FOLDER_SITE[part]
        if part.startswith(("transcoder", "clt")):
            return "transcoder"
    return "hook_resid_post"  # a bare layer_N/... folder: the residual release, as before


def load_gemma_scope(path: Path) -> SAE:
    """Gemma Scope ``params.npz`` (upper-case keys) or Gemma Scope 2 ``params.safetensors``."""
    tensors = _read_tensors(path)
    tensors = {("W_enc" if k.lower() == "w_enc" else "W_dec" if k.lower() == "w_dec" else k.lower()): v
               for k, v in tensors.items()}
    meta: dict[str, Any] = {"source": str(path)}
    m = re.search(r"layer_(\d+)", str(path))
    if m:
        meta["hook_name"] = f"blocks.{m.group(1)}.{_gemma_scope_site(path)}"
    return _from_tensors(tensors, architecture="jumprelu", apply_b_dec_to_input=False, metadata=meta)


def load_sparsify_folder(folder: Path) -> SAE:
    cfg = _read_cfg(folder / "cfg.json")
    raw = _read_tensors(folder / "sae.safetensors")
    enc = raw["encoder.weight"]  # (d_sae, d_in)
    tensors = {"W_enc": enc.T.contiguous(), "b_enc": raw["encoder.bias"], "W_dec": raw["W_dec"], "b_dec": raw["b_dec"]}
    meta: dict[str, Any] = {"source": str(folder)}
    # sparsify names each SAE's folder after its hookpoint (a module name, e.g. layers.5 or layers.5.mlp)
    if cfg.get("transcode"):
        meta["hf_hook_name"] = f"{folder.name} (transcoder)"
    elif re.search(r"(?:^|\.)(?:layers|h|blocks)\.\d+", folder.name):
        meta["hf_hook_name"] = folder.name
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
    """Load an SAE from a path, ``default`` (the shipped SAE of a built-in model) or ``release/sae_id``.

    The layer comes from the SAE's hook point (see :func:`hook_layer`). An SAE whose hook
    is not the residual stream after a block is refused unless ``layer`` is given, which
    then says where to apply it; a ``layer`` that contradicts a readable hook is an error.
    Every tensor is checked finite."""
    spec_str = str(spec)
    if spec_str == "default":
        if model_name is None:
            raise ValueError("--sae default needs a built-in model name")
        path = default_sae_path(model_name, layer)
    else:
        path = Path(spec_str).expanduser()
    if path.is_dir():
        if (path / "sae_weights.safetensors").exists() and (path / "cfg.json").exists():
            sae, where = load_saelens_folder(path), str(path / "cfg.json")
        elif (path / "sae.safetensors").exists() and (path / "cfg.json").exists():
            sae, where = load_sparsify_folder(path), f"{path} (sparsify hookpoint from the folder name)"
        elif (path / "params.npz").exists():
            sae, where = load_gemma_scope(path / "params.npz"), f"{path / 'params.npz'} (Gemma Scope site from the path)"
        elif (path / "params.safetensors").exists():
            sae, where = (load_gemma_scope(path / "params.safetensors"),
                          f"{path / 'params.safetensors'} (Gemma Scope site from the path)")
        else:
            raise FileNotFoundError(
                f"{path}: not an SAE folder (expected cfg.json + sae_weights.safetensors (SAELens), "
                "cfg.json + sae.safetensors (sparsify), or params.npz / params.safetensors (Gemma Scope))")
    elif path.is_file() and path.name.startswith("params") and path.suffix in (".npz", ".safetensors"):
        sae, where = load_gemma_scope(path), f"{path} (Gemma Scope site from the path)"
    elif path.exists():
        raise ValueError(f"{path}: unsupported SAE file (only SAELens/sparsify folders and Gemma Scope params)")
    elif "/" in spec_str and not spec_str.startswith((".", "/", "~")):
        sae, where = _load_from_saelens_registry(spec_str), f"SAELens {spec_str} cfg"
    else:
        raise FileNotFoundError(f"SAE not found: {spec_str}")
    _resolve_layer(sae, where, layer, spec_str)
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
    _check_finite(tensors, f"SAELens {name}")
    meta = _saelens_metadata(cfg)
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
