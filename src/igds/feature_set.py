"""The Stage-1 result and the schema of ``features.json``: :class:`FeatureSet` of :class:`Candidate`.

``features.find_task_features`` builds these; scoring, the pipeline, the experiment
runner and the report read them. On disk a candidate is a JSON object whose keys are
the dataclass fields, in field order, with unset (``None``) fields left out, so the
file keeps the shape it always had. :meth:`FeatureSet.load` checks every field and
names file, entry and field in one line when one is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .artifacts import atomic_write_json


def feature_key(layer: int, feature: int) -> str:
    """The stable name of one SAE feature, e.g. ``L15/F123``."""
    return f"L{layer}/F{feature}"


def is_num(x: Any) -> bool:
    """A JSON number (``True``/``False`` are not)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# What a field must hold, by kind; a check returns whether the value is acceptable.
_KINDS: dict[str, tuple[Any, str]] = {
    "num": (is_num, "a number"),
    "int": (_is_int, "an integer"),
    "str": (lambda x: isinstance(x, str), "a string"),
    "bool": (lambda x: isinstance(x, bool), "true or false"),
    "dict": (lambda x: isinstance(x, dict), "an object"),
    "nums": (lambda x: isinstance(x, list) and all(is_num(v) for v in x), "a list of numbers"),
    "ints": (lambda x: isinstance(x, list) and all(_is_int(v) for v in x), "a list of integers"),
    "strs": (lambda x: isinstance(x, list) and all(isinstance(v, str) for v in x), "a list of strings"),
    "dicts": (lambda x: isinstance(x, list) and all(isinstance(v, dict) for v in x), "a list of objects"),
    "tokens": (lambda x: isinstance(x, list) and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)
                                                     and is_num(p[1]) for p in x), "[[token, logit], ...]"),
}


def _checked(cls: type, obj: Any, where: str, kinds: Mapping[str, str], required: tuple[str, ...]) -> dict[str, Any]:
    """``obj``'s fields after checking them against ``kinds``; ``ValueError`` naming ``where`` and the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected an object, got {type(obj).__name__}")
    unknown = [k for k in obj if k not in kinds]
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r} (a {cls.__name__} has {', '.join(kinds)})")
    for key in required:
        if obj.get(key) is None:
            raise ValueError(f"{where}: field {key!r} is missing")
    for key, value in obj.items():
        ok, like = _KINDS[kinds[key]]
        if value is not None and not ok(value):
            raise ValueError(f"{where}: field {key!r}: expected {like}, got {value!r}")
    return dict(obj)


def _to_dict(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The set fields of a dataclass in field order, nested records as objects."""
    out: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value is None or f.name in skip:
            continue
        out[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
    return out


@dataclass
class Effect:
    """Stage 1b: the paired per-example effect of editing the feature on the reference loss, and its tests.

    Positive = amplifying the feature lowers the loss (it helps). ``estimator`` says how the
    per-example effect was measured (``igds.features``; files from before it was recorded
    used ``amplify``). The test fields (``p_value`` onwards, ``igds.filter_stats``) are absent
    in older files. With split-half replication, ``n``, ``mean_delta``, ``se`` and the CI are
    half B's, the examples that did not select the feature."""

    metric: str  # "ref_loss"
    alpha: float  # the amplification factor
    n: int  # examples behind mean_delta (half B with replication), finite effects only
    mean_delta: float  # mean per-example effect (positive = helps)
    se: float  # standard error of that mean; NaN when n < 2
    ci_low: float  # 95% interval of the mean (t-based; older files: mean -+ 1.96 se)
    ci_high: float
    base_loss: float | None = None  # mean unedited loss over the validation set
    per_example: list[float] | None = None  # the effect on every validation example with one
    estimator: str | None = None  # central / screened: [L(2 - alpha) - L(alpha)] / 2; amplify: L(1) - L(alpha)
    p_value: float | None = None  # one-sided t-test, H1 mean > min_delta, on the selecting examples
    p_adjusted: float | None = None  # Benjamini-Hochberg over all candidates
    half_a_mean: float | None = None  # mean effect on the selecting half
    half_b_mean: float | None = None  # ... and on the confirming half
    half_b_p: float | None = None  # the one-sided p on the confirming half
    confirmed: bool | None = None  # half_b_p <= q (absent without replication)
    # estimator "screened": the gradient-attribution t on the selecting half that ranked the candidate, and
    # whether it was among the confirm_top edited (False: untested, no per-example effect, p = 1 in BH)
    screen_t: float | None = None
    edited: bool | None = None

    KINDS = {"metric": "str", "alpha": "num", "n": "int", "mean_delta": "num", "se": "num", "ci_low": "num",
             "ci_high": "num", "base_loss": "num", "per_example": "nums", "estimator": "str", "p_value": "num",
             "p_adjusted": "num", "half_a_mean": "num", "half_b_mean": "num", "half_b_p": "num",
             "confirmed": "bool", "screen_t": "num", "edited": "bool"}

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, obj: Any, where: str = "effect") -> "Effect":
        return cls(**_checked(cls, obj, where, cls.KINDS, ("metric", "alpha", "n", "mean_delta", "se",
                                                            "ci_low", "ci_high")))


