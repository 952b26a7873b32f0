"""Synthetic workload: lengths within bounds, reproducible from a seed."""

from __future__ import annotations

import numpy as np
import pytest

from headway.core.workloads import LengthDist, LengthKind, SyntheticWorkload


@pytest.mark.parametrize(
    ("dist", "lo", "hi"),
    [
        (LengthDist(100, LengthKind.CONSTANT), 100, 100),
        (LengthDist(100, LengthKind.UNIFORM, 0.5), 50, 150),
        (LengthDist(1, LengthKind.UNIFORM, 0.9), 1, 2),
        (LengthDist(100, LengthKind.UNIFORM, 0.0), 100, 100),
    ],
    ids=["constant", "uniform", "tiny-mean", "no-spread"],
)
def test_lengths_within_bounds(dist: LengthDist, lo: int, hi: int) -> None:
    rng = np.random.default_rng(0)
    draws = [dist.sample(rng) for _ in range(500)]
    assert lo <= min(draws) and max(draws) <= hi


@pytest.mark.parametrize(
    ("mean", "spread"), [(0, 0.5), (10, 1.0), (10, -0.1)], ids=["mean", "spread-high", "spread-neg"]
)
def test_invalid_dist(mean: int, spread: float) -> None:
    with pytest.raises(ValueError):
        LengthDist(mean, LengthKind.UNIFORM, spread)


def test_reproducible_from_seed() -> None:
    wl = SyntheticWorkload(LengthDist(64), LengthDist(16), min_token_id=5, max_token_id=9)
    a = [wl.sample(np.random.default_rng(7)) for _ in range(3)]
    b = [wl.sample(np.random.default_rng(7)) for _ in range(3)]
    assert a == b
    req = a[0]
    assert 32 <= len(req.prompt_token_ids) <= 96
    assert all(5 <= t < 9 for t in req.prompt_token_ids)
    assert 8 <= req.max_tokens <= 24
