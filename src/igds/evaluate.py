"""Task metrics, batched greedy generation and the teacher-forced reference loss.

Metrics (names used by :mod:`igds.tasks`; each keeps its library's native scale):

* ``exact_match`` (0..1): the number extracted from the prediction by
  :func:`extract_final_number` equals the gold answer (numerically, so ``3.50`` equals
  ``3.5`` and ``1,234`` equals ``1234``). A non-numeric gold is compared as text after
  stripping, case folding and collapsing whitespace.
* ``rouge1``, ``rouge2``, ``rougeL`` (0..1): F1 from ``rouge-score`` with its default
  tokeniser (lower-cased, non-alphanumerics dropped) and the Porter stemmer. With several
  references the per-example score is the maximum over references (``score_multi``).
* ``bleu``, ``chrf`` (0..100): ``sacrebleu`` *corpus-level* scores over all examples
  (several references per example are allowed, missing ones are padded with ``None``).
  BLEU uses the ``zh`` tokeniser when every example's target language is Chinese, else
  ``13a``. The per-example values in the records are sentence-level scores, for
  inspection only; the reported metric is the corpus score.
* ``ref_loss`` (nats/token, lower is better): mean cross-entropy of the reference
  response under teacher forcing, averaged over examples. It needs no generation and
  varies far less than generated-text metrics on small evaluation sets.

Generation (ours): greedy decoding (``do_sample=False``, one beam) with left padding,
in batches of prompts sorted by length (stable by position), stopping at the
tokenizer's / generation config's EOS ids or after ``max_new_tokens``. Output is
decoded without special tokens and stripped. Batched output equals one-by-one output
up to floating-point ties (tested on the tiny model).
"""

from __future__ import annotations

import math
import re
import sys
import time
from fractions import Fraction
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .activations import length_batches, pad
from .data import Example, TokenizedExample, tokenize_example
from .losses import target_mask
from .model import LoadedModel

GENERATION_METRICS = ("exact_match", "rouge1", "rouge2", "rougeL", "bleu", "chrf")
METRICS = GENERATION_METRICS + ("ref_loss",)
LOWER_IS_BETTER = ("ref_loss",)


# ====================================================================== numbers
# A number: optional sign (ASCII or Unicode minus) and dollar sign in either order,
# digits with optional thousands commas, optional decimals, optional "/denominator".
# It may not follow a letter, digit or dot, so "5-6" gives 5 and 6, not -6, and "x2" no 2.
_NUMBER = re.compile(
    r"(?<![\w.])(?P<s1>[-\u2212]?)\s?\$?\s?(?P<s2>[-\u2212]?)"
    r"(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<dec>\.\d+)?(?:/(?P<den>\d+))?(?!\d)")
_MARKERS = (
    re.compile(r"####"),
    re.compile(r"\\boxed\{"),
    re.compile(r"answer\s*(?:is|:|=)", re.IGNORECASE),
)


def _to_value(m: re.Match[str]) -> float | None:
    digits = m.group("int").replace(",", "") + (m.group("dec") or "")
    value = Fraction(digits)
    if m.group("den"):
        den = int(m.group("den"))
        if den == 0:
            return None
        value /= den
    if m.group("s1") or m.group("s2"):
        value = -value
    return float(value)


def parse_number(text: str) -> float | None:
    """The first number in ``text`` (commas, ``$``, signs, decimals, fractions), or None."""
    for m in _NUMBER.finditer(text):
        v = _to_value(m)
        if v is not None:
            return v
    return None


def extract_final_number(text: str | None) -> float | None:
    """The final answer of a worked solution as a float, or None when there is none.

    Preference: the first number after the last ``####``; else inside the last
    ``\\boxed{...}``; else after the last "answer is" / "answer:"; else the last number
    in the text."""
    if not text:
        return None
    for marker in _MARKERS:
        hits = list(marker.finditer(text))
        if hits:
            tail = text[hits[-1].end():]
            value = parse_number(tail.split("\n\n")[0])
            if value is not None:
                return value
    values = [_to_value(m) for m in _NUMBER.finditer(text)]
    values = [v for v in values if v is not None]
    return values[-1] if values else None


def _norm_text(s: str) -> str:
    return " ".join(str(s).casefold().split())


def exact_match(prediction: str, gold: Any) -> float:
    """1.0 when the prediction's final number equals ``gold`` (a number or numeric text).

    A gold that holds no number is compared as normalised text instead."""
    if gold is None:
        return math.nan
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        gold_value: float | None = float(gold)
    else:
        gold_value = extract_final_number(str(gold))
    if gold_value is None:
        return float(_norm_text(prediction) == _norm_text(str(gold)))
    pred = extract_final_number(prediction)
    return float(pred is not None and math.isclose(pred, gold_value, rel_tol=1e-9, abs_tol=1e-9))


