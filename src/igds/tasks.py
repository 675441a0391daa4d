"""Task definitions: how a record becomes (prompt, reference), and how it is scored.

A :class:`Task` names a :class:`igds.data.DataSpec` (prompt template + reference
field), its metric names (the first is the headline metric), a generation cap and
where the gold answer for ``exact_match`` lives. :meth:`Task.load` reads a data file
through :func:`igds.data.iter_examples` with that spec, so the same
:class:`~igds.data.Example` objects feed feature discovery, fine-tuning and
evaluation.

Built-in tasks (templates and caps are ours; the paper does not publish them):

* ``math`` - GSM8K (``question``, ``answer``). Prompt: the question plus an instruction
  to end with ``#### <number>``. Reference (the fine-tuning target): the solution with
  its ``<<expr=value>>`` calculator annotations removed, then ``\\n#### N`` with ``,``
  and ``$`` removed from N. It is derived from ``answer`` so the original GSM8K files
  work too. Gold: ``final_answer`` when present, else the ``#### N`` line of
  ``answer``. Metric ``exact_match``; 256 new tokens.
* ``summarization`` - DialogSum (``dialogue`` -> ``summary``). Test rows list three
  references in ``summaries``; all of them count (ROUGE is the max over references).
  Metrics ``rougeL`` (headline), ``rouge1``, ``rouge2``; 128 new tokens.
* ``translation`` - ``source`` -> ``target``, languages from each record's
  ``src_lang``/``tgt_lang`` (or ``lang_pair`` such as ``de-en``), named in ALMA's
  prompt "Translate this from German to English:\\nGerman: ...\\nEnglish:". Metrics
  ``bleu`` (headline), ``chrf``; 256 new tokens.

A user task is a mapping (inline or a YAML/JSON file)::

    name: qa
    prompt_template: "Answer briefly.\\n\\n{question}"   # or prompt_field: question
    response_field: answer           # alias: reference_field
    references_field: answers        # optional: a list of references per record
    metric: exact_match              # or metrics: [rougeL, rouge1]
    gold_field: answer               # optional: exact_match gold (default: the reference)
    max_new_tokens: 64
    system_prompt: null

``base: math`` (or a built-in ``name`` with no template) starts from a built-in task
and overrides the keys given, e.g. ``{name: math, max_new_tokens: 128}``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .content import Span, render_template
from .data import DataError, DataSpec, Example, Rejects, iter_examples
from .metrics import METRICS

RecordFn = Callable[[dict[str, Any], str, int], Any]  # (record, source, line) -> value


@dataclass
class Task:
    """One evaluation / training task. ``metrics[0]`` is the headline metric."""

    name: str
    spec: DataSpec
    metrics: tuple[str, ...]
    max_new_tokens: int = 256
    gold_field: str | None = None  # exact_match gold; default: the built-in rule or the reference
    references_field: str | None = None  # a list-of-strings field with several references
    description: str = ""
    # Built-ins whose prompt or reference is not a plain template of record fields
    # (translation's language names, GSM8K's cleaned solution). The spec still checks
    # that the fields exist; these then render the final text from the record.
    prompt_fn: RecordFn | None = field(default=None, repr=False, compare=False)
    response_fn: RecordFn | None = field(default=None, repr=False, compare=False)
    gold_fn: Callable[[dict[str, Any]], Any] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.metrics, str):
            self.metrics = (self.metrics,)
        self.metrics = tuple(self.metrics)
        if not self.metrics:
            raise ValueError(f"task {self.name!r}: give at least one metric")
        bad = [m for m in self.metrics if m not in METRICS]
        if bad:
            raise ValueError(f"task {self.name!r}: unknown metric(s) {bad}; known: {list(METRICS)}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"task {self.name!r}: max_new_tokens must be a positive integer")

    @property
    def metric(self) -> str:
        """The headline metric."""
        return self.metrics[0]

    # ---- examples
    def examples(self, source: str | Path, *, split: str | None = None, skip_bad: bool = False,
                 rejects: Rejects | None = None, require_response: bool = True) -> Iterator[Example]:
        """Stream the examples of ``source`` in this task's format (see :func:`igds.data.iter_examples`)."""
        for ex in iter_examples(source, self.spec, split=split, skip_bad=skip_bad, rejects=rejects,
                                require_response=require_response):
            try:
                yield self._render(ex)
            except DataError as err:
                if not skip_bad:
                    raise
                if rejects is not None:
                    rejects.add(err, ex.record)

    def load(self, source: str | Path, limit: int | None = None, **kw: Any) -> list[Example]:
        """The first ``limit`` examples of ``source`` as a list."""
        out: list[Example] = []
        for ex in self.examples(source, **kw):
            out.append(ex)
            if limit is not None and len(out) >= limit:
                break
        if not out:
            raise DataError(str(source), None, f"no usable examples for task {self.name!r}")
        return out

    def _render(self, ex: Example) -> Example:
        if self.prompt_fn is None and self.response_fn is None:
            return ex
        messages, response = ex.messages, ex.response
        spans = ex.content_spans
        if self.prompt_fn is not None:
            # a prompt_fn returns the prompt, or (prompt, the spans of the record's own text in it)
            rendered = self.prompt_fn(ex.record, ex.source, ex.line)
            prompt, own = rendered if isinstance(rendered, tuple) else (rendered, None)
            messages = [m for m in ex.messages if m["role"] == "system"] + [{"role": "user", "content": prompt}]
            spans = {m["content"]: v for m, v in ((m, spans.get(m["content"])) for m in messages) if v is not None}
            if own is not None:
                spans[prompt] = list(own)
        if self.response_fn is not None:
            response = self.response_fn(ex.record, ex.source, ex.line)
        return dataclasses.replace(ex, messages=messages, response=response, content_spans=spans)

    # ---- what the metric compares against
    def references(self, ex: Example) -> list[str]:
        """All references of ``ex``: ``references_field`` when the record has it, else the response."""
        if self.references_field:
            refs = ex.record.get(self.references_field)
            if isinstance(refs, list) and refs and all(isinstance(r, str) for r in refs):
                return list(refs)
        return [ex.response]

    def gold(self, ex: Example) -> Any:
        """The gold answer for ``exact_match`` (None when the task has no such metric)."""
        if "exact_match" not in self.metrics:
            return None
        if self.gold_field is not None and ex.record.get(self.gold_field) is not None:
            return ex.record[self.gold_field]
        if self.gold_fn is not None:
            return self.gold_fn(ex.record)
        return ex.response

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (built-in render functions are named, not serialised)."""
        return {"name": self.name, "metrics": list(self.metrics), "max_new_tokens": self.max_new_tokens,
                "gold_field": self.gold_field, "references_field": self.references_field,
                "spec": dataclasses.asdict(self.spec), "description": self.description,
                "prompt_fn": getattr(self.prompt_fn, "__name__", None),
                "response_fn": getattr(self.response_fn, "__name__", None)}


# ====================================================================== math (GSM8K)
MATH_TEMPLATE = ("{question}\n\nSolve the problem step by step. "
                 "End your answer with a final line of the form \"#### <number>\".")
_CALC = re.compile(r"<<[^<>]*>>")


def _clean_number(text: str) -> str:
    return text.strip().replace(",", "").replace("$", "").rstrip(".").strip()


def gsm8k_solution(answer: str) -> tuple[str, str]:
    """(rationale without calculator annotations, final answer) of a GSM8K ``answer``."""
    head, sep, tail = answer.rpartition("####")
    if not sep:
        raise ValueError("no '#### N' line")
    final = _clean_number(tail)
    if not final:
        raise ValueError("empty answer after '####'")
    return _CALC.sub("", head).strip(), final


def gsm8k_reference(record: dict[str, Any], src: str, line: int) -> str:
    """The training / reference response: rationale without ``<<...>>`` + ``\\n#### N``."""
    try:
        rationale, final = gsm8k_solution(record["answer"])
    except ValueError as e:
        raise DataError(src, line, str(e), "answer") from None
    return f"{rationale}\n#### {final}" if rationale else f"#### {final}"


