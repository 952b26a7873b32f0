"""The presets end to end: round-robin and least-request behaviour, and pipeline
properties every preset keeps (the behaviour of the others is in
test_routing_preset_behaviour.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from routing_helpers import (
    MODEL,
    contexts,
    ctx,
    endpoint_sets,
    populated_resources,
    snap,
    zero_timer,
)

from headway.routing import (
    PRESETS,
    EndpointSnapshot,
    NoEndpointReason,
    ProfileHandler,
    RequestContext,
    RoutingResult,
    build_handler,
)


def build(preset: str) -> ProfileHandler:
    """Every preset, including those that need KV events, with populated indexes."""
    return build_handler({"preset": preset}, resources=populated_resources())


def decide(
    handler: ProfileHandler,
    endpoints: tuple[EndpointSnapshot, ...],
    seed: int = 0,
    c: RequestContext | None = None,
) -> RoutingResult:
    return handler.decide(
        c or ctx(), endpoints, now=7.0, rng=np.random.default_rng(seed), timer=zero_timer
    )


def commit(handler: ProfileHandler, endpoints: tuple[EndpointSnapshot, ...]) -> str | None:
    result = decide(handler, endpoints)
    handler.observe(ctx(), result)
    return result.decision.endpoint_id


# -- round-robin ------------------------------------------------------------------------------

UP = (snap("b"), snap("c"), snap("a"))
B_DOWN = (snap("a"), snap("b", is_healthy=False), snap("c"))
D_ADDED = (*UP, snap("d"))


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([UP] * 7, "abcabca"),
        ([UP, UP, B_DOWN, B_DOWN, UP], "abcab"),
        ([UP, B_DOWN, B_DOWN], "aca"),
        ([UP, UP, D_ADDED, D_ADDED, D_ADDED], "abcda"),
        ([UP, (snap("c"),), UP], "aca"),
    ],
    ids=[
        "cycles-in-id-order",
        "skips-unhealthy",
        "unhealthy-after-cursor",
        "new-endpoint-joins",
        "single",
    ],
)
def test_round_robin_cycles_over_healthy(
    steps: list[tuple[EndpointSnapshot, ...]], expected: str
) -> None:
    handler = build_handler({"preset": "round-robin"})
    assert "".join(commit(handler, eps) or "-" for eps in steps) == expected


def test_round_robin_moves_only_on_observe() -> None:
    handler = build_handler({"preset": "round-robin"})
    assert {decide(handler, UP).decision.endpoint_id for _ in range(5)} == {"a"}


# -- least-request ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_flight", "expected"),
    [
        ({"a": 3, "b": 1, "c": 2}, {"b"}),
        ({"a": 0, "b": 4, "c": 0}, {"a", "c"}),
        ({"a": 5, "b": 5, "c": 5}, {"a", "b", "c"}),
        ({"a": 9}, {"a"}),
    ],
    ids=["fewest-wins", "tie-among-fewest", "all-equal", "single"],
)
def test_least_request_picks_fewest_in_flight(
    in_flight: dict[str, int], expected: set[str]
) -> None:
    handler = build_handler({"preset": "least-request"})
    eps = tuple(snap(i, num_in_flight_requests=n) for i, n in in_flight.items())
    picks = {decide(handler, eps, seed).decision.endpoint_id for seed in range(32)}
    assert picks == expected  # ties go to every tied endpoint across seeds, never elsewhere
    assert decide(handler, eps, 5) == decide(handler, eps, 5)


def test_least_request_spreads_load_when_the_gateway_counts_in_flight() -> None:
    handler = build_handler({"preset": "least-request"})
    in_flight = dict.fromkeys("abcd", 0)
    rng = np.random.default_rng(1)
    for _ in range(12):
        eps = tuple(snap(i, num_in_flight_requests=n) for i, n in in_flight.items())
        result = handler.decide(ctx(), eps, now=0.0, rng=rng, timer=zero_timer)
        assert result.decision.endpoint_id is not None
        in_flight[result.decision.endpoint_id] += 1  # the gateway's in-flight tracker
    assert set(in_flight.values()) == {3}


# -- both presets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoints", "model", "eliminated_by"),
    [
        ((snap("a", is_healthy=False), snap("b", is_ejected=True)), MODEL, "healthy"),
        ((snap("a"), snap("b")), "unknown-model", "serves-model"),
    ],
    ids=["none-healthy", "none-serves-model"],
)
@pytest.mark.parametrize("preset", sorted(PRESETS), ids=sorted(PRESETS))
def test_presets_report_no_endpoint(
    preset: str, endpoints: tuple[EndpointSnapshot, ...], model: str, eliminated_by: str
) -> None:
    d = decide(build(preset), endpoints, c=ctx(model=model)).decision
    assert (d.is_routed, d.reason, d.eliminated_by) == (
        False,
        NoEndpointReason.ALL_FILTERED,
        eliminated_by,
    )


def eligible(c: RequestContext, endpoints: tuple[EndpointSnapshot, ...]) -> set[str]:
    return {
        e.endpoint_id
        for e in endpoints
        if e.is_healthy
        and not e.is_ejected
        and c.model in e.models
        and (c.lora_adapter is None or not e.lora_adapters or c.lora_adapter in e.lora_adapters)
    }


@pytest.mark.parametrize("preset", sorted(PRESETS), ids=sorted(PRESETS))
@settings(max_examples=25, deadline=None)
@given(eps=endpoint_sets(), c=contexts, seed=st.integers(0, 2**32 - 1), data=st.data())
def test_pipeline_properties(
    preset: str,
    eps: tuple[EndpointSnapshot, ...],
    c: RequestContext,
    seed: int,
    data: st.DataObject,
) -> None:
    """Random fleets: picks among eligible candidates, scores in [0, 1], deterministic."""
    shuffled = tuple(data.draw(st.permutations(eps)))
    first = decide(build(preset), eps, seed, c)
    again = decide(build(preset), shuffled, seed, c)
    assert again == first  # same inputs and seed (in any order) -> same decision
    d = first.decision
    allowed = eligible(c, eps)
    assert d.is_routed == bool(allowed)
    assert d.num_endpoints == len(eps)
    if PRESETS[preset]["filters"] == ("healthy", "serves-model"):
        assert d.num_candidates == len(allowed)
    else:  # saturation and prefix affinity narrow further, never to nothing
        assert 0 < d.num_candidates <= len(allowed) or not allowed
    if d.is_routed:
        assert d.endpoint_id in allowed
        assert all(0.0 <= s.score <= 1.0 and s.endpoint_id in allowed for s in d.top_scores)
        assert d.top_scores[0].score == max(s.score for s in d.top_scores)
    else:
        assert d.reason is (NoEndpointReason.ALL_FILTERED if eps else NoEndpointReason.NO_ENDPOINTS)


@settings(max_examples=40, deadline=None)
@given(eps=endpoint_sets(min_size=1), num_requests=st.integers(1, 30))
def test_round_robin_visits_each_healthy_endpoint_in_turn(
    eps: tuple[EndpointSnapshot, ...], num_requests: int
) -> None:
    serving = tuple(
        dataclasses.replace(e, models=frozenset({MODEL}), lora_adapters=frozenset()) for e in eps
    )
    healthy = sorted(e.endpoint_id for e in serving if e.is_healthy and not e.is_ejected)
    handler = build_handler({"preset": "round-robin"})
    picks = [commit(handler, serving) for _ in range(num_requests)]
    if healthy:
        assert picks == [healthy[i % len(healthy)] for i in range(num_requests)]
    else:
        assert picks == [None] * num_requests
