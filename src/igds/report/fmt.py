"""HTML building blocks shared by the report's sections: escaping, number cells, "Not available" notes."""

from __future__ import annotations

import html
import math
from typing import Any, Iterable

from .load import is_num


def esc(x: Any) -> str:
    """``x`` as text, escaped for HTML content and attribute values."""
    return html.escape(str(x), quote=True)


def fmt(x: Any, spec: str = ".3g") -> str:
    """A number formatted with ``spec``, '—' for missing or non-finite, other values escaped."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if is_num(x):
        return format(x, spec)
    return esc(x)


def td(x: Any, spec: str = ".3g", cls: str = "num") -> str:
    """A table cell whose sort key is the raw number (so '—' and formats sort right)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return '<td class="num" data-v="">—</td>'
    if is_num(x):
        return f'<td class="{cls}" data-v="{float(x)!r}">{format(x, spec)}</td>'
    return f"<td>{esc(x)}</td>"


def na(what: str) -> str:
    """The note a section shows in place of what its inputs cannot give; ``what`` is HTML."""
    return f'<p class="na"><span>Not available</span> {what}</p>'


def first_value(obj: Any, names: Iterable[str]) -> Any:
    """First value under any of ``names`` in a nested mapping (depth first), else None."""
    names = tuple(names)
    if isinstance(obj, dict):
        for n in names:
            if n in obj and obj[n] is not None:
                return obj[n]
        for v in obj.values():
            found = first_value(v, names)
            if found is not None:
                return found
    return None
