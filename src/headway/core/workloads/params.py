"""Reading a workload's parameter mapping: typed, validated, errors name the field as
`<workload>.<parameter>`. Numbers may arrive as strings (command-line `key=value`)."""

from __future__ import annotations

import math
from collections.abc import Mapping

from headway.core.workloads.lengths import (
    DelayDist,
    LengthDist,
    parse_delay_dist,
    parse_length_dist,
)


class ParamReader:
    """Takes parameters out of a mapping one by one; `finish` rejects the unknown rest."""

    def __init__(self, workload: str, params: Mapping[str, object]) -> None:
        self.workload = workload
        self._raw = {str(k): v for k, v in params.items()}
        self._known: list[str] = []

    def where(self, key: str) -> str:
        return f"{self.workload}.{key}"

    def raw(self, key: str, default: object) -> object:
        """The value as given, or `default`."""
        self._known.append(key)
        return self._raw.get(key, default)

    def has(self, key: str) -> bool:
        return key in self._raw

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        value = self.raw(key, default)
        if isinstance(value, str):
            value = _parse_number(value, self.where(key))
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self.where(key)}: must be an integer, got {value!r}")
        if not float(value).is_integer():
            raise ValueError(f"{self.where(key)}: must be an integer, got {value!r}")
        if value < minimum:
            raise ValueError(f"{self.where(key)}: must be >= {minimum}, got {value}")
        return int(value)

    def number(
        self, key: str, default: float, minimum: float = 0.0, *, strict: bool = False
    ) -> float:
        """A finite number >= minimum (> minimum when `strict`)."""
        value = self.raw(key, default)
        if isinstance(value, str):
            value = _parse_number(value, self.where(key))
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self.where(key)}: must be a number, got {value!r}")
        result = float(value)
        if not math.isfinite(result) or result < minimum or (strict and result == minimum):
            op = ">" if strict else ">="
            raise ValueError(
                f"{self.where(key)}: must be a finite number {op} {minimum}, got {value}"
            )
        return result

    def length(self, key: str, default: object) -> LengthDist:
        return parse_length_dist(self.raw(key, default), self.where(key))

    def delay(self, key: str, default: object) -> DelayDist:
        return parse_delay_dist(self.raw(key, default), self.where(key))

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.raw(key, default)
        if value not in choices:
            raise ValueError(f"{self.where(key)}: must be one of {list(choices)}, got {value!r}")
        assert isinstance(value, str)
        return value

    def optional_str(self, key: str) -> str | None:
        value = self.raw(key, None)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{self.where(key)}: must be a string, got {value!r}")
        return value

    def finish(self) -> None:
        """Reject parameters nobody read."""
        unknown = sorted(set(self._raw) - set(self._known))
        if unknown:
            raise ValueError(
                f"{self.workload}: unknown parameter(s) {unknown}; known: {sorted(set(self._known))}"
            )


def _parse_number(raw: str, where: str) -> float | int:
    try:
        as_float = float(raw)
    except ValueError as exc:
        raise ValueError(f"{where}: not a number: {raw!r}") from exc
    return int(as_float) if as_float.is_integer() and math.isfinite(as_float) else as_float
