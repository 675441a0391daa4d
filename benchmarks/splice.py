"""Put a benchmark's generated table into BENCHMARKS.md, between its markers.

``<!-- begin: NAME -->`` ... ``<!-- end: NAME -->``: the block is replaced in place, so the
command listed beside a table regenerates that table and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from igds.artifacts import atomic_write_text

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def splice(name: str, text: str, path: Path = BENCHMARKS_MD) -> bool:
    """Replace the ``name`` block of ``path``; False (and nothing written) when it has no such block."""
    if not path.exists():
        return False
    doc = path.read_text(encoding="utf-8")
    pattern = re.compile(rf"(<!-- begin: {re.escape(name)} -->\n).*?(<!-- end: {re.escape(name)} -->)", re.S)
    if not pattern.search(doc):
        return False
    atomic_write_text(path, pattern.sub(lambda m: m.group(1) + text.rstrip("\n") + "\n" + m.group(2), doc, count=1))
    return True
