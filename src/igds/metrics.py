"""Task metrics: number parsing, exact match, ROUGE, BLEU/chrF, and scoring a task's predictions.

Metric names (used by :mod:`igds.tasks`; each keeps its library's native scale):

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
  response under teacher forcing, averaged over examples; computed by
  :mod:`igds.evaluate`, which needs the model.

This module needs neither a model nor :mod:`igds.tasks` (which imports it to check metric
names): :func:`score_predictions` takes any object shaped like a task (:class:`ScoredTask`).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from .data import Example

GENERATION_METRICS = ("exact_match", "rouge1", "rouge2", "rougeL", "bleu", "chrf")
METRICS = GENERATION_METRICS + ("ref_loss",)


class ScoredTask(Protocol):
    """What :func:`score_predictions` reads of a task (:class:`igds.tasks.Task` is one)."""

    name: str
    metrics: tuple[str, ...]

    def references(self, ex: Example) -> list[str]: ...

    def gold(self, ex: Example) -> Any: ...


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


def score_predictions(task: ScoredTask, examples: Sequence[Example], predictions: Sequence[str]
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
