"""What SAE training and evaluation read: data-source specs, their tokenised examples, and
the stream of residual activations they produce.

A data source is ``PATH[::key=value,...]``: a file readable by :func:`igds.data.iter_records`
(JSONL, JSON, Parquet, dataset folders) or a ``.txt`` file (one document per blank-line
separated paragraph). Records in a known dialect (Alpaca, ShareGPT, messages,
prompt/completion) become chat-formatted prompt + response; records with a text field
become raw text. Options: ``limit`` (seeded random subset of that many records),
``prompt_field``, ``response_field``, ``text_field``; e.g.
``gsm8k/train.jsonl::prompt_field=question,response_field=answer,limit=3000``.
:mod:`igds.train_sae` trains on them, :mod:`igds.eval_sae` evaluates on them.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .activations import iter_activation_batches, length_batches
from .config import TrainSAEConfig
from .data import DataSpec, TokenizedExample, detect_dialect, iter_records, parse_record, tokenize_example


@dataclass
class DataSource:
    path: str
    limit: int | None = None
    prompt_field: str | None = None
    response_field: str | None = None
    text_field: str | None = None


def parse_source(spec: str, default_text_field: str = "text") -> DataSource:
    """``PATH[::key=value,...]`` -> :class:`DataSource` (keys: limit, prompt_field, response_field, text_field)."""
    path, _, opts = spec.partition("::")
    src = DataSource(path=path, text_field=default_text_field)
    for item in filter(None, (o.strip() for o in opts.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key not in ("limit", "prompt_field", "response_field", "text_field"):
            raise ValueError(f"bad data option {item!r} in {spec!r}; use limit=N, prompt_field=F, "
                             "response_field=F or text_field=F")
        setattr(src, key, int(value) if key == "limit" else value)
    return src


def source_examples(src: DataSource, tokenizer: Any, max_length: int, use_chat_template: bool,
                    rng: random.Random) -> list[TokenizedExample]:
    """Tokenise one source (a seeded subset of ``limit`` records drawn with ``rng``)."""
    path = Path(src.path).expanduser()
    if path.suffix == ".txt":
        if not path.exists():
            raise FileNotFoundError(f"data file not found: {path}")
        paras = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
        items: list[Any] = [("text", p) for p in paras]
    else:
        spec = DataSpec(prompt_field=src.prompt_field, response_field=src.response_field)
        items = []
        for line, rec in iter_records(path):
            dialect = detect_dialect(rec, spec)
            if dialect is None and src.text_field and isinstance(rec.get(src.text_field), str):
                if rec[src.text_field].strip():
                    items.append(("text", rec[src.text_field]))
                continue
            items.append(("example", parse_record(rec, spec, str(path), line, dialect)))
    if src.limit is not None and len(items) > src.limit:
        items = [items[i] for i in sorted(rng.sample(range(len(items)), src.limit))]
    out = []
    for kind, item in items:
        if kind == "text":
            ids = tokenizer(item, add_special_tokens=True)["input_ids"]
            out.append(TokenizedExample(ids=ids[:max_length], prompt_len=0, truncated=len(ids) > max_length))
        else:
            out.append(tokenize_example(tokenizer, item, max_length, use_chat_template))
    return out


def load_training_examples(cfg: TrainSAEConfig, tokenizer: Any) -> list[TokenizedExample]:
    """All sources, tokenised, in file order (shuffled later, per pass)."""
    if not cfg.data:
        raise ValueError("no training data: give at least one data file (TrainSAEConfig.data / --data)")
    rng = random.Random(cfg.seed)
    examples: list[TokenizedExample] = []
    for spec in cfg.data:
        examples += source_examples(parse_source(spec, cfg.text_field), tokenizer, cfg.max_length,
                                    cfg.use_chat_template, rng)
    examples = [e for e in examples if len(e.ids) >= 2]
    if not examples:
        raise ValueError(f"no usable examples in {cfg.data}")
    return examples


def plan_pass(lengths: Sequence[int], seed: int, max_tokens: int, max_batch: int, window: int = 512
              ) -> list[list[int]]:
    """Forward batches for one pass: seeded example order, length-grouped within windows.

    Windows keep padding low while the stream stays a mix of sources and lengths."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    batches: list[list[int]] = []
    for w in range(0, len(order), window):
        ids = order[w : w + window]
        for b in length_batches([lengths[i] for i in ids], max_tokens, max_batch):
            batches.append([ids[j] for j in b])
    return batches


