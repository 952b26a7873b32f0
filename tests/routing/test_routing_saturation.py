"""saturation filter: each bound, stale metrics, KV capacity vs absolute token bound,
and failing open when every candidate is saturated."""

from __future__ import annotations

from typing import Any

import pytest
from routing_helpers import ctx, snap

from headway.routing import ConfigError, RequestScratch
from headway.routing.config import params_from_mapping
from headway.routing.plugins.saturation import SaturationFilter, SaturationParams

CAP = {"block_size": 16, "num_gpu_blocks": 100}  # 1,600 tokens of KV


def kept(params: SaturationParams, *fields: dict[str, Any]) -> list[str]:
    eps = tuple(snap(f"e{i}", **f) for i, f in enumerate(fields))
    out = SaturationFilter(params).filter(ctx(), eps, RequestScratch(0.0))
    return [e.endpoint_id for e in out]


@pytest.mark.parametrize(
    ("busy", "expected"),
    [
        ({"num_queued_requests": 5}, ["e0", "e1"]),
        ({"num_queued_requests": 6}, ["e1"]),
        ({"kv_cache_usage": 0.8}, ["e0", "e1"]),
        ({"kv_cache_usage": 0.81}, ["e1"]),
        ({"kv_cache_usage": None}, ["e0", "e1"]),
        (
            {"num_queued_requests": 50, "kv_cache_usage": 1.0, "is_metrics_stale": True},
            ["e0", "e1"],
        ),
        ({"num_in_flight_tokens": 1600, **CAP}, ["e0", "e1"]),
        ({"num_in_flight_tokens": 1601, **CAP}, ["e1"]),
        ({"num_in_flight_tokens": 1601, "is_metrics_stale": True, **CAP}, ["e1"]),
        ({"num_in_flight_tokens": 10**6}, ["e0", "e1"]),
    ],
    ids=[
        "queue-at-bound",
        "queue-over",
        "kv-at-bound",
        "kv-over",
        "kv-unknown-not-checked",
        "stale-engine-metrics-ignored",
        "tokens-at-capacity",
        "tokens-over-capacity",
        "token-load-is-never-stale",
        "capacity-unknown-no-absolute-bound",
    ],
)
def test_bounds(busy: dict[str, Any], expected: list[str]) -> None:
    assert kept(SaturationParams(), busy, {}) == expected


def test_absolute_token_bound_when_capacity_unknown() -> None:
    params = SaturationParams(max_in_flight_tokens=1000)
    assert kept(params, {"num_in_flight_tokens": 1001}, {"num_in_flight_tokens": 1000}) == ["e1"]
    # With the capacity known, the fraction rule applies instead.
    assert kept(params, {"num_in_flight_tokens": 1001, **CAP}, {}) == ["e0", "e1"]


def test_none_disables_a_bound() -> None:
    params = SaturationParams(max_queued_requests=None, max_kv_cache_usage=None)
    assert kept(params, {"num_queued_requests": 99, "kv_cache_usage": 1.0}, {}) == ["e0", "e1"]


@pytest.mark.parametrize(
    "fields",
    [
        [{"num_queued_requests": 9}, {"kv_cache_usage": 0.9}],
        [{"num_queued_requests": 9}],
        [{"num_in_flight_tokens": 5000, **CAP}] * 3,
    ],
    ids=["two-different-reasons", "single", "all-over-capacity"],
)
def test_fails_open_when_all_are_saturated(fields: list[dict[str, Any]]) -> None:
    assert kept(SaturationParams(), *fields) == [f"e{i}" for i in range(len(fields))]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"max_queued_requests": -1}, "max_queued_requests: must be >= 0"),
        ({"max_kv_cache_usage": 1.5}, r"max_kv_cache_usage: must be in \[0, 1\]"),
        ({"max_token_load": 0.0}, "max_token_load: must be > 0"),
        ({"max_in_flight_tokens": -5}, "max_in_flight_tokens: must be >= 0"),
    ],
    ids=["queue", "kv", "token-load", "tokens"],
)
def test_params_validated(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=f"^params.{message}"):
        params_from_mapping(SaturationParams, raw, "params")