def gsm8k_gold(record: dict[str, Any]) -> str | None:
    if record.get("final_answer") not in (None, ""):
        return str(record["final_answer"])
    try:
        return gsm8k_solution(str(record.get("answer", "")))[1]
    except ValueError:
        return None


# ====================================================================== translation
LANGUAGES = {
    "en": "English", "de": "German", "zh": "Chinese", "cs": "Czech", "ru": "Russian", "is": "Icelandic",
    "ja": "Japanese", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese", "nl": "Dutch",
    "pl": "Polish", "uk": "Ukrainian", "ko": "Korean", "ar": "Arabic", "hi": "Hindi", "tr": "Turkish",
    "sv": "Swedish", "fi": "Finnish", "et": "Estonian", "ro": "Romanian", "ha": "Hausa", "hr": "Croatian",
}
TRANSLATION_TEMPLATE = "Translate this from {src} to {tgt}:\n{src}: {source}\n{tgt}:"


def _languages(record: dict[str, Any], src: str, line: int) -> tuple[str, str]:
    s, t = record.get("src_lang"), record.get("tgt_lang")
    if not (s and t) and isinstance(record.get("lang_pair"), str) and "-" in record["lang_pair"]:
        s, t = record["lang_pair"].split("-", 1)
    if not s:
        raise DataError(src, line, "missing (needed for the language names; or give lang_pair like 'de-en')",
                        "src_lang")
    if not t:
        raise DataError(src, line, "missing (or give lang_pair like 'de-en')", "tgt_lang")
    return LANGUAGES.get(str(s).lower(), str(s)), LANGUAGES.get(str(t).lower(), str(t))


