"""Reading records from the files users bring: the file formats below the dialects of :mod:`igds.data`.

JSONL, JSON (a list of records, or a ``{"data": [...]}`` wrapper), CSV (header row; every
value a string), Parquet, a local dataset saved by ``datasets`` or a Hugging Face dataset
id (``hf:NAME[:SPLIT]``). Text files may start with a UTF-8 BOM. Each record comes with
its line (or row) number, and every problem is a :class:`DataError` naming file and line.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterator

import pyarrow.parquet as pq


class DataError(ValueError):
    """Bad input, located by file, line and field."""

    def __init__(self, source: str, line: int | None, message: str, field_name: str | None = None):
        self.source, self.line, self.field_name, self.reason = source, line, field_name, message
        where = f"{source}:{line}" if line is not None else source
        what = f"field {field_name!r}: " if field_name else ""
        super().__init__(f"{where}: {what}{message}")


def _decode(path: Path, raw: bytes, lineno: int | None) -> str:
    """UTF-8 text (a BOM at the start of the file is dropped), or a located DataError."""
    try:
        return raw.decode("utf-8-sig" if lineno in (None, 1) else "utf-8")
    except UnicodeDecodeError as e:
        line = lineno if lineno is not None else raw.count(b"\n", 0, e.start) + 1
        raise DataError(str(path), line, f"not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _json_object(path: Path, lineno: int, raw: bytes) -> dict[str, Any] | None:
    text = _decode(path, raw, lineno)
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(str(path), lineno, f"malformed JSON: {e.msg} (column {e.colno})") from None
    if not isinstance(obj, dict):
        raise DataError(str(path), lineno, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _iter_jsonl(path: Path, after: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
    """Records of a JSONL file, from the line after ``after`` (to go on past a bad line)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno > after and (obj := _json_object(path, lineno, raw)) is not None:
                yield lineno, obj


def _iter_json(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        data = json.loads(_decode(path, path.read_bytes(), None))
    except json.JSONDecodeError as e:
        raise DataError(str(path), e.lineno, f"malformed JSON: {e.msg} (column {e.colno})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} wrappers
    if not isinstance(data, list):
        raise DataError(str(path), None, "expected a JSON list of records")
    for i, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            raise DataError(str(path), i, f"record {i} is a {type(obj).__name__}, not an object")
        yield i, obj


def _iter_csv(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows of a CSV file with a header, numbered by the file line where each row starts."""
    reader = csv.DictReader(io.StringIO(_decode(path, path.read_bytes(), None), newline=""))
    start = 2  # line 1 is the header
    try:
        for row in reader:
            if None in row:
                raise DataError(str(path), start, f"{len(row[None])} more cells than the header has columns")
            yield start, row
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(str(path), reader.line_num, f"malformed CSV: {e}") from None


def _iter_parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
        for rec in batch.to_pylist():
            row += 1
            yield row, rec


def _iter_hf(name: str, split: str | None) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(f"reading {name!r} needs the `datasets` package: pip install igds[hf]") from e
    path = Path(name)
    if path.exists():
        ds = datasets.load_from_disk(str(path))
    else:
        ds = datasets.load_dataset(name, split=split or "train")
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[split or "train"]
    for i, rec in enumerate(ds, start=1):
        yield i, rec


def iter_records(source: str | Path, split: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line or row number, record)`` from any supported source."""
    src = str(source)
    if src.startswith("hf:"):
        name, _, sp = src[3:].partition(":")
        yield from _iter_hf(name, sp or split)
        return
    path = Path(src).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if path.is_dir():
        yield from _iter_hf(str(path), split)
    elif path.suffix in (".jsonl", ".ndjson"):
        yield from _iter_jsonl(path)
    elif path.suffix == ".json":
        yield from _iter_json(path)
    elif path.suffix == ".csv":
        yield from _iter_csv(path)
    elif path.suffix in (".parquet", ".pq"):
        yield from _iter_parquet(path)
    else:
        raise DataError(str(path), None, "unknown file type: expected .jsonl, .json, .csv, .parquet or a dataset folder")


def iter_records_after(source: str | Path, split: str | None, bad_line: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """The records after ``bad_line``, to go on past a bad record; only line-based files can."""
    path = Path(str(source))
    if path.suffix not in (".jsonl", ".ndjson"):
        raise DataError(str(source), bad_line, "cannot skip a bad record in a non-line-based file")
    return _iter_jsonl(path, after=bad_line)
