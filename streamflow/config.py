"""Configuration as dataclasses, loadable from TOML.

Each part owns its config dataclass (a learner's, a trigger line's, a run's);
this module only turns plain TOML tables into them, strictly: an unknown key,
a missing required key or a value of the wrong type is a :class:`ConfigError`
that names the key. A field typed as a union of dataclasses that each carry a
literal ``kind`` (the learner configs) takes the one the table's ``kind`` names.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from streamflow.errors import ConfigError

T = TypeVar("T")

RENAMED_KEYS = {"frame": "coordinates", "model_frame": "model_coordinates", "context_frame": "context_coordinates"}
"""Keys of earlier versions -> their names now: an old key is an error that names the new one."""


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a plain mapping, recursing into nested dataclasses."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    renamed = [key for key in unknown if RENAMED_KEYS.get(key) in fields]
    if renamed:
        raise ConfigError(f"{where or cls.__name__}: key {renamed[0]!r} is now called {RENAMED_KEYS[renamed[0]]!r}")
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key {unknown[0]!r} (known: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = coerce(hints[name], value, f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None
    except ValueError as exc:  # __post_init__ validation
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None


def coerce(hint: Any, value: Any, where: str) -> Any:
    """``value`` (plain TOML data) as type ``hint``, strictly; ``where`` names it in errors."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        kinds = _kinds(args)
        if kinds:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a table, got {type(value).__name__}")
            kind = value.get("kind")
            if kind not in kinds:
                raise ConfigError(f"{where}: kind must be one of {', '.join(map(repr, kinds))}, got {kind!r}")
            return from_dict(kinds[kind], value, where)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(coerce(a, v, where) for a, v in zip(args, value, strict=True))
        item = args[0] if args else Any
        items = [coerce(item, v, where) for v in value]
        return tuple(items) if origin is tuple else items
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Any or hint is typing.Any:
        return value
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected int, got {value!r}")
    return value


def _kinds(union: tuple[Any, ...]) -> dict[str, type]:
    """A union of dataclasses told apart by a ``kind: Literal["name"]`` field: {name: class}; else {}."""
    kinds = {}
    for member in union:
        if member is type(None):
            continue
        hint = typing.get_type_hints(member).get("kind") if dataclasses.is_dataclass(member) else None
        if typing.get_origin(hint) is not typing.Literal or len(typing.get_args(hint)) != 1:
            return {}
        kinds[typing.get_args(hint)[0]] = member
    return kinds


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as plain data; a missing or malformed file is a one-line ConfigError."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_toml(cls: type[T], path: str | Path, table: str | None = None) -> T:
    """Read ``path`` (optionally one ``table`` of it) into dataclass ``cls``."""
    path = Path(path)
    data = read_toml(path)
    if table is not None:
        data = data.get(table, {})
    return from_dict(cls, data, where=f"{path.name}" + (f"[{table}]" if table else ""))


def to_dict(config: Any) -> dict[str, Any]:
    """The plain-data form of a config dataclass (for checkpoints and HDF5 attributes)."""
    return dataclasses.asdict(config)
