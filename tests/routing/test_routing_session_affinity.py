"""session-affinity: stickiness, its release when the sticky endpoint is overloaded,
saturated or gone, its return, and consistent hashing's limited reshuffle."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from routing_helpers import ctx, snap, zero_timer

from headway.routing import (
    ConfigError,
    EndpointSnapshot,
    ProfileHandler,
    RequestScratch,
    build_handler,
)
from headway.routing.config import params_from_mapping
from headway.routing.plugins.session_affinity import (
    SessionAffinityParams,
    SessionAffinityScorer,
)

IDS = [f"ep-{i}" for i in range(5)]
SESSIONS = [f"session-{i}" for i in range(200)]


def fleet(**in_flight: int) -> tuple[EndpointSnapshot, ...]:
    return tuple(snap(i, num_in_flight_requests=in_flight.get(i.replace("-", "_"), 0)) for i in IDS)


def target(scorer: SessionAffinityScorer, session: str, eps: tuple[EndpointSnapshot, ...]) -> str:
    scores = scorer.score(ctx(session_id=session), eps, RequestScratch(0.0))
    (best,) = [i for i, s in scores.items() if s == 1.0]
    assert sorted(scores.values()) == [0.0] * (len(eps) - 1) + [1.0]
    return best


def test_no_session_id_scores_all_equal() -> None:
    scorer = SessionAffinityScorer(SessionAffinityParams())
    assert set(scorer.score(ctx(), fleet(), RequestScratch(0.0)).values()) == {1.0}


def test_sticky_and_spread() -> None:
    scorer = SessionAffinityScorer(SessionAffinityParams())
    first = {s: target(scorer, s, fleet()) for s in SESSIONS}
    fresh = SessionAffinityScorer(SessionAffinityParams())  # another process: same ring
    assert {s: target(fresh, s, fleet()) for s in SESSIONS} == first
    counts = Counter(first.values())
    assert set(counts) == set(IDS)
    assert max(counts.values()) < 2 * len(SESSIONS) / len(IDS), "virtual nodes spread sessions"


def test_released_when_overloaded_and_returns() -> None:
    scorer = SessionAffinityScorer(SessionAffinityParams(epsilon=0.25))
    home = target(scorer, "s", fleet())
    loads = {i.replace("-", "_"): 4 for i in IDS}
    assert target(scorer, "s", fleet(**loads)) == home, "balanced load: stays"
    # Home at 8 with the rest at 4: bound = ceil(1.25 * (24 + 1) / 5) = 7, 8 + 1 > 7.
    loads[home.replace("-", "_")] = 8
    moved = target(scorer, "s", fleet(**loads))
    assert moved != home
    walk = scorer.walk_order("s", IDS)
    assert walk[0] == home and moved == walk[1], "moves to the next endpoint on its walk"
    loads[home.replace("-", "_")] = 4
    assert target(scorer, "s", fleet(**loads)) == home, "comes back when the load clears"


def test_removing_an_endpoint_moves_only_its_sessions() -> None:
    scorer = SessionAffinityScorer(SessionAffinityParams())
    before = {s: target(scorer, s, fleet()) for s in SESSIONS}
    gone = "ep-2"
    rest = tuple(e for e in fleet() if e.endpoint_id != gone)
    after = {s: target(scorer, s, rest) for s in SESSIONS}
    assert all(after[s] == before[s] for s in SESSIONS if before[s] != gone)
    assert all(after[s] != gone for s in SESSIONS)


@settings(max_examples=60, deadline=None)
@given(
    loads=st.lists(st.integers(0, 40), min_size=1, max_size=5),
    session=st.sampled_from(SESSIONS),
    epsilon=st.sampled_from([0.05, 0.25, 1.0]),
)
def test_target_is_within_the_load_bound(loads: list[int], session: str, epsilon: float) -> None:
    eps = tuple(snap(f"ep-{i}", num_in_flight_requests=n) for i, n in enumerate(loads))
    scorer = SessionAffinityScorer(SessionAffinityParams(epsilon=epsilon))
    chosen = next(e for e in eps if e.endpoint_id == target(scorer, session, eps))
    mean_after = (sum(loads) + 1) / len(loads)
    assert chosen.num_in_flight_requests + 1 <= (1 + epsilon) * mean_after + 1


# -- the session-sticky preset ---------------------------------------------------------------


def decide(handler: ProfileHandler, session: str | None, eps: tuple[EndpointSnapshot, ...]) -> str:
    c = ctx(session_id=session)
    result = handler.decide(c, eps, now=0.0, rng=np.random.default_rng(0), timer=zero_timer)
    handler.observe(c, result)
    assert result.decision.endpoint_id is not None
    return result.decision.endpoint_id


def with_field(
    eps: tuple[EndpointSnapshot, ...], endpoint_id: str, **fields: Any
) -> tuple[EndpointSnapshot, ...]:
    return tuple(snap(e.endpoint_id, **fields) if e.endpoint_id == endpoint_id else e for e in eps)


def test_preset_sticks_and_releases_when_saturated_or_unhealthy() -> None:
    handler = build_handler({"preset": "session-sticky"})
    home = decide(handler, "s", fleet())
    assert [decide(handler, "s", fleet()) for _ in range(5)] == [home] * 5
    saturated = with_field(fleet(), home, num_queued_requests=50)  # saturation filter drops it
    moved = decide(handler, "s", saturated)
    assert moved != home
    assert decide(handler, "s", with_field(fleet(), home, is_healthy=False)) == moved
    assert decide(handler, "s", fleet()) == home, "back once it recovers"


def test_preset_without_session_is_least_request() -> None:
    handler = build_handler({"preset": "session-sticky"})
    eps = tuple(snap(i, num_in_flight_requests=0 if i == "ep-3" else 2) for i in IDS)
    assert decide(handler, None, eps) == "ep-3"


@pytest.mark.parametrize(
    ("raw", "message"),
    [({"epsilon": 0.0}, "epsilon: must be > 0"), ({"num_virtual_nodes": 0}, "num_virtual_nodes")],
    ids=["epsilon", "virtual-nodes"],
)
def test_params_validated(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=f"^params.{message}"):
        params_from_mapping(SessionAffinityParams, raw, "params")