@dataclass
class Candidate:
    """One recalled SAE feature: its recall statistics, its causal effect, and what Stage 2 needs.

    Recall statistics are ``None`` for the "no recall" ablation's random candidates
    (only the task side is measured there), ``effect`` when the causal filter is off,
    and ``promoted_tokens`` for candidates that were not validated.
    """

    key: str  # feature_key(layer, feature)
    layer: int
    feature: int
    task_freq: float | None = None  # share of counted task tokens on which it fires
    ref_freq: float | None = None  # the same on the reference set
    task_example_freq: float | None = None  # share of task examples in which it fires at least once
    task_mean_act: float | None = None  # mean activation when active, task
    ref_mean_act: float | None = None
    enrichment: float | None = None  # ln((task_freq + eps) / (ref_freq + eps))
    recall_score: float | None = None  # task_freq * enrichment * task_mean_act / mean active value of the SAE
    recall_rank: int | None = None  # 1 = best
    # recall.method attribution: mean / se of the feature's gradient attribution over the probe set (> 0 = helps)
    attribution_t: float | None = None
    random_candidate: bool = False  # picked at random by the "no recall" ablation
    effect: Effect | None = None
    validated: bool = False  # kept by the causal filter (or every candidate when the filter is off)
    scale: float | None = None  # Stage 2 divides by it: mean activation per counted task token
    promoted_tokens: list[list[Any]] | None = None  # [[token, logit], ...] by the logit lens
    # share of its strongest probe activations (top 50) on template tokens (system prompt, chat template,
    # prompt_template words) rather than the record's own text; ~1 = a template/format detector
    peak_template_share: float | None = None
    peak_tokens: list[list[Any]] | None = None  # [[token, count], ...] at those positions, most frequent first

    KINDS = {"key": "str", "layer": "int", "feature": "int", "task_freq": "num", "ref_freq": "num",
             "task_example_freq": "num", "task_mean_act": "num", "ref_mean_act": "num", "enrichment": "num",
             "attribution_t": "num",
             "recall_score": "num", "recall_rank": "int", "random_candidate": "bool", "effect": "dict",
             "validated": "bool", "scale": "num", "promoted_tokens": "tokens", "peak_template_share": "num",
             "peak_tokens": "tokens"}

    def to_dict(self) -> dict[str, Any]:
        """The features.json object; ``random_candidate`` is written only when true, as it always was."""
        return _to_dict(self, skip=() if self.random_candidate else ("random_candidate",))

    @classmethod
    def from_dict(cls, obj: Any, where: str = "candidate") -> "Candidate":
        if isinstance(obj, dict) and isinstance(obj.get("key"), str):
            where = f"{where} ({obj['key']})"
        values = _checked(cls, obj, where, cls.KINDS, ("key", "layer", "feature"))
        if values.get("effect") is not None:
            values["effect"] = Effect.from_dict(values["effect"], f"{where}.effect")
        for flag in ("random_candidate", "validated"):
            if values.get(flag) is None:
                values.pop(flag, None)
        return cls(**values)


