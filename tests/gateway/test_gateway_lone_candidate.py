"""The routing shortcut for a lone candidate (gateway/routing.py `_LoneCandidate`): for
the profiles it covers it answers exactly as running the routing handler would, and
it is not taken for profiles whose answer needs the handler."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from headway.gateway.routing import _LoneCandidate
from headway.routing import EndpointSnapshot, RequestContext, RoutingResult, build_handler

MODEL = "m"
URL = "http://127.0.0.1:9000"
TIERED: dict[str, Any] = {
    "profiles": {
        "tiered": {
            "filters": ["serves-model", {"type": "healthy", "params": {"fail_open": True}}],
            "scorers": [
                {"type": "least-request", "weight": 0.1},
                {"type": "round-robin", "weight": 0.2},
            ],
            "picker": "max-score",
        }
    }
}
NO_SCORERS: dict[str, Any] = {
    "profiles": {
        "bare": {"filters": ["healthy", "serves-model"], "scorers": [], "picker": "max-score"}
    }
}


def _snapshot(**fields: Any) -> EndpointSnapshot:
    return EndpointSnapshot(endpoint_id=URL, models=frozenset({MODEL}), **fields)


def _ctx(**fields: Any) -> RequestContext:
    return RequestContext(request_id="r", model=MODEL, num_prompt_tokens_est=10, **fields)


def _summary(result: RoutingResult) -> tuple[Any, ...]:
    d = result.decision
    return (d.profile, d.outcome, d.endpoint_id, d.num_endpoints, d.num_candidates, d.top_scores)


@pytest.mark.parametrize(
    "routing",
    [{"preset": "round-robin"}, {"preset": "least-request"}, TIERED, NO_SCORERS],
    ids=["round-robin", "least-request", "custom-weights", "no-scorers"],
)
@pytest.mark.parametrize(
    ("snapshot", "ctx", "is_short"),
    [
        (_snapshot(), _ctx(), True),
        (_snapshot(num_in_flight_requests=3), _ctx(), True),
        (_snapshot(is_ejected=True), _ctx(), False),
        (_snapshot(is_healthy=False), _ctx(), False),
        (_snapshot(), replace(_ctx(), model="other"), False),
        (_snapshot(lora_adapters=frozenset({"a"})), _ctx(lora_adapter="b"), False),
        (_snapshot(lora_adapters=frozenset({"a"})), _ctx(lora_adapter="a"), True),
    ],
    ids=["idle", "busy", "ejected", "unhealthy", "other-model", "lora-miss", "lora-hit"],
)
def test_lone_candidate_answers_as_the_handler(
    routing: dict[str, Any], snapshot: EndpointSnapshot, ctx: RequestContext, is_short: bool
) -> None:
    """A shortcut taken gives the handler's answer; one not taken (a filter may drop
    the endpoint, or keep it failing open) leaves the answer to the handler."""
    handler = build_handler(routing)
    lone = _LoneCandidate.of(handler)
    assert lone is not None
    full = handler.decide(ctx, [snapshot], now=5.0, rng=np.random.default_rng(0), timer=lambda: 0)
    short = lone.decide(ctx, snapshot, 5.0)
    if not is_short:
        assert short is None
        return
    assert short is not None
    assert full.is_routed
    assert _summary(short) == _summary(full)
    assert short.decision.decided_at == 5.0


@pytest.mark.parametrize(
    "routing",
    [
        {"preset": "power-of-two"},  # its picker draws from the rng
        {"preset": "session-sticky"},  # saturation filter
        {"preset": "prefix-approx"},  # prefix-affinity filter
        {"preset": "kv-aware-approx"},
        {"profiles": {"x": {"filters": [], "scorers": [], "picker": "weighted-random"}}},
    ],
    ids=["power-of-two", "session-sticky", "prefix-approx", "kv-aware-approx", "weighted-random"],
)
def test_no_shortcut_when_the_handler_must_run(routing: dict[str, Any]) -> None:
    assert _LoneCandidate.of(build_handler(routing)) is None
