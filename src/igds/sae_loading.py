"""Loading SAEs from the formats users bring, and placing them at a layer.

Formats (:data:`FORMATS`, tried in order): SAELens folders (``cfg.json`` +
``sae_weights.safetensors``, v5 flat and v6 ``metadata`` layouts), EleutherAI sparsify
(``cfg.json`` + ``sae.safetensors``), Gemma Scope ``params.npz`` / ``params.safetensors``,
and - with ``sae-lens`` installed - ``release/sae_id`` registry names. Weights are read
with safetensors or numpy only (never pickle) and must be finite.

Adding a format is one :class:`SAEFormat` entry in :data:`FORMATS` plus its loader: a
``detect(spec) -> bool`` that recognises the location (a path or a name, as the user wrote
it) without reading weights, and a ``load(spec) -> (SAE, where)`` that returns the SAE and
where its hook point was read (named in errors). :func:`load_sae` then resolves the layer
from the hook point (:func:`igds.sae.hook_layer`) for every format alike.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file

from .sae import SAE, UnsupportedHook, hook_layer

ASSETS = Path(__file__).parent / "assets" / "saes"


# ---------------------------------------------------------------------- layer
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


# ---------------------------------------------------------------------- formats
@dataclass(frozen=True)
class SAEFormat:
    """One SAE format :func:`load_sae` recognises (see the module docstring)."""

    name: str
    detect: Callable[[str], bool]
    load: Callable[[str], tuple[SAE, str]]


def _as_path(spec: str) -> Path:
    return Path(spec).expanduser()


def _has(spec: str, *files: str) -> bool:
    path = _as_path(spec)
    return path.is_dir() and all((path / f).exists() for f in files)


def _saelens(spec: str) -> tuple[SAE, str]:
    path = _as_path(spec)
    return load_saelens_folder(path), str(path / "cfg.json")


def _sparsify(spec: str) -> tuple[SAE, str]:
    path = _as_path(spec)
    return load_sparsify_folder(path), f"{path} (sparsify hookpoint from the folder name)"


def _gemma_params(spec: str) -> Path | None:
    """The Gemma Scope params file ``spec`` names: the file itself, or the one in the folder."""
    path = _as_path(spec)
    if path.is_dir():
        return next((path / f for f in ("params.npz", "params.safetensors") if (path / f).exists()), None)
    if path.is_file() and path.name.startswith("params") and path.suffix in (".npz", ".safetensors"):
        return path
    return None


def _gemma(spec: str) -> tuple[SAE, str]:
    params = _gemma_params(spec)
    if params is None:
        raise FileNotFoundError(f"{spec}: no Gemma Scope params.npz / params.safetensors")
    return load_gemma_scope(params), f"{params} (Gemma Scope site from the path)"


def _is_registry_name(spec: str) -> bool:
    """``release/sae_id`` that is no file here (a path written as ./x, /x or ~/x never is a name)."""
    return not _as_path(spec).exists() and "/" in spec and not spec.startswith((".", "/", "~"))


def _registry(spec: str) -> tuple[SAE, str]:
    return _load_from_saelens_registry(spec), f"SAELens {spec} cfg"


FORMATS: list[SAEFormat] = [
    SAEFormat("saelens", lambda s: _has(s, "sae_weights.safetensors", "cfg.json"), _saelens),
    SAEFormat("sparsify", lambda s: _has(s, "sae.safetensors", "cfg.json"), _sparsify),
    SAEFormat("gemma-scope", lambda s: _gemma_params(s) is not None, _gemma),
    SAEFormat("saelens-registry", _is_registry_name, _registry),
]


def load_sae(
    spec: str | Path,
    model_name: str | None = None,
    layer: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SAE:
    """Load an SAE from a path, ``default`` (the shipped SAE of a built-in model) or ``release/sae_id``.

    The first of :data:`FORMATS` that detects the location loads it. The layer comes from
    the SAE's hook point (see :func:`igds.sae.hook_layer`). An SAE whose hook is not the
    residual stream after a block is refused unless ``layer`` is given, which then says
    where to apply it; a ``layer`` that contradicts a readable hook is an error. Every
    tensor is checked finite."""
    spec_str = str(spec)
    if spec_str == "default":
        if model_name is None:
            raise ValueError("--sae default needs a built-in model name")
        location = str(default_sae_path(model_name, layer))
    else:
        location = spec_str
    fmt = next((f for f in FORMATS if f.detect(location)), None)
    if fmt is None:
        path = _as_path(location)
        if path.is_dir():
            raise FileNotFoundError(
                f"{path}: not an SAE folder (expected cfg.json + sae_weights.safetensors (SAELens), "
                "cfg.json + sae.safetensors (sparsify), or params.npz / params.safetensors (Gemma Scope))")
        if path.exists():
            raise ValueError(f"{path}: unsupported SAE file (only SAELens/sparsify folders and Gemma Scope params)")
        raise FileNotFoundError(f"SAE not found: {spec_str}")
    sae, where = fmt.load(location)
    _resolve_layer(sae, where, layer, spec_str)
    return sae.to(device=device, dtype=dtype).eval().requires_grad_(False)
