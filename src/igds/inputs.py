"""What a run reads: the data sections of the config as sources and examples, and the SAEs.

The low room every stage and engine reads its inputs through, so that none of them has
to reach back up into the orchestrator (:mod:`igds.pipeline`) to ask how. It also says
what "the same input" means for the caches: :func:`source_fingerprint` (data),
:func:`weights_fingerprint` (model and SAE files) and :func:`precision` (the dtypes the
numbers are computed in), all built on :func:`igds.artifacts.fingerprint`; and, for keys that
must hold on another machine, :func:`sae_content` (the SAEs by content).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import pyarrow.parquet as pq
import torch
from huggingface_hub import try_to_load_from_cache

from .artifacts import fingerprint, sha256_file, stable_hash, visible_files
from .config import DataConfig, RunConfig
from .data import DataSpec, Example, Rejects, load_examples
from .model import BUILTIN_MODELS, LoadedModel, builtin_gguf_path
from .sae import SAE, check_compatible
from .sae_loading import default_sae_path, load_sae

BUILTIN_REFERENCE = Path(__file__).parent / "assets" / "reference" / "generic_instructions.jsonl"


def data_spec(dc: DataConfig) -> DataSpec:
    """How to read the records of ``dc`` (dialect, fields, template, ids, system prompt)."""
    return DataSpec(dialect=dc.dialect, prompt_field=dc.prompt_field, response_field=dc.response_field,
                    prompt_template=dc.prompt_template, id_field=dc.id_field, system_prompt=dc.system_prompt)


def resolve_source(dc: DataConfig, what: str) -> str:
    """The file or dataset ``dc`` reads (``builtin:generic`` is the shipped reference set).

    ``what`` names the config section in the error when no path is given."""
    if not dc.path:
        raise ValueError(f"no {what} data given (set {what}.path, or --{what.replace('_', '-')} on the CLI)")
    if dc.path == "builtin:generic":
        return str(BUILTIN_REFERENCE)
    return dc.path


def read_examples(dc: DataConfig, what: str, skip_bad: bool = False, limit: int | None = None,
                  rejects: Rejects | None = None) -> list[Example]:
    """Every example of ``dc``, up to the smaller of ``dc.limit`` and ``limit``.

    Under ``skip_bad`` the bad records go to ``rejects``, each row tagged ``section=what``."""
    limit = dc.limit if limit is None else (limit if dc.limit is None else min(limit, dc.limit))
    mine = Rejects()
    try:
        return load_examples(resolve_source(dc, what), data_spec(dc), split=dc.split, skip_bad=skip_bad,
                             limit=limit, rejects=mine)
    finally:
        if rejects is not None:
            rejects.rows.extend({"section": what, **row} for row in mine.rows)


def count_records(source: str) -> int | None:
    """How many records ``source`` holds, where that is cheap to know (for progress totals):
    the non-blank lines of a JSONL file, the row count in a Parquet footer; else None."""
    path = Path(source)
    if not path.is_file():
        return None
    if path.suffix in (".jsonl", ".ndjson"):
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    if path.suffix in (".parquet", ".pq"):
        return pq.ParquetFile(path).metadata.num_rows
    return None


def source_fingerprint(source: str) -> str:
    """What identifies a data source's content: a file's sha256; a saved ``datasets`` folder's
    :func:`~igds.artifacts.fingerprint` (its state files hold the ``datasets`` fingerprint);
    ``hf:NAME[:SPLIT]`` the fingerprint ``datasets`` gives the cached dataset, else the name."""
    if source.startswith("hf:"):
        return _hf_fingerprint(source)
    path = Path(source).expanduser()
    if path.is_file():
        return sha256_file(path)
    return fingerprint(path) if path.is_dir() else source


def _hf_fingerprint(source: str) -> str:
    try:
        import datasets
    except ImportError:
        return source
    name, _, split = source[3:].partition(":")
    try:
        ds = datasets.load_dataset(name, split=split or "train")
    except Exception:  # noqa: BLE001 - not loadable here (offline, not cached): the name is all we have
        return source
    return f"{source}@{ds._fingerprint}"


def model_fingerprint(name: str) -> str:
    """The identity of ``model.name``'s weights: the built-in model's GGUF file, a local
    folder or file, or a hub id's cached commit (the id alone when nothing is cached)."""
    if name in BUILTIN_MODELS:
        return fingerprint(builtin_gguf_path(name))
    path = Path(name).expanduser()
    if path.exists():
        return fingerprint(path)
    cached = try_to_load_from_cache(name, "config.json")
    return f"{name}@{Path(cached).parent.name}" if isinstance(cached, str) else name


