"""The machinery behind :mod:`igds.config`: field metadata, checking, loading, cache views.

Kept apart from the config tree so that ``config.py`` reads as the list of knobs.
Nothing here knows a particular section: every rule comes from a dataclass's
annotations (types, ``Literal`` choices), its field metadata (:func:`knob`) and its
optional ``problems()`` method (rules that span fields).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import io
import tokenize
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A bad config value; ``str(e)`` is one line naming the file (or ``command line``) and the key."""


def knob(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, cache: bool = True,
         path: str | None = None, late: bool = False, **bounds: float) -> Any:
    """A field with metadata: ``cache=False`` (does not change results), ``path`` ("data",
    "model", "sae": local files must exist), ``late=True`` (added after results were archived:
    in cache keys only when set away from its default, so those results stay valid),
    ``ge``/``gt``/``le``/``lt`` bounds."""
    meta = {"cache": cache, "path": path, "late": late, **bounds}
    return field(default=default, default_factory=factory, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (an annotation); ValueError says what was expected."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(" or ".join(errors))
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if isinstance(value, str) and args and args[0] in (int, float) and "," in value:
            value = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
        items = value if isinstance(value, (list, tuple)) else [value]
        return [coerce(v, args[0]) for v in items] if args else list(items)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ValueError(f"expected a list of {len(args)} values, got {value!r}")
        return tuple(coerce(v, a) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {value!r}")
        return {k: coerce(v, args[1]) for k, v in value.items()} if args else value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads `1e-3` (no dot in the mantissa) as a string; Python reads it as a number
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # a name or path that YAML read as a number
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value
    raise ValueError(f"expected {_type_name(tp)}, got {value!r}")


BOUNDS = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
          "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}
HUB_PREFIXES = ("hf:", "builtin:")


def _local_path(value: str, kind: str) -> Path | None:
    """The local file ``value`` names, or None when it names something else (a hub id, a built-in)."""
    if kind in ("data", "source"):
        value = value.partition("::")[0] if kind == "source" else value
        return None if value.startswith(HUB_PREFIXES) else Path(value).expanduser()
    # model and SAE names: a hub id `org/name` or a built-in name unless it looks like a path
    p = Path(value).expanduser()
    looks_local = (value.startswith(("/", ".", "~")) or p.suffix in (".gguf", ".safetensors", ".pt", ".json")
                   or (len(p.parts) > 1 and Path(p.parts[0]).exists()))
    return p if looks_local else None


def _check_value(value: Any, meta: Any) -> None:
    for name, (ok, sign) in BOUNDS.items():
        bound = meta.get(name)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if bound is not None and v is not None and not ok(v, bound):
                raise ValueError(f"{v!r} is not {sign} {bound}")
    kind = meta.get("path")
    if kind and value is not None:
        for v in value if isinstance(value, list) else [value]:
            p = _local_path(v, kind)
            if p is not None and not p.exists():
                raise ValueError(f"{v!r} does not exist (a local path; check the spelling)")


def check(cfg: Any, origins: dict[str, str] | None = None, prefix: str = "", rules: bool = True) -> None:
    """Check (and coerce) every value of ``cfg`` against its annotation and metadata, then (with
    ``rules``) each section's ``problems()``; the first bad one raises :class:`ConfigError`."""
    origins = origins or {}

    def fail(key: str, msg: str) -> None:
        parts = key.split(".")
        where = next((origins[".".join(parts[:i])] for i in range(len(parts), 0, -1)
                      if ".".join(parts[:i]) in origins), "config")
        raise ConfigError(f"{where}: {key}: {msg}")

    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        key, value = prefix + f.name, getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check(value, origins, key + ".", rules)
            continue
        try:
            value = coerce(value, hints[f.name])
            _check_value(value, f.metadata)
        except ValueError as e:
            fail(key, str(e))
        object.__setattr__(cfg, f.name, value)
    for sub, msg in getattr(cfg, "problems", lambda: ())() if rules else ():
        fail(prefix + sub, msg)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_type(cls: type, name: str) -> Any:
    return _hints(cls)[name]


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """Each field's comment in this file (on its line, or the comment lines just above it)."""
    lines = inspect.getsource(cls).splitlines()
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    above: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        name = stripped.split(":", 1)[0]
        if name in names and ":" in stripped:
            toks = [t for t in tokenize.generate_tokens(io.StringIO(stripped + "\n").readline)
                    if t.type == tokenize.COMMENT]
            out[name] = " ".join(above + ([toks[-1].string.lstrip("# ")] if toks else []))
        above = []
    return out


def cache_view(section: Any) -> dict[str, Any]:
    """``section`` as a dict of the knobs that change results (fields without ``cache=False``;
    a ``late`` knob only when it is set away from its default)."""
    return {f.name: cache_view(v) if dataclasses.is_dataclass(v := getattr(section, f.name)) else v
            for f in dataclasses.fields(section) if f.metadata.get("cache", True) and not _late_default(section, f)}


def key_view(section: Any) -> dict[str, Any]:
    """``dataclasses.asdict(section)`` without the ``late`` knobs left at their default: the
    form older cache keys hashed, which a knob added since must not change."""
    return {f.name: key_view(v) if dataclasses.is_dataclass(v := getattr(section, f.name)) else copy.deepcopy(v)
            for f in dataclasses.fields(section) if not _late_default(section, f)}


def _late_default(section: Any, f: dataclasses.Field) -> bool:
    if not f.metadata.get("late"):
        return False
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
    return getattr(section, f.name) == default


# ====================================================================== loading
def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _apply(obj: Any, values: dict[str, Any], where: str, origin: str, origins: dict[str, str]) -> None:
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        key = str(key).replace("-", "_")
        key = getattr(obj, "RENAMED", {}).get(key, key)  # older files keep loading
        if key not in names:
            moved = getattr(obj, "MOVED", {}).get(key)
            hint = f"it is now {moved!r}" if moved else f"known: {sorted(names)}"
            raise ConfigError(f"{origin}: unknown config key '{where}{key}'; {hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: {where}{key} is a section; give a mapping")
            _apply(current, value, f"{where}{key}.", origin, origins)
        else:
            setattr(obj, key, value)
            origins[f"{where}{key}"] = origin


def set_key(cfg: Any, dotted: str, value: Any, origin: str = "command line",
            origins: dict[str, str] | None = None) -> None:
    """Set ``section.key`` on a config tree (ConfigError on unknown keys)."""
    *parents, last = dotted.replace("-", "_").split(".")
    obj = cfg
    for i, p in enumerate(parents):
        p = parents[i] = getattr(obj, "RENAMED", {}).get(p, p)
        if not hasattr(obj, p) or not dataclasses.is_dataclass(getattr(obj, p)):
            raise ConfigError(f"{origin}: unknown config section {'.'.join(parents[: i + 1])!r}")
        obj = getattr(obj, p)
    _apply(obj, {last: value}, ".".join(parents) + "." if parents else "", origin,
           {} if origins is None else origins)


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"command line: override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        return key.strip(), raw  # not YAML: the string itself (check() says if it is wrong)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's mapping; ConfigError (one line) when it is missing or not a YAML mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: config file not found" + (" (it is a folder)" if p.is_dir() else ""))
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a YAML mapping")
    return data


def load(cls: type, path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
         rules: bool = True) -> Any:
    """Defaults <- YAML file <- overrides, then :func:`check`: a bad value fails here, before any work.
    ``rules=False`` skips the cross-field rules (what ``igds config show`` prints may be incomplete)."""
    data = read_yaml(path) if path is not None else None
    items = list(overrides.items()) if isinstance(overrides, dict) else [parse_override(o) for o in overrides or []]
    cfg, origins = _layered(cls, path, data, items, [])
    # a preset named in the file or the flags goes under both: load again with it first
    layers = cfg.preset_layers() if hasattr(cfg, "preset_layers") else []
    if layers:
        cfg, origins = _layered(cls, path, data, items, layers)
    check(cfg, origins, rules=rules)
    return cfg


def _layered(cls: type, path: Any, data: Any, items: list[tuple[str, Any]], presets: list[tuple[str, str, dict[str, Any]]]
             ) -> tuple[Any, dict[str, str]]:
    """Defaults <- presets ``(name, key prefix, {dotted key: value})`` <- YAML data <- overrides."""
    cfg = cls()
    origins: dict[str, str] = {}
    for name, prefix, values in presets:
        for key, value in values.items():
            set_key(cfg, prefix + key, value, f"preset {name!r}", origins)
    if data is not None:
        _apply(cfg, data, "", str(path), origins)
    for key, value in items:
        set_key(cfg, key, value, "command line", origins)
    return cfg, origins


def dump_config(cfg: Any) -> str:
    data = to_dict(cfg)
    return yaml.safe_dump(_plain(data), sort_keys=False, allow_unicode=True)


def _plain(value: Any) -> Any:
    """Tuples as lists, so the YAML reads back with safe_load."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