# ====================================================================== text metrics
def rouge_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]
                 ) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Mean ROUGE-1/2/L F1 and per-example values (max over each example's references)."""
    from rouge_score import rouge_scorer

    kinds = ["rouge1", "rouge2", "rougeL"]
    scorer = rouge_scorer.RougeScorer(kinds, use_stemmer=True)
    rows = []
    for pred, refs in zip(predictions, references, strict=True):
        s = scorer.score_multi(list(refs), pred)
        rows.append({k: float(s[k].fmeasure) for k in kinds})
    means = {k: float(np.mean([r[k] for r in rows])) if rows else math.nan for k in kinds}
    return means, rows


def _ref_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Per-example reference lists -> sacrebleu's reference streams (None pads short lists)."""
    width = max((len(r) for r in references), default=1)
    return [[refs[i] if i < len(refs) else None for refs in references] for i in range(width)]


def bleu_chrf(predictions: Sequence[str], references: Sequence[Sequence[str]], tokenize: str = "13a",
              which: Iterable[str] = ("bleu", "chrf")) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Corpus BLEU / chrF (sacrebleu, 0..100) and per-example sentence scores."""
    from sacrebleu.metrics import BLEU, CHRF

    which = list(which)
    streams = _ref_streams(references)
    means: dict[str, float] = {}
    rows: list[dict[str, float]] = [{} for _ in predictions]
    metrics = {"bleu": lambda: BLEU(tokenize=tokenize), "chrf": lambda: CHRF()}
    for name in which:
        corpus = metrics[name]()
        means[name] = float(corpus.corpus_score(list(predictions), streams).score)
        # effective_order: sentence BLEU of short segments is not stuck at zero
        sentence = BLEU(tokenize=tokenize, effective_order=True) if name == "bleu" else metrics[name]()
        for row, pred, refs in zip(rows, predictions, references, strict=True):
            row[name] = float(sentence.sentence_score(pred, list(refs)).score)
    return means, rows


def score_predictions(task: Any, examples: Sequence[Example], predictions: Sequence[str]
                      ) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The task's generation metrics: means and per-example values."""
    names = [m for m in task.metrics if m in GENERATION_METRICS]
    unknown = [m for m in task.metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"task {task.name!r}: unknown metric(s) {unknown}; known: {list(METRICS)}")
    means: dict[str, float] = {}
    rows: list[dict[str, float]] = [{} for _ in examples]
    refs = [task.references(ex) for ex in examples]
    if "exact_match" in names:
        per = [exact_match(p, task.gold(ex)) for p, ex in zip(predictions, examples, strict=True)]
        for row, v in zip(rows, per):
            row["exact_match"] = v
        means["exact_match"] = float(np.nanmean(per)) if per and not all(map(math.isnan, per)) else math.nan
    if any(n.startswith("rouge") for n in names):
        m, per_rouge = rouge_scores(predictions, refs)
        for row, r in zip(rows, per_rouge):
            row.update({k: v for k, v in r.items() if k in names})
        means.update({k: v for k, v in m.items() if k in names})
    mt = [n for n in names if n in ("bleu", "chrf")]
    if mt:
        langs = {str(ex.record.get("tgt_lang", "")).lower() for ex in examples}
        m, per_mt = bleu_chrf(predictions, refs, tokenize="zh" if langs == {"zh"} else "13a", which=mt)
        for row, r in zip(rows, per_mt):
            row.update(r)
        means.update(m)
    return means, rows


# ====================================================================== generation
def _eos_ids(lm: LoadedModel) -> list[int]:
    ids: set[int] = set()
    tok_eos = getattr(lm.tokenizer, "eos_token_id", None)
    if tok_eos is not None:
        ids.add(int(tok_eos))
    cfg_eos = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    if isinstance(cfg_eos, int):
        ids.add(cfg_eos)
    elif cfg_eos:
        ids.update(int(i) for i in cfg_eos)
    return sorted(ids)


def _as_example(p: Example | str, i: int) -> Example:
    if isinstance(p, Example):
        return p
    return Example(id=str(i), messages=[{"role": "user", "content": str(p)}], response="", record={},
                   dialect="prompt_completion", source="<prompts>", line=i + 1)


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", disable=not enabled, leave=False, file=sys.stderr)


@torch.no_grad()
def greedy_generate(lm: LoadedModel, prompts: Sequence[Example | str], max_new_tokens: int = 256, batch_size: int = 16,
             use_chat_template: bool = True, max_prompt_length: int | None = None,
             progress: bool = False) -> list[str]:
    """Greedy completions of ``prompts`` (Examples, or plain user-message strings), in order.

    Prompts longer than ``max_prompt_length`` tokens keep their *last* tokens (the
    end of the instruction and the assistant header) - ours, so that generation still
    starts where an answer belongs."""
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    tok = lm.tokenizer
    exs = [_as_example(p, i) for i, p in enumerate(prompts)]
    ids = [tokenize_example(tok, ex, max_length=10**9, use_chat_template=use_chat_template,
                            with_response=False).ids for ex in exs]
    if max_prompt_length is not None:
        ids = [x[-max_prompt_length:] for x in ids]
    eos = _eos_ids(lm)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else 0)
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                               eos_token_id=eos or None, pad_token_id=pad_id)
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    out: list[str] = [""] * len(ids)
    bar = _progress(len(ids), "generating", progress)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):  # left padding: every prompt ends at the last column
                input_ids[r, width - len(ids[i]):] = torch.tensor(ids[i], dtype=torch.long)
                mask[r, width - len(ids[i]):] = 1
            seqs = lm.model.generate(input_ids=input_ids.to(lm.device), attention_mask=mask.to(lm.device),
                                     generation_config=gen_cfg)
            for r, i in enumerate(idx):
                new = seqs[r, width:].tolist()
                cut = next((j for j, t in enumerate(new) if t in eos), len(new))
                out[i] = tok.decode(new[:cut], skip_special_tokens=True).strip()
            bar.update(len(idx))
    finally:
        bar.close()
    return out


