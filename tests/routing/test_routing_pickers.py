"""weighted-random and power-of-two pickers (seeded rngs only)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway.routing import ConfigError
from headway.routing.config import params_from_mapping
from headway.routing.plugins.power_of_two import PowerOfTwoParams, PowerOfTwoPicker
from headway.routing.plugins.weighted_random import WeightedRandomParams, WeightedRandomPicker


def draws(picker: Any, scored: dict[str, float], n: int = 4000, seed: int = 7) -> Counter[str]:
    rng = np.random.default_rng(seed)
    return Counter(picker.pick(scored, rng).endpoint_id for _ in range(n))


def test_weighted_random_is_proportional() -> None:
    counts = draws(WeightedRandomPicker(WeightedRandomParams()), {"a": 0.6, "b": 0.3, "c": 0.1})
    shares = {k: v / 4000 for k, v in counts.items()}
    assert shares["a"] == pytest.approx(0.6, abs=0.03)
    assert shares["b"] == pytest.approx(0.3, abs=0.03)
    assert shares["c"] == pytest.approx(0.1, abs=0.03)


def test_weighted_random_exponent_sharpens() -> None:
    counts = draws(WeightedRandomPicker(WeightedRandomParams(exponent=4.0)), {"a": 0.8, "b": 0.4})
    assert counts["a"] / 4000 == pytest.approx(16 / 17, abs=0.02)


@pytest.mark.parametrize(
    ("scored", "expected"),
    [({"a": 0.0, "b": 0.0, "c": 0.0}, {"a", "b", "c"}), ({"a": 0.0, "b": 0.5, "c": 0.0}, {"b"})],
    ids=["all-zero-uniform", "zero-never-picked"],
)
def test_weighted_random_zeros(scored: dict[str, float], expected: set[str]) -> None:
    assert set(draws(WeightedRandomPicker(WeightedRandomParams()), scored, n=300)) == expected


def test_power_of_two_never_picks_the_worst_of_distinct_scores() -> None:
    scored = {"a": 0.9, "b": 0.5, "c": 0.1}
    counts = draws(PowerOfTwoPicker(PowerOfTwoParams()), scored, n=3000)
    assert "c" not in counts
    # a wins both pairs it is in (2 of 3 pairs), b only the pair (b, c).
    assert counts["a"] / 3000 == pytest.approx(2 / 3, abs=0.03)


@settings(max_examples=100, deadline=None)
@given(
    scored=st.dictionaries(st.sampled_from("abcdef"), st.floats(0.0, 1.0), min_size=2),
    seed=st.integers(0, 2**32 - 1),
)
def test_power_of_two_beats_at_least_one_other(scored: dict[str, float], seed: int) -> None:
    pick = PowerOfTwoPicker(PowerOfTwoParams()).pick(scored, np.random.default_rng(seed))
    best = scored[pick.endpoint_id] + PowerOfTwoParams().tie_tolerance
    assert any(best >= s for i, s in scored.items() if i != pick.endpoint_id)
    assert pick.num_tied in (1, 2)


def test_power_of_two_two_candidates_is_max_score() -> None:
    counts = draws(PowerOfTwoPicker(PowerOfTwoParams()), {"a": 0.2, "b": 0.3}, n=50)
    assert counts == Counter({"b": 50})


@pytest.mark.parametrize(
    ("cls", "raw", "message"),
    [
        (WeightedRandomParams, {"exponent": 0.0}, "exponent: must be > 0"),
        (PowerOfTwoParams, {"tie_tolerance": 1.0}, r"tie_tolerance: must be in \[0, 1\)"),
    ],
    ids=["exponent", "tie-tolerance"],
)
def test_params_validated(cls: type, raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=f"^params.{message}"):
        params_from_mapping(cls, raw, "params")