def translation_prompt(record: dict[str, Any], src: str, line: int) -> tuple[str, list[Span]]:
    """The prompt and the span of the source sentence in it (the language names are template words)."""
    s, t = _languages(record, src, line)
    names = {"src": s.replace("{", "{{").replace("}", "}}"), "tgt": t.replace("{", "{{").replace("}", "}}")}
    template = TRANSLATION_TEMPLATE.replace("{src}", names["src"]).replace("{tgt}", names["tgt"])
    return render_template(template, {"source": record["source"]})


# ====================================================================== registry
def _builtins() -> dict[str, Task]:
    return {
        "math": Task(
            name="math",
            spec=DataSpec(dialect="fields", prompt_template=MATH_TEMPLATE, response_field="answer"),
            metrics=("exact_match",), max_new_tokens=256,
            description="GSM8K-style word problems; exact match of the final number",
            response_fn=gsm8k_reference, gold_fn=gsm8k_gold),
        "summarization": Task(
            name="summarization",
            spec=DataSpec(dialect="fields", prompt_template="Summarize the following dialogue.\n\n{dialogue}",
                          response_field="summary"),
            metrics=("rougeL", "rouge1", "rouge2"), max_new_tokens=128, references_field="summaries",
            description="DialogSum dialogue summarisation; ROUGE F1, max over references"),
        "translation": Task(
            name="translation",
            spec=DataSpec(dialect="fields", prompt_field="source", response_field="target"),
            metrics=("bleu", "chrf"), max_new_tokens=256,
            description="sentence translation; corpus BLEU and chrF (sacrebleu)",
            prompt_fn=translation_prompt),
    }


BUILTIN_TASKS = ("math", "summarization", "translation")
_SPEC_KEYS = {"prompt_template", "prompt_field", "response_field", "reference_field", "system_prompt",
              "id_field", "dialect"}
_TASK_KEYS = {"name", "base", "metric", "metrics", "max_new_tokens", "gold_field", "references_field",
              "description"}


def task_from_dict(d: Mapping[str, Any], where: str = "task") -> Task:
    """Build a task from a mapping (see the module docstring for the keys)."""
    d = dict(d)
    unknown = set(d) - _SPEC_KEYS - _TASK_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_SPEC_KEYS | _TASK_KEYS)}")
    if "response_field" in d and "reference_field" in d:
        raise ValueError(f"{where}: give response_field or reference_field, not both")
    if "reference_field" in d:
        d["response_field"] = d.pop("reference_field")
    if "metric" in d and "metrics" in d:
        raise ValueError(f"{where}: give metric or metrics, not both")
    if "metric" in d:
        d["metrics"] = d.pop("metric")
    base_name = d.pop("base", None)
    defines_prompt = "prompt_template" in d or "prompt_field" in d
    if base_name is None and d.get("name") in BUILTIN_TASKS and not defines_prompt:
        base_name = d["name"]
    spec_kw = {k: d.pop(k) for k in list(d) if k in _SPEC_KEYS}
    if base_name is not None:
        builtins = _builtins()
        if base_name not in builtins:
            raise ValueError(f"{where}: field 'base': unknown built-in task {base_name!r}; known: {BUILTIN_TASKS}")
        base = builtins[base_name]
        if defines_prompt:  # a new template replaces the built-in's prompt entirely
            spec_kw.setdefault("prompt_template", None)
            spec_kw.setdefault("prompt_field", None)
        spec = dataclasses.replace(base.spec, **spec_kw)
        over: dict[str, Any] = {k: v for k, v in d.items() if k in _TASK_KEYS}
        if defines_prompt:
            over["prompt_fn"] = None
        if "response_field" in spec_kw:
            over["response_fn"] = None
        try:
            return dataclasses.replace(base, spec=spec, **over)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None
    if "name" not in d:
        raise ValueError(f"{where}: field 'name': required")
    if not defines_prompt:
        raise ValueError(f"{where}: give prompt_template or prompt_field (or base: one of {BUILTIN_TASKS})")
    if "response_field" not in spec_kw:
        raise ValueError(f"{where}: field 'response_field': required (the reference answer's field)")
    if "metrics" not in d:
        raise ValueError(f"{where}: field 'metric': required")
    spec_kw.setdefault("dialect", "fields")
    try:
        return Task(spec=DataSpec(**spec_kw), **d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def get_task(spec: str | Path | Mapping[str, Any] | Task) -> Task:
    """A task from a built-in name, a mapping, a YAML/JSON file path, or a Task (returned as is)."""
    if isinstance(spec, Task):
        return spec
    if isinstance(spec, Mapping):
        return task_from_dict(spec)
    name = str(spec)
    builtins = _builtins()
    if name in builtins:
        return builtins[name]
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml", ".json") and path.exists():
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: expected a mapping that defines a task")
        return task_from_dict(data, where=str(path))
    raise ValueError(f"unknown task {name!r}: use one of {BUILTIN_TASKS}, a mapping, or a YAML/JSON file")
