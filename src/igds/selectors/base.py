"""The selector protocol, its context and the registry.

A selector turns a pool into a score table (:func:`igds.selection.make_score_table`:
``index``, ``id``, ``score``, ``n_tokens`` in pool order, method columns, ``igds``
metadata); a higher score is selected first. Everything a selector may need beyond the
pool travels in one typed :class:`SelectionContext`, so every selector is called the
same way: ``get_selector(name).score(pool, ctx)``, or :func:`run_selector`, which also
checks what the selector needs and what it returns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Sequence, TypeVar

import pyarrow as pa

from ..data import Example
from ..model import LoadedModel
from ..sae import SAE

NEEDS = ("model", "task", "sae")  # what a selector can require from its context
SCORE_COLUMNS = ("index", "id", "score", "n_tokens")


@dataclass
class SelectionContext:
    """What a selector may use besides the pool.

    ``options`` are the keyword options of the one selector being run (each selector
    names the ones it accepts; an unknown key is an error). ``shared`` may be handed to
    several contexts so that selectors reuse each other's work (``embed`` and ``mona``
    share one forward pass through it)."""

    model: LoadedModel | None = None  # the loaded base model, or None for model-free selectors
    task: Sequence[Example] = ()  # the task examples (the target of the targeting selectors)
    sae: SAE | None = None  # the SAE at the layer the SAE-based selectors read
    seed: int = 0
    max_length: int = 1024  # tokens per example (longer ones are truncated); the one default
    use_chat_template: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    progress: bool = False
    shared: dict[Any, Any] = field(default_factory=dict)


class Selector(ABC):
    """One way to score a pool. Subclasses implement :meth:`score` and set ``needs``."""

    name: ClassVar[str] = ""  # set by :func:`register`
    needs: ClassVar[tuple[str, ...]] = ()  # subset of NEEDS that must be in the context

    @abstractmethod
    def score(self, pool: Sequence[Example], ctx: SelectionContext) -> pa.Table:
        """The score table of ``pool`` (pool order, higher = selected first)."""

    def options(self, ctx: SelectionContext, **defaults: Any) -> dict[str, Any]:
        """``defaults`` updated by ``ctx.options``; an option this selector does not know is an error."""
        unknown = sorted(set(ctx.options) - set(defaults))
        if unknown:
            raise ValueError(f"selector {self.name!r}: unknown option(s) {unknown}; "
                             f"it accepts {sorted(defaults) or 'none'}")
        return {**defaults, **ctx.options}

    def model(self, ctx: SelectionContext) -> LoadedModel:
        """The context's model; a clear error when there is none."""
        check_context(self, ctx)
        if ctx.model is None:
            raise ValueError(f"selector {self.name!r} needs a model in its context (SelectionContext.model)")
        return ctx.model


SELECTORS: dict[str, Selector] = {}
S = TypeVar("S", bound=type[Selector])


def register(name: str) -> Callable[[S], S]:
    """Class decorator: add one instance of the class to :data:`SELECTORS` under ``name``."""
    def add(cls: S) -> S:
        if name in SELECTORS:
            raise ValueError(f"selector {name!r} is registered twice ({type(SELECTORS[name]).__name__}, "
                             f"{cls.__name__})")
        bad = sorted(set(cls.needs) - set(NEEDS))
        if bad:
            raise ValueError(f"selector {name!r}: needs {bad} are not among {NEEDS}")
        cls.name = name
        SELECTORS[name] = cls()
        return cls
    return add


def get_selector(name: str) -> Selector:
    """The registered selector ``name``; a clear error lists the known names."""
    try:
        return SELECTORS[name]
    except KeyError:
        raise KeyError(f"unknown selector {name!r}; known: {', '.join(sorted(SELECTORS))}") from None


def check_context(selector: Selector, ctx: SelectionContext) -> None:
    """Raise one line naming what ``selector`` needs and the context lacks."""
    have = {"model": ctx.model is not None, "task": len(ctx.task) > 0, "sae": ctx.sae is not None}
    missing = [n for n in selector.needs if not have[n]]
    if missing:
        raise ValueError(f"selector {selector.name!r} needs {' and '.join(missing)} in its context "
                         f"(SelectionContext.{', .'.join(missing)})")


def check_table(name: str, table: pa.Table, pool: Sequence[Example]) -> pa.Table:
    """``table`` if it is a score table of ``pool`` in pool order, else a clear error."""
    missing = [c for c in SCORE_COLUMNS if c not in table.column_names]
    if missing:
        raise RuntimeError(f"selector {name!r} returned a table without the columns {missing}")
    if table.column("id").to_pylist() != pool_ids(pool):
        raise RuntimeError(f"selector {name!r}: its table does not list the pool's {len(pool)} examples "
                           f"in pool order ({table.num_rows} rows)")
    return table


def run_selector(name: str, pool: Sequence[Example], ctx: SelectionContext) -> pa.Table:
    """Score ``pool`` with selector ``name``: context checked, output checked."""
    selector = get_selector(name)
    check_context(selector, ctx)
    return check_table(name, selector.score(pool, ctx), pool)


def pool_ids(pool: Sequence[Any]) -> list[str]:
    """Row ids of a pool of examples (or of plain texts: their positions)."""
    return [e.id if isinstance(e, Example) else str(i) for i, e in enumerate(pool)]


def example_text(item: Example | str) -> str:
    """The text a text-only selector (ZIP, DSIR, BM25) reads: prompt, newline, response."""
    return item.prompt + "\n" + item.response if isinstance(item, Example) else str(item)
