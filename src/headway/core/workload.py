"""Seeded, pure workload generators shared by the benchmarks, the simulator's own
benchmarks and (later) the cluster simulation. Callers pass the random generator in.

Only what is used so far lives here: a synthetic workload of token-id prompts with
lengths drawn around a mean. The bench issue adds shared-prefix, multi-turn, agentic
and trace workloads next to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class LengthKind(StrEnum):
    CONSTANT = "constant"
    UNIFORM = "uniform"  # uniform in [mean * (1 - spread), mean * (1 + spread)]


@dataclass(frozen=True)
class LengthDist:
    """A distribution of token counts."""

    mean: int
    kind: LengthKind = LengthKind.UNIFORM
    spread: float = 0.5

    def __post_init__(self) -> None:
        if self.mean < 1:
            raise ValueError(f"mean: must be >= 1, got {self.mean}")
        if not 0.0 <= self.spread < 1.0:
            raise ValueError(f"spread: must be in [0, 1), got {self.spread}")

    def sample(self, rng: np.random.Generator) -> int:
        if self.kind == LengthKind.CONSTANT or self.spread == 0.0:
            return self.mean
        lo = max(1, round(self.mean * (1.0 - self.spread)))
        hi = max(lo, round(self.mean * (1.0 + self.spread)))
        return int(rng.integers(lo, hi + 1))


@dataclass(frozen=True)
class SyntheticRequest:
    """A prompt as token ids and the number of tokens to generate."""

    prompt_token_ids: tuple[int, ...]
    max_tokens: int


@dataclass(frozen=True)
class SyntheticWorkload:
    """Random token-id prompts (ids in [min_token_id, max_token_id)) with lengths drawn
    from `input_len` and `output_len`."""

    input_len: LengthDist
    output_len: LengthDist
    min_token_id: int = 300
    max_token_id: int = 3000

    def sample(self, rng: np.random.Generator) -> SyntheticRequest:
        n = self.input_len.sample(rng)
        ids = rng.integers(self.min_token_id, self.max_token_id, size=n)
        return SyntheticRequest(tuple(int(t) for t in ids), self.output_len.sample(rng))
