"""max-score picker: the best score; ties within tolerance broken by the seeded rng."""

from __future__ import annotations

import numpy as np
import pytest

from headway.routing import ConfigError
from headway.routing.plugins.max_score import MaxScoreParams, MaxScorePicker


@pytest.mark.parametrize(
    ("scored", "tolerance", "tied"),
    [
        ({"a": 0.2, "b": 0.9, "c": 0.5}, 1e-9, {"b"}),
        ({"a": 0.0}, 1e-9, {"a"}),
        ({"a": 0.5, "b": 0.5 + 1e-12, "c": 0.1}, 1e-9, {"a", "b"}),
        ({"a": 0.5, "b": 0.5 + 1e-12}, 0.0, {"b"}),
        ({"a": 0.7, "b": 0.75, "c": 0.8}, 0.06, {"b", "c"}),
        ({"a": 1.0, "b": 1.0, "c": 1.0}, 0.0, {"a", "b", "c"}),
    ],
    ids=["unique-max", "single", "rounding-tie", "no-tolerance", "wide-tolerance", "all-equal"],
)
def test_max_score(scored: dict[str, float], tolerance: float, tied: set[str]) -> None:
    picker = MaxScorePicker(MaxScoreParams(tolerance))
    picks = [picker.pick(scored, np.random.default_rng(seed)) for seed in range(32)]
    assert {p.endpoint_id for p in picks} == tied  # every tied id is reachable, nothing else
    assert {p.num_tied for p in picks} == {len(tied)}


def test_rng_used_only_for_ties() -> None:
    rng = np.random.default_rng(5)
    before = rng.bit_generator.state
    MaxScorePicker(MaxScoreParams()).pick({"a": 0.1, "b": 0.2}, rng)
    assert rng.bit_generator.state == before


def test_tie_break_reproducible_from_seed() -> None:
    picker = MaxScorePicker(MaxScoreParams())
    scored = dict.fromkeys("abcdefgh", 0.5)

    def draws(seed: int) -> list[str]:
        rng = np.random.default_rng(seed)
        return [picker.pick(scored, rng).endpoint_id for _ in range(20)]

    assert draws(11) == draws(11)
    assert len(set(draws(11))) > 1


@pytest.mark.parametrize("tolerance", [-0.1, 1.0, float("nan")], ids=["negative", "one", "nan"])
def test_params_reject(tolerance: float) -> None:
    with pytest.raises(ConfigError, match=r"^tie_tolerance: must be in \[0, 1\)"):
        MaxScoreParams(tolerance)
