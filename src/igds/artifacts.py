"""Run-directory plumbing: atomic writes, content hashes, cache keys, the run lock and log.

Every artifact igds writes goes through :func:`atomic_write` so that a killed
process leaves either the old file or the new one, never half of one.
:func:`run_directory` guards a run directory while a command writes into it, and
:class:`RunInfo` is what ``run.json`` holds.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import os
import struct
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

MARKER = ".igds-run"  # written into every run directory igds creates
LOCK = ".igds.lock"
LOG = "igds.log"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes owner-only files, and some writers (safetensors) recreate the file
        # owner-only too: set the usual umask-derived mode once the content is written
        os.chmod(tmp_path, 0o666 & ~_umask())
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; on success it replaces ``path`` (whose old
    content is removed) with the usual umask-derived modes (``mkdtemp`` makes it owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        umask = _umask()
        for sub in [tmp, *tmp.rglob("*")]:
            os.chmod(sub, (0o777 if sub.is_dir() else 0o666) & ~umask)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def json_default(obj: Any) -> Any:
    """JSON for the non-JSON values a Parquet or HF dataset row can hold.

    Timestamps, dates and times become ISO 8601 strings, durations seconds (a number),
    bytes base64 (standard alphabet, padded), decimals their exact decimal string, and
    numpy scalars / arrays their Python values."""
    if isinstance(obj, (dt.datetime, dt.date, dt.time)):
        return obj.isoformat()
    if isinstance(obj, dt.timedelta):
        return obj.total_seconds()
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, Decimal):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON")


def atomic_write_jsonl(path: str | os.PathLike, rows: Any) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=json_default) + "\n")
            n += 1
    return n


def atomic_write_parquet(path: str | os.PathLike, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        # Fixed writer options so that equal tables give byte-identical files.
        pq.write_table(table, tmp, compression="zstd", write_statistics=False, store_schema=True)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short hash of a JSON-serialisable object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def _file_identity(path: Path) -> dict[str, Any]:
    st = path.stat()
    entry: dict[str, Any] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if path.suffix == ".safetensors" and st.st_size >= 8:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            entry["header"] = hashlib.sha256(f.read(min(n, st.st_size - 8))).hexdigest()[:16]
    elif path.suffix == ".json" and st.st_size <= 1 << 20:
        entry["sha"] = sha256_file(path)[:16]  # configs and a `datasets` folder's state (its fingerprint)
    return entry


def fingerprint(path: str | os.PathLike) -> str:
    """A cheap identity of a file's or folder's content, for cache keys.

    A Hugging Face hub snapshot (``.../snapshots/<commit>/...``) is its commit hash. Anything
    else: per file (every non-hidden file of a folder, by relative path) its size and
    ``mtime_ns``, which change when a file is replaced in place, plus a hash of the header
    of a ``.safetensors`` file (names, shapes, dtypes) and of a small ``.json`` file (model
    configs, a saved ``datasets`` folder's ``state.json`` with its fingerprint). Headers
    rather than weights keep this milliseconds for multi-GB files."""
    path = Path(path).expanduser().absolute()
    parts = path.parts
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if 0 < i < len(parts) - 1 and parts[i - 1].startswith(("models--", "datasets--")):
            return f"hf-commit:{parts[i + 1]}"
    if path.is_file():
        return stable_hash(_file_identity(path))
    return stable_hash({str(p.relative_to(path)): _file_identity(p) for p in visible_files(path)})


def visible_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` outside hidden files and folders, sorted: what a folder's identity hashes."""
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


@contextmanager
def run_directory(path: str | os.PathLike, adopt: bool = False) -> Iterator[Path]:
    """Hold ``path`` as this process's run directory for the duration.

    Creates it (with the :data:`MARKER` file) or refuses a non-empty folder igds did not
    create, unless ``adopt`` (a caller that made the folder itself). Takes the run lock, so a
    second run into the same directory fails at once with one line instead of interleaving,
    and logs the ``igds`` loggers and Python warnings into ``RUN_DIR/igds.log``."""
    run_dir = Path(path)
    if run_dir.is_dir() and not (run_dir / MARKER).exists() and not adopt and any(run_dir.iterdir()):
        raise ValueError(f"{run_dir}: not empty and not an igds run directory (no {MARKER}); "
                              f"give --out a new or empty folder (or create {run_dir / MARKER} to reuse this one)")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / MARKER).touch()
    lock = FileLock(str(run_dir / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RuntimeError(f"{run_dir}: another igds command is writing into this run directory "
                           f"(lock {run_dir / LOCK}); wait for it to finish or give another --out") from None
    handler = logging.FileHandler(run_dir / LOG, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger("igds"), logging.getLogger("py.warnings")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    logging.captureWarnings(True)
    try:
        yield run_dir
    finally:
        logging.captureWarnings(False)
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)
        handler.close()
        lock.release()


@dataclass
class RunInfo:
    """What ``RUN_DIR/run.json`` holds: how, where and how long this run ran, and its counts."""

    versions: dict[str, str]  # igds, torch, transformers, python
    timings_s: dict[str, float]  # stage -> seconds
    wall_s: float
    model: str
    device: str
    dtype: str
    n_validated: int  # validated features (Stage 1)
    n_selected: int
    pool_size: int  # rows scored (Stage 2, this run's own summary)
    n_truncated: int
    n_rejected: int  # pool records skipped under --skip-bad
    max_length: int
    started_at: str = ""  # ISO 8601, local time
    rejects: dict[str, int] = field(default_factory=dict)  # section -> records skipped (rejects.jsonl)
    # Spearman rho of the pool's scores with their counted tokens (n_tokens, under score.positions);
    # near -1 the score ranks by inverse length (a template feature), not content. None: undefined
    score_length_spearman: float | None = None

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunInfo":
        data = read_json(path)
        later = ("started_at", "rejects", "score_length_spearman")  # fields that older run.json files lack
        missing = [f.name for f in fields(cls) if f.name not in data and f.name not in later]
        if missing:
            raise ValueError(f"{path}: not a run.json (missing {missing})")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