generate = greedy_generate  # the public name; evaluate_task's ``generate`` flag shadows it there


# ====================================================================== teacher-forced loss
@torch.no_grad()
def token_losses(lm: LoadedModel, tokenized: Sequence[TokenizedExample], max_tokens: int = 8192,
                 max_batch: int = 16, progress: bool = False, desc: str = "reference loss") -> np.ndarray:
    """Mean next-token CE over each example's response tokens (``[prompt_len, len)``), (n,).

    Batches are length-bucketed and right-padded; padding never enters a loss (causal
    attention plus the attention mask keep it out of every real position, and only
    response targets are counted). Examples with no response token left get NaN."""
    from .intervention import masked_losses

    out = np.full(len(tokenized), np.nan, dtype=np.float64)
    if not tokenized:
        return out
    tok = lm.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    bar = _progress(len(tokenized), desc, progress)
    try:
        for idx in length_batches([len(t.ids) for t in tokenized], max_tokens, max_batch):
            group = [tokenized[i] for i in idx]
            ids, mask = pad(group, pad_id)
            target = target_mask(group, ids.shape[1], "response")
            if target.any():
                out[idx] = masked_losses(lm, ids, mask, target).float().cpu().numpy()
            bar.update(len(idx))
    finally:
        bar.close()
    return out


def reference_losses(lm: LoadedModel, examples: Sequence[Example], max_length: int = 1024,
                     use_chat_template: bool = True, max_tokens: int = 8192, max_batch: int = 16,
                     progress: bool = False) -> np.ndarray:
    """Teacher-forced loss of each example's reference response given its prompt, (n,)."""
    tokenized = [tokenize_example(lm.tokenizer, ex, max_length, use_chat_template) for ex in examples]
    return token_losses(lm, tokenized, max_tokens, max_batch, progress)


# ====================================================================== one task
def evaluate_task(lm: LoadedModel, task: Any, examples: Sequence[Example], generate: bool = True,
                  max_new_tokens: int | None = None, batch_size: int = 16, ref_loss: bool = True,
                  max_length: int = 1024, use_chat_template: bool = True, max_prompt_length: int | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """Evaluate ``lm`` on ``examples`` of ``task`` (an :class:`igds.tasks.Task` or its name).

    Returns ``{"task", "metrics": {name: mean}, "stats": {...}, "records": [...]}``; each
    record holds ``id``, ``prediction``, ``references``, ``gold``, ``scores`` (per-example
    metric values) and ``ref_loss``. ``metrics`` holds only metric values, so that it
    can go straight into results tables."""
    from .tasks import get_task

    task = get_task(task)
    if not examples:
        raise ValueError(f"task {task.name!r}: no examples to evaluate")
    metrics: dict[str, float] = {}
    stats: dict[str, Any] = {"n": len(examples)}
    preds: list[str | None] = [None] * len(examples)
    per: list[dict[str, float]] = [{} for _ in examples]
    if generate and any(m in GENERATION_METRICS for m in task.metrics):
        t0 = time.perf_counter()
        preds = list(greedy_generate(lm, examples, max_new_tokens or task.max_new_tokens, batch_size,
                                     use_chat_template, max_prompt_length, progress))
        dt = time.perf_counter() - t0
        stats.update(generate_seconds=round(dt, 3), generate_examples_per_s=round(len(examples) / max(dt, 1e-9), 3))
        means, per = score_predictions(task, examples, preds)  # type: ignore[arg-type]
        metrics.update(means)
    losses = np.full(len(examples), np.nan)
    if ref_loss:
        t0 = time.perf_counter()
        losses = reference_losses(lm, examples, max_length, use_chat_template, max_batch=batch_size,
                                  progress=progress)
        stats["ref_loss_seconds"] = round(time.perf_counter() - t0, 3)
        finite = losses[np.isfinite(losses)]
        metrics["ref_loss"] = float(finite.mean()) if len(finite) else math.nan
        stats["ref_loss_n"] = int(len(finite))
    records = [{"id": ex.id, "prediction": p, "references": task.references(ex), "gold": task.gold(ex),
                "scores": s, "ref_loss": None if math.isnan(l) else float(l)}
               for ex, p, s, l in zip(examples, preds, per, losses)]
    return {"task": task.name, "metrics": metrics, "stats": stats, "records": records}