@dataclass
class SampleInfo:
    """How much of one Stage-1 input (probe, reference or validation set) was used, and from where."""

    n_examples: int
    n_tokens: int | None = None  # counted tokens (probe and reference)
    source: str | None = None  # the resolved data source

    KINDS = {"n_examples": "int", "n_tokens": "int", "source": "str"}

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, obj: Any, where: str) -> "SampleInfo":
        return cls(**_checked(cls, obj, where, cls.KINDS, ("n_examples",)))


@dataclass
class FeatureInfo:
    """What Stage 1 ran on and with which settings (the top-level fields of features.json)."""

    model: str | None = None
    saes: list[dict[str, Any]] | None = None  # SAE.describe() of each SAE
    layers: list[int] | None = None
    probe: SampleInfo | None = None
    reference: SampleInfo | None = None
    validation: SampleInfo | None = None
    recall: dict[str, Any] | None = None  # the RecallConfig used
    filter: dict[str, Any] | None = None  # the FilterConfig used
    cache_key: str | None = None  # the pipeline's key over model, SAEs, data and config
    seconds: float | None = None
    task_source: str | None = None
    reference_source: str | None = None
    rejects: list[dict[str, Any]] | None = None  # task/validation/reference records skipped under --skip-bad
    filter_outcome: str | None = None  # what the causal filter kept, in words (absent in older files)

    KINDS = {"model": "str", "saes": "dicts", "layers": "ints", "probe": "dict", "reference": "dict",
             "validation": "dict", "recall": "dict", "filter": "dict", "cache_key": "str", "seconds": "num",
             "task_source": "str", "reference_source": "str", "rejects": "dicts", "filter_outcome": "str"}
    SAMPLES = ("probe", "reference", "validation")

    def to_dict(self) -> dict[str, Any]:
        return _to_dict(self)

    @classmethod
    def from_dict(cls, obj: Any, where: str) -> "FeatureInfo":
        values = _checked(cls, obj, where, cls.KINDS, ())
        for name in cls.SAMPLES:
            if values.get(name) is not None:
                values[name] = SampleInfo.from_dict(values[name], f"{where}: {name}")
        return cls(**values)


_LISTS = ("candidates", "validated", "warnings")


@dataclass
class FeatureSet:
    """The result of Stage 1: candidates with statistics, and the keys of the validated features."""

    candidates: list[Candidate]
    validated: list[str]
    info: FeatureInfo = field(default_factory=FeatureInfo)
    warnings: list[str] = field(default_factory=list)

    @property
    def validated_features(self) -> list[Candidate]:
        by_key = {c.key: c for c in self.candidates}
        return [by_key[k] for k in self.validated]

    def to_dict(self) -> dict[str, Any]:
        """The features.json object: the info fields, then candidates, validated and warnings."""
        return {**self.info.to_dict(), "candidates": [c.to_dict() for c in self.candidates],
                "validated": self.validated, "warnings": self.warnings}

    @classmethod
    def from_dict(cls, data: Any, source: str = "features.json") -> "FeatureSet":
        """Parse a features.json object; ``ValueError`` naming ``source``, entry and field when it is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object at the top level, got {type(data).__name__}")
        for key in ("candidates", "validated"):
            if key not in data:
                raise ValueError(f"{source}: not a features.json (missing {key!r})")
        for key in _LISTS:
            ok = _KINDS["dicts" if key == "candidates" else "strs"][0]
            if key in data and not ok(data[key]):
                like = "a list of objects" if key == "candidates" else "a list of strings"
                raise ValueError(f"{source}: field {key!r}: expected {like}")
        candidates = [Candidate.from_dict(c, f"{source}: candidates[{i}]") for i, c in enumerate(data["candidates"])]
        keys = {c.key for c in candidates}
        unknown = [k for k in data["validated"] if k not in keys]
        if unknown:
            raise ValueError(f"{source}: field 'validated': {unknown[:3]} not among the candidates")
        info = FeatureInfo.from_dict({k: v for k, v in data.items() if k not in _LISTS}, source)
        return cls(candidates, list(data["validated"]), info, list(data.get("warnings") or []))

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "FeatureSet":
        """Read a features.json; one-line ``ValueError`` naming the file (and line or field) when it is bad."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: malformed JSON: {e.msg} (column {e.colno})") from None
        return cls.from_dict(data, str(path))
