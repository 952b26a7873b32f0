"""`power-of-two` picker: two distinct random candidates, the higher score wins.

Draws two distinct candidates uniformly with the rng (ids sorted first) and picks the
one with the higher combined score; a tie (within `tie_tolerance`) is broken by one
more rng draw. With a single candidate, that one. The classic result (Mitzenmacher,
"The Power of Two Choices") is that this keeps the maximum load exponentially closer
to the mean than one random choice, while avoiding the herding of always picking the
global best from a stale snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from headway.routing.config import ConfigError
from headway.routing.decision import PluginKind
from headway.routing.plugin import Pick, PluginSpec


@dataclass(frozen=True)
class PowerOfTwoParams:
    tie_tolerance: float = 1e-9  # scores this close count as tied

    def __post_init__(self) -> None:
        if not 0.0 <= self.tie_tolerance < 1.0:
            raise ConfigError("tie_tolerance", f"must be in [0, 1), got {self.tie_tolerance}")


class PowerOfTwoPicker:
    TYPE: ClassVar[str] = "power-of-two"

    def __init__(self, params: PowerOfTwoParams) -> None:
        self.params = params

    def pick(self, scored: Mapping[str, float], rng: np.random.Generator) -> Pick:
        if not scored:
            raise ValueError("power-of-two: no candidates to pick from")
        ids = sorted(scored)
        if len(ids) == 1:
            return Pick(ids[0])
        i, j = (int(k) for k in rng.choice(len(ids), size=2, replace=False))
        a, b = ids[i], ids[j]
        diff = scored[a] - scored[b]
        if abs(diff) <= self.params.tie_tolerance:
            return Pick((a, b)[int(rng.integers(2))], num_tied=2)
        return Pick(a if diff > 0 else b)


SPEC = PluginSpec(
    type=PowerOfTwoPicker.TYPE,
    kind=PluginKind.PICKER,
    params_type=PowerOfTwoParams,
    factory=PowerOfTwoPicker,
    reads=frozenset(),
    summary="the better of two distinct random candidates (seeded tie-break)",
)
