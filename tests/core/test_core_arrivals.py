"""arrival_offsets_s: vLLM's gamma arrival process, seeded."""

from __future__ import annotations

import math

import numpy as np
import pytest

from headway.core.arrivals import arrival_offsets_s

NUM = 20_000


def test_infinite_rate_sends_everything_at_once() -> None:
    offsets = arrival_offsets_s(5, math.inf, 1.0, np.random.default_rng(0))
    assert offsets.tolist() == [0.0] * 5


def test_zero_requests() -> None:
    assert arrival_offsets_s(0, 2.0, 1.0, np.random.default_rng(0)).shape == (0,)


@pytest.mark.parametrize("rate", [0.5, 10.0, 200.0], ids=["slow", "medium", "fast"])
def test_mean_rate_without_normalisation(rate: float) -> None:
    offsets = arrival_offsets_s(NUM, rate, 1.0, np.random.default_rng(1), normalize=False)
    measured = NUM / offsets[-1]
    assert measured == pytest.approx(rate, rel=0.03)


def test_normalised_offsets_end_at_num_over_rate() -> None:
    offsets = arrival_offsets_s(100, 4.0, 0.5, np.random.default_rng(2))
    assert offsets[-1] == pytest.approx(25.0)
    assert np.all(np.diff(offsets) >= 0)
    assert offsets[0] > 0  # one gap after the start, like vLLM


@pytest.mark.parametrize(
    ("burstiness", "cv"),
    [(0.25, 2.0), (1.0, 1.0), (4.0, 0.5)],
    ids=["bursty", "poisson", "regular"],
)
def test_gap_coefficient_of_variation(burstiness: float, cv: float) -> None:
    offsets = arrival_offsets_s(NUM, 5.0, burstiness, np.random.default_rng(3), normalize=False)
    gaps = np.diff(np.concatenate([[0.0], offsets]))
    assert float(np.std(gaps) / np.mean(gaps)) == pytest.approx(cv, rel=0.1)


def test_burstier_process_has_larger_cv() -> None:
    def cv(b: float) -> float:
        gaps = np.diff(arrival_offsets_s(NUM, 5.0, b, np.random.default_rng(4)))
        return float(np.std(gaps) / np.mean(gaps))

    assert cv(0.5) > cv(1.0) > cv(2.0)


def test_infinite_burstiness_gives_constant_gaps() -> None:
    offsets = arrival_offsets_s(4, 2.0, math.inf, np.random.default_rng(0))
    assert offsets.tolist() == pytest.approx([0.5, 1.0, 1.5, 2.0])


def test_reproducible_from_seed() -> None:
    a = arrival_offsets_s(50, 3.0, 1.0, np.random.default_rng(7))
    b = arrival_offsets_s(50, 3.0, 1.0, np.random.default_rng(7))
    c = arrival_offsets_s(50, 3.0, 1.0, np.random.default_rng(8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    ("num", "rate", "burstiness", "match"),
    [(-1, 1.0, 1.0, "num"), (3, 0.0, 1.0, "request_rate"), (3, 1.0, 0.0, "burstiness")],
    ids=["num", "rate", "burstiness"],
)
def test_invalid_arguments(num: int, rate: float, burstiness: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        arrival_offsets_s(num, rate, burstiness, np.random.default_rng(0))
