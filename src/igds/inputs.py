"""What a run reads: the data sections of the config as sources and examples, and the SAEs.

The low room every stage and engine reads its inputs through, so that none of them has
to reach back up into the orchestrator (:mod:`igds.pipeline`) to ask how.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import torch

from .config import DataConfig, RunConfig
from .data import DataSpec, Example, load_examples
from .model import LoadedModel
from .sae import SAE, check_compatible, load_sae

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


def read_examples(dc: DataConfig, what: str, skip_bad: bool = False, limit: int | None = None) -> list[Example]:
    """Every example of ``dc``, up to the smaller of ``dc.limit`` and ``limit``."""
    limit = dc.limit if limit is None else (limit if dc.limit is None else min(limit, dc.limit))
    return load_examples(resolve_source(dc, what), data_spec(dc), split=dc.split, skip_bad=skip_bad, limit=limit)


def load_saes(cfg: RunConfig, lm: LoadedModel) -> dict[int, SAE]:
    """Load every configured SAE, keyed by the layer it reads, and check it fits the model."""
    layers = cfg.sae.layers or [None] * len(cfg.sae.paths)
    if len(layers) != len(cfg.sae.paths):
        raise ValueError(f"sae.layers has {len(layers)} entries but sae.paths has {len(cfg.sae.paths)}")
    saes: dict[int, SAE] = {}
    for path, layer in zip(cfg.sae.paths, layers):
        sae = load_sae(path, model_name=lm.name, layer=layer, device=lm.device, dtype=torch.float32)
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
