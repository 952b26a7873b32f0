"""cluster_vs_live's front-end calibration: the simulated overhead is the median per-call
excess of live over simulated TTFT on the calibration run's calls."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from types import ModuleType

import pytest
from bench_smoke import REPO

SCRIPT = REPO / "benchmarks" / "cluster_vs_live.py"


@pytest.fixture(scope="module")
def cvl() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cluster_vs_live_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("live", "simulated", "expected_s"),
    [
        ({"a": 0.010, "b": 0.020, "c": 0.030}, {"a": 0.008, "b": 0.017, "c": 0.026}, 0.003),
        # Per call, not a difference of medians: the medians differ by 0 here.
        ({"a": 0.001, "b": 0.005, "c": 0.009}, {"a": 0.009, "b": 0.003, "c": 0.001}, 0.002),
        # Calls on one side only are left out (a failed live call, a missing record).
        ({"a": 0.010, "b": 0.050}, {"a": 0.004, "c": 0.001}, 0.006),
        ({"a": 0.010}, {"b": 0.004}, 0.0),
        ({}, {}, 0.0),
        # Live faster than simulated: negative (the caller clamps the overhead at 0).
        ({"a": 0.002}, {"a": 0.003}, -0.001),
    ],
    ids=["shift", "per-call", "unmatched", "disjoint", "empty", "negative"],
)
def test_median_excess_is_per_call(
    cvl: ModuleType, live: dict[str, float], simulated: dict[str, float], expected_s: float
) -> None:
    assert cvl.median_excess_s(live, simulated) == pytest.approx(expected_s, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 7], ids=["seed0", "seed7"])
def test_calibration_seeds_differ_from_the_compared_run(cvl: ModuleType, seed: int) -> None:
    seeds = cvl._calibration_seeds(argparse.Namespace(seed=seed))
    assert len(set(seeds)) == 2 and seed not in seeds


@pytest.mark.parametrize(
    ("live", "simulated", "expected_s"),
    [
        ({"b": 0.030, "a": 0.010}, {"a": 0.007, "b": 0.029}, (0.001, 0.003)),
        ({"a": 0.002, "b": 0.009}, {"a": 0.003, "b": 0.004}, (0.0, 0.005)),
        ({"a": 0.002, "x": 0.5}, {"a": 0.001}, (0.001,)),
        ({}, {"a": 0.001}, ()),
    ],
    ids=["sorted", "negative-as-zero", "unmatched", "empty"],
)
def test_overhead_samples_are_sorted_clipped_excesses(
    cvl: ModuleType,
    live: dict[str, float],
    simulated: dict[str, float],
    expected_s: tuple[float, ...],
) -> None:
    got = cvl.overhead_samples_s(live, simulated)
    assert isinstance(got, tuple)
    assert got == pytest.approx(expected_s, abs=1e-12)