class ActivationStream:
    """Counted, norm-filtered residuals of several layers, batch by batch, restartable at any batch."""

    def __init__(self, lm: Any, examples: list[TokenizedExample], layers: list[int], cfg: TrainSAEConfig):
        self.lm, self.examples, self.layers, self.cfg = lm, examples, layers, cfg
        lengths = [len(e.ids) for e in examples]
        self._plans: dict[int, list[list[int]]] = {}
        self._lengths = lengths
        self.batches_per_pass = len(self._plan(0))
        self.thresholds: dict[int, float] | None = None  # per-layer norm ceilings, fixed on first use
        self.n_seen = 0
        self.n_dropped = 0

    def _plan(self, p: int) -> list[list[int]]:
        if p not in self._plans:
            self._plans = {p: plan_pass(self._lengths, self.cfg.seed + 1000 * p, self.cfg.forward_batch_tokens,
                                        self.cfg.forward_batch_size)}
        return self._plans[p]

    def calibrate(self, min_tokens: int = 4096) -> dict[int, float] | None:
        """Fix the per-layer norm ceilings from the first batches of pass 0 (the same on every resume)."""
        if not self.cfg.norm_filter or self.cfg.norm_filter <= 0:
            return None
        norms: dict[int, list[torch.Tensor]] = {L: [] for L in self.layers}
        got = 0
        for ab in iter_activation_batches(self.lm, self.examples, self.layers, max_tokens=self.cfg.forward_batch_tokens,
                                          max_batch=self.cfg.forward_batch_size, batches=self._plan(0)):
            for L in self.layers:
                norms[L].append(ab.resid[L][ab.counted].float().norm(dim=-1).cpu())
            got += int(ab.counted.sum())
            if got >= min_tokens:
                break
        if got == 0:
            raise ValueError("the data yielded no usable activation tokens (after removing the first token, "
                             "special tokens and padding)")
        self.thresholds = {L: float(torch.cat(v).median()) * self.cfg.norm_filter for L, v in norms.items()}
        return self.thresholds

    def iter_from(self, batch_index: int) -> Iterator[tuple[int, dict[int, torch.Tensor]]]:
        """Yield ``(next batch index, {layer: (n, d) float32 cpu})`` forever (passes repeat, reshuffled)."""
        while True:
            p, i = divmod(batch_index, self.batches_per_pass)
            if i == 0 and p > 0:
                print(f"[train_sae] data pass {p + 1} begins (the data has been used once already)",
                      file=sys.stderr)
            plan = self._plan(p)[i:]
            for ab in iter_activation_batches(self.lm, self.examples, self.layers, max_tokens=self.cfg.forward_batch_tokens,
                                              max_batch=self.cfg.forward_batch_size, batches=plan):
                batch_index += 1
                counted = ab.counted & ab.attention_mask.bool().to(ab.counted.device)
                acts = {L: ab.resid[L][counted].float().cpu() for L in self.layers}
                n = next(iter(acts.values())).shape[0]
                if n == 0:
                    yield batch_index, acts
                    continue
                if self.cfg.norm_filter and self.cfg.norm_filter > 0:
                    norms = {L: a.norm(dim=-1) for L, a in acts.items()}
                    if self.thresholds is None:
                        self.calibrate()
                    assert self.thresholds is not None
                    keep = torch.ones(n, dtype=torch.bool)
                    for L in self.layers:
                        keep &= norms[L] <= self.thresholds[L]
                    acts = {L: a[keep] for L, a in acts.items()}
                    self.n_dropped += int((~keep).sum())
                self.n_seen += n
                yield batch_index, acts


def collect(stream_iter: Iterator[tuple[int, dict[int, torch.Tensor]]], layers: list[int], n_tokens: int,
            max_empty_batches: int = 1000, bar: Any = None) -> tuple[dict[int, torch.Tensor], int]:
    """Pull at least ``n_tokens`` activations (whole forward batches) from a stream."""
    parts: dict[int, list[torch.Tensor]] = {L: [] for L in layers}
    got, empty, next_batch = 0, 0, 0
    for next_batch, acts in stream_iter:
        n = acts[layers[0]].shape[0]
        empty = empty + 1 if n == 0 else 0
        if empty >= max_empty_batches:
            break
        for L in layers:
            parts[L].append(acts[L])
        got += n
        if bar is not None:
            bar.update(n)
        if got >= n_tokens:
            break
    if got == 0:
        raise ValueError("the data yielded no usable activation tokens (after removing the first token, "
                         "special tokens, padding and extreme-norm tokens)")
    return {L: torch.cat(parts[L]) for L in layers}, next_batch


