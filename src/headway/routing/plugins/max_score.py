"""`max-score` picker: the highest combined score; ties broken by the seeded rng.

Scores within `tie_tolerance` of the best count as tied (weighted means of equal
inputs can differ in the last bits). Tied ids are sorted before the draw, so the
pick depends only on the scores and the rng, never on mapping order. The rng is
drawn from only when there is a tie.
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
class MaxScoreParams:
    tie_tolerance: float = 1e-9  # scores this close to the best are tied

    def __post_init__(self) -> None:
        if not 0.0 <= self.tie_tolerance < 1.0:
            raise ConfigError("tie_tolerance", f"must be in [0, 1), got {self.tie_tolerance}")


class MaxScorePicker:
    TYPE: ClassVar[str] = "max-score"

    def __init__(self, params: MaxScoreParams) -> None:
        self.params = params

    def pick(self, scored: Mapping[str, float], rng: np.random.Generator) -> Pick:
        if not scored:
            raise ValueError("max-score: no candidates to pick from")
        floor = max(scored.values()) - self.params.tie_tolerance
        tied = sorted(i for i, s in scored.items() if s >= floor)
        if len(tied) == 1:
            return Pick(tied[0])
        return Pick(tied[int(rng.integers(len(tied)))], num_tied=len(tied))


SPEC = PluginSpec(
    type=MaxScorePicker.TYPE,
    kind=PluginKind.PICKER,
    params_type=MaxScoreParams,
    factory=MaxScorePicker,
    reads=frozenset(),
    summary="highest combined score, ties broken by the seeded rng",
)
