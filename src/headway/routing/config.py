"""Validation of plain-data config (as loaded from YAML) into typed values.

Every error is a `ConfigError` whose message starts with the path of the offending
field, e.g. ``profiles.default.scorers[1].weight: must be >= 0``. Params dataclasses
raise `ConfigError` with a path relative to themselves; callers prefix it with
`ConfigError.under`.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

_P = TypeVar("_P")


def join(prefix: str, key: str | int) -> str:
    """`profiles` + `default` -> `profiles.default`; `scorers` + 1 -> `scorers[1]`."""
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key


class ConfigError(ValueError):
    """An invalid config value; `path` names the field."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)

    def under(self, prefix: str) -> ConfigError:
        """The same error, with `prefix` put in front of its path."""
        if not prefix:
            return self
        return ConfigError(f"{prefix}.{self.path}" if self.path else prefix, self.message)


def as_mapping(raw: object, path: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(path, f"must be a mapping, got {type(raw).__name__}")
    for key in raw:
        if not isinstance(key, str):
            raise ConfigError(path, f"keys must be strings, got {key!r}")
    return raw


def check_keys(raw: Mapping[str, Any], allowed: frozenset[str], path: str) -> None:
    for key in raw:
        if key not in allowed:
            raise ConfigError(join(path, key), f"unknown field (expected one of {sorted(allowed)})")


def as_str(raw: object, path: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(path, "must be a non-empty string")
    return raw


def as_number(raw: object, path: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise ConfigError(path, "must be a finite number")
    return float(raw)


def as_int(raw: object, path: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ConfigError(path, "must be an integer")
    return raw


def params_from_mapping(cls: type[_P], raw: object, path: str) -> _P:
    """Build params dataclass `cls` from `raw` (None: all defaults).

    Supports the field types params use: bool, int, float, str, `X | None` and
    `tuple[X, ...]` of those. Unknown keys and wrong types are errors.
    """
    values = as_mapping({} if raw is None else raw, path)
    hints = get_type_hints(cls)
    names = frozenset(f.name for f in fields(cls))  # type: ignore[arg-type]
    check_keys(values, names, path)
    kwargs = {key: _coerce(value, hints[key], join(path, key)) for key, value in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise e.under(path) from None


def _coerce(value: object, hint: Any, path: str) -> Any:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        (inner,) = [a for a in get_args(hint) if a is not type(None)]
        return None if value is None else _coerce(value, inner, path)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(path, "must be a list")
        inner = get_args(hint)[0]
        return tuple(_coerce(v, inner, join(path, i)) for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, "must be true or false")
        return value
    if hint is int:
        return as_int(value, path)
    if hint is float:
        return as_number(value, path)
    if hint is str:
        return as_str(value, path)
    raise TypeError(f"{path}: unsupported params field type {hint!r}")