def sae_fingerprint(spec: str, model_name: str, layer: int | None = None) -> str:
    """The identity of one ``sae.paths`` entry's files (a SAELens ``release/sae_id``: its name)."""
    path = default_sae_path(model_name, layer) if spec == "default" else Path(spec).expanduser()
    return fingerprint(path) if path.exists() else spec


def sae_content(cfg: RunConfig) -> dict[str, object]:
    """What the configured SAEs *are*, whatever path they were read from: each entry's files by
    content (sha256 of every file of the folder but its documentation, ``*.md``/``*.txt``: a model
    card's edit is not a new SAE; a SAELens ``release/sae_id``: its name), with ``sae.layers``.
    For keys that outlive the machine (an experiment's finished runs, archived tables):
    :func:`weights_fingerprint` is cheaper but reads mtimes, which a fresh clone changes."""
    layers = cfg.sae.layers or [None] * len(cfg.sae.paths)
    content = []
    for spec, layer in zip(cfg.sae.paths, layers):
        path = default_sae_path(cfg.model.name, layer) if spec == "default" else Path(spec).expanduser()
        if path.is_dir():
            content.append(stable_hash({str(p.relative_to(path)): sha256_file(p) for p in visible_files(path)
                                        if p.suffix not in (".md", ".txt")}))
        else:
            content.append(sha256_file(path)[:16] if path.is_file() else spec)
    return {"content": content, "layers": cfg.sae.layers}


def weights_fingerprint(cfg: RunConfig) -> dict[str, object]:
    """The identity of the model's and every SAE's weight files, for the cache keys."""
    layers = cfg.sae.layers or [None] * len(cfg.sae.paths)
    return {"model": model_fingerprint(cfg.model.name),
            "saes": [sae_fingerprint(p, cfg.model.name, layer) for p, layer in zip(cfg.sae.paths, layers)]}


def sae_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype SAEs compute in beside a model in ``dtype`` on ``device``: the model's on CUDA
    (no upcast of every residual); float32 on CPU, where bf16 matmuls are slow and float32
    keeps CPU scores bit-identical across model dtypes."""
    return dtype if device.type == "cuda" else torch.float32


def precision(device: torch.device, dtype: torch.dtype) -> str:
    """The model's and the SAEs' dtypes as one cache-key string (scores of two never mix)."""
    return f"{str(dtype).replace('torch.', '')}/sae:{str(sae_dtype(device, dtype)).replace('torch.', '')}"


def load_saes(cfg: RunConfig, lm: LoadedModel) -> dict[int, SAE]:
    """Load every configured SAE, keyed by the layer it reads, and check it fits the model."""
    layers = cfg.sae.layers or [None] * len(cfg.sae.paths)
    if len(layers) != len(cfg.sae.paths):
        raise ValueError(f"sae.layers has {len(layers)} entries but sae.paths has {len(cfg.sae.paths)}")
    saes: dict[int, SAE] = {}
    for path, layer in zip(cfg.sae.paths, layers):
        sae = load_sae(path, model_name=lm.name, layer=layer, device=lm.device, dtype=sae_dtype(lm.device, lm.dtype))
        check_compatible(sae, lm.d_model, lm.n_layers, source=f"SAE {path}")
        if sae.layer in saes:
            raise ValueError(f"two SAEs read layer {sae.layer}; give one SAE per layer")
        saes[sae.layer] = sae  # type: ignore[index]
    return saes


def split_task(examples: Sequence[Example], probe_size: int, validation_size: int, seed: int,
               validation: Sequence[Example] | None = None) -> tuple[list[Example], list[Example]]:
    """Disjoint probe and validation sets (a seeded shuffle of the task file)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    if validation is not None:
        return [examples[i] for i in order[:probe_size]], list(validation)[:validation_size]
    if len(examples) < 2:
        raise ValueError("the task data needs at least 2 examples (probe and validation)")
    n_val = min(validation_size, len(examples) // 2)
    val = [examples[i] for i in order[:n_val]]
    probe = [examples[i] for i in order[n_val:n_val + probe_size]]
    return probe, val
