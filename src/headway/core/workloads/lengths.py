"""Distributions of token counts and of delays, and how workload parameters spell them.

A length is drawn from `LengthDist` (constant, uniform, lognormal or zipf around a mean,
clamped to [min_len, max_len]); a delay from `DelayDist` (constant, uniform, exponential
or lognormal around a mean in seconds). Both take the caller's `numpy.random.Generator`.

Parameter spellings (`parse_length_dist`, `parse_delay_dist`): a number (constant), a
mapping of the dataclass fields (`{"kind": "lognormal", "mean": 512, "sigma": 0.8}`), or a
string `kind:mean[:field=value,...]` (`"uniform:512:spread=0.25"`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from functools import lru_cache

import numpy as np


class LengthKind(StrEnum):
    CONSTANT = "constant"
    UNIFORM = "uniform"  # uniform in [mean * (1 - spread), mean * (1 + spread)]
    LOGNORMAL = "lognormal"  # log-normal with this mean and log-space sigma
    ZIPF = "zipf"  # P(L = l) ~ l^-a on [min_len, max_len], a solved so E[L] = mean


# zipf without a max_len spans [min_len, ZIPF_DEFAULT_RANGE x mean].
ZIPF_DEFAULT_RANGE = 16


@dataclass(frozen=True)
class LengthDist:
    """A distribution of token counts."""

    mean: int
    kind: LengthKind = LengthKind.UNIFORM
    spread: float = 0.5  # uniform: relative half-width
    sigma: float = 0.5  # lognormal: standard deviation of log(L)
    min_len: int = 1
    max_len: int | None = None  # clamp (lognormal tail; zipf range)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", LengthKind(self.kind))
        if self.mean < 1:
            raise ValueError(f"mean: must be >= 1, got {self.mean}")
        if not 0.0 <= self.spread < 1.0:
            raise ValueError(f"spread: must be in [0, 1), got {self.spread}")
        if not self.sigma >= 0.0:
            raise ValueError(f"sigma: must be >= 0, got {self.sigma}")
        if self.min_len < 1:
            raise ValueError(f"min_len: must be >= 1, got {self.min_len}")
        if self.max_len is not None and self.max_len < max(self.min_len, 1):
            raise ValueError(f"max_len: must be >= min_len, got {self.max_len}")
        if self.kind == LengthKind.ZIPF:
            lo, hi = self._zipf_range()
            if not lo < self.mean < (lo + hi) / 2:
                raise ValueError(
                    f"mean: a zipf length over [{lo}, {hi}] needs {lo} < mean < {(lo + hi) / 2}, "
                    f"got {self.mean}"
                )

    def _zipf_range(self) -> tuple[int, int]:
        hi = self.max_len if self.max_len is not None else ZIPF_DEFAULT_RANGE * self.mean
        return self.min_len, hi

    def _clamp(self, n: int) -> int:
        n = max(self.min_len, n)
        return n if self.max_len is None else min(self.max_len, n)

    def sample(self, rng: np.random.Generator) -> int:
        """One length."""
        if self.kind == LengthKind.CONSTANT:
            return self._clamp(self.mean)
        if self.kind == LengthKind.UNIFORM:
            if self.spread == 0.0:
                return self._clamp(self.mean)
            lo = max(1, round(self.mean * (1.0 - self.spread)))
            hi = max(lo, round(self.mean * (1.0 + self.spread)))
            return self._clamp(int(rng.integers(lo, hi + 1)))
        if self.kind == LengthKind.LOGNORMAL:
            mu = math.log(self.mean) - self.sigma**2 / 2.0  # so that E[L] = mean
            return self._clamp(round(float(rng.lognormal(mu, self.sigma))))
        lo, hi = self._zipf_range()
        cdf = _zipf_cdf(float(self.mean), lo, hi)
        return lo + int(np.searchsorted(cdf, rng.random(), side="right"))

    def as_dict(self) -> dict[str, object]:
        """The fields as JSON-ready values."""
        out: dict[str, object] = {f.name: getattr(self, f.name) for f in fields(self)}
        out["kind"] = str(self.kind)
        return out


@lru_cache(maxsize=64)
def _zipf_cdf(mean: float, lo: int, hi: int) -> np.ndarray:
    """Cumulative P(L <= l) for l in [lo, hi] of a truncated power law with mean `mean`;
    the exponent is found by bisection (the mean falls as the exponent grows)."""
    support = np.arange(lo, hi + 1, dtype=np.float64)
    log_l = np.log(support)

    def pmf(a: float) -> np.ndarray:
        w = np.exp(-a * (log_l - log_l[0]))
        out: np.ndarray = w / w.sum()
        return out

    a_lo, a_hi = 0.0, 1.0
    while float(pmf(a_hi) @ support) > mean:
        a_hi *= 2.0
    for _ in range(80):
        a_mid = (a_lo + a_hi) / 2.0
        if float(pmf(a_mid) @ support) > mean:
            a_lo = a_mid
        else:
            a_hi = a_mid
    cdf: np.ndarray = np.cumsum(pmf((a_lo + a_hi) / 2.0))
    cdf[-1] = 1.0
    return cdf


class DelayKind(StrEnum):
    CONSTANT = "constant"
    UNIFORM = "uniform"  # uniform in [mean * (1 - spread), mean * (1 + spread)]
    EXPONENTIAL = "exponential"
    LOGNORMAL = "lognormal"


@dataclass(frozen=True)
class DelayDist:
    """A distribution of delays in seconds (think time, tool latency)."""

    mean_s: float
    kind: DelayKind = DelayKind.CONSTANT
    spread: float = 0.5
    sigma: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", DelayKind(self.kind))
        if not (self.mean_s >= 0.0 and math.isfinite(self.mean_s)):
            raise ValueError(f"mean_s: must be a finite number >= 0, got {self.mean_s}")
        if not 0.0 <= self.spread <= 1.0:
            raise ValueError(f"spread: must be in [0, 1], got {self.spread}")
        if not self.sigma >= 0.0:
            raise ValueError(f"sigma: must be >= 0, got {self.sigma}")

    def sample(self, rng: np.random.Generator) -> float:
        """One delay in seconds (>= 0)."""
        if self.mean_s == 0.0 or self.kind == DelayKind.CONSTANT:
            return self.mean_s
        if self.kind == DelayKind.UNIFORM:
            lo, hi = self.mean_s * (1.0 - self.spread), self.mean_s * (1.0 + self.spread)
            return float(rng.uniform(lo, hi))
        if self.kind == DelayKind.EXPONENTIAL:
            return float(rng.exponential(self.mean_s))
        mu = math.log(self.mean_s) - self.sigma**2 / 2.0
        return float(rng.lognormal(mu, self.sigma))

    def as_dict(self) -> dict[str, object]:
        """The fields as JSON-ready values."""
        return {
            "mean_s": self.mean_s,
            "kind": str(self.kind),
            "spread": self.spread,
            "sigma": self.sigma,
        }


def _parse_spec(value: str, where: str, mean_field: str) -> dict[str, object]:
    """`kind:mean[:field=value,...]` -> field mapping (values as numbers where they parse)."""
    parts = value.split(":")
    if len(parts) < 2 or len(parts) > 3:
        raise ValueError(f"{where}: expected 'kind:mean[:field=value,...]', got {value!r}")
    out: dict[str, object] = {"kind": parts[0].strip(), mean_field: _number(parts[1], where)}
    if len(parts) == 3 and parts[2].strip():
        for item in parts[2].split(","):
            key, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"{where}: expected field=value, got {item!r}")
            out[key.strip()] = _number(raw, f"{where}.{key.strip()}")
    return out


def _number(raw: str, where: str) -> float | int:
    try:
        as_float = float(raw)
    except ValueError as exc:
        raise ValueError(f"{where}: not a number: {raw!r}") from exc
    return int(as_float) if as_float.is_integer() and "." not in raw else as_float


def _from_mapping(cls: type, raw: Mapping[str, object], where: str) -> object:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(names)}")
    try:
        return cls(**raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}.{exc}" if not str(exc).startswith(where) else str(exc)) from exc


def parse_length_dist(value: object, where: str) -> LengthDist:
    """A `LengthDist` from a parameter value (see the module doc); errors name `where`."""
    if isinstance(value, LengthDist):
        return value
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected a length, got {value!r}")
    if isinstance(value, int | float):
        if not float(value).is_integer():
            raise ValueError(f"{where}: a constant length must be an integer, got {value}")
        return _checked_length(where, mean=int(value), kind=LengthKind.CONSTANT)
    if isinstance(value, str):
        spec = _parse_spec(value, where, "mean")
        return _checked_length(where, **spec)
    if isinstance(value, Mapping):
        return _checked_length(where, **{str(k): v for k, v in value.items()})
    raise ValueError(f"{where}: expected a number, a mapping or 'kind:mean[:...]', got {value!r}")


def _checked_length(where: str, **raw: object) -> LengthDist:
    if "mean" in raw and isinstance(raw["mean"], float):
        if not raw["mean"].is_integer():
            raise ValueError(f"{where}.mean: must be an integer, got {raw['mean']}")
        raw["mean"] = int(raw["mean"])
    try:
        raw["kind"] = LengthKind(str(raw.get("kind", LengthKind.UNIFORM)))
    except ValueError as exc:
        kinds = [k.value for k in LengthKind]
        raise ValueError(f"{where}.kind: must be one of {kinds}, got {raw.get('kind')!r}") from exc
    result = _from_mapping(LengthDist, raw, where)
    assert isinstance(result, LengthDist)
    return result


def parse_delay_dist(value: object, where: str) -> DelayDist:
    """A `DelayDist` from a parameter value (see the module doc); errors name `where`."""
    if isinstance(value, DelayDist):
        return value
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected a delay in seconds, got {value!r}")
    if isinstance(value, int | float):
        return _checked_delay(where, mean_s=float(value), kind=DelayKind.CONSTANT)
    if isinstance(value, str):
        spec = _parse_spec(value, where, "mean_s")
        return _checked_delay(where, **spec)
    if isinstance(value, Mapping):
        return _checked_delay(where, **{str(k): v for k, v in value.items()})
    raise ValueError(f"{where}: expected a number, a mapping or 'kind:mean_s[:...]', got {value!r}")


def _checked_delay(where: str, **raw: object) -> DelayDist:
    try:
        raw["kind"] = DelayKind(str(raw.get("kind", DelayKind.CONSTANT)))
    except ValueError as exc:
        kinds = [k.value for k in DelayKind]
        raise ValueError(f"{where}.kind: must be one of {kinds}, got {raw.get('kind')!r}") from exc
    result = _from_mapping(DelayDist, raw, where)
    assert isinstance(result, DelayDist)
    return result
