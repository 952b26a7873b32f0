"""`weighted-random` picker: a candidate drawn with probability proportional to its score.

P(e) = s(e)^exponent / sum over candidates of s^exponent; when every score is 0, a
uniform draw. Candidates are sorted by id before the draw, so the pick depends only
on the scores and the rng. Unlike `max-score` it never herds: a burst of requests
decided on the same snapshot spreads over the good candidates instead of all landing
on the single best one. `exponent` > 1 sharpens towards the best.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from headway.routing.config import ConfigError
from headway.routing.decision import PluginKind
from headway.routing.plugin import Pick, PluginSpec


@dataclass(frozen=True)
class WeightedRandomParams:
    exponent: float = 1.0  # weight = score ** exponent

    def __post_init__(self) -> None:
        if not (math.isfinite(self.exponent) and self.exponent > 0.0):
            raise ConfigError("exponent", f"must be > 0, got {self.exponent}")


class WeightedRandomPicker:
    TYPE: ClassVar[str] = "weighted-random"

    def __init__(self, params: WeightedRandomParams) -> None:
        self.params = params

    def pick(self, scored: Mapping[str, float], rng: np.random.Generator) -> Pick:
        if not scored:
            raise ValueError("weighted-random: no candidates to pick from")
        ids = sorted(scored)
        best = max(scored.values())
        num_tied = sum(1 for i in ids if scored[i] == best)
        if len(ids) == 1:
            return Pick(ids[0])
        weights = [scored[i] ** self.params.exponent for i in ids]
        total = math.fsum(weights)
        if total <= 0.0:
            return Pick(ids[int(rng.integers(len(ids)))], num_tied=num_tied)
        target = float(rng.random()) * total
        acc = 0.0
        for i, w in zip(ids, weights, strict=True):
            acc += w
            if target < acc and w > 0.0:
                return Pick(i, num_tied=num_tied)
        # Rounding left target at the very top: the last candidate with weight.
        return Pick(
            next(i for i, w in zip(reversed(ids), reversed(weights), strict=True) if w > 0.0),
            num_tied=num_tied,
        )


SPEC = PluginSpec(
    type=WeightedRandomPicker.TYPE,
    kind=PluginKind.PICKER,
    params_type=WeightedRandomParams,
    factory=WeightedRandomPicker,
    reads=frozenset(),
    summary="random candidate, probability proportional to score (uniform when all 0)",
)
