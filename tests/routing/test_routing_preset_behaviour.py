"""The prefix-aware, session and power-of-two presets end to end."""

from __future__ import annotations

import numpy as np
import pytest
from routing_helpers import ctx, snap, zero_timer

from headway.routing import (
    EndpointSnapshot,
    KvBlockIndex,
    ProfileHandler,
    RequestContext,
    RoutingResources,
    build_handler,
)

BLOCKS = tuple(range(100, 110))
CHUNKS = tuple(range(200, 210))
CAP = {"block_size": 16, "num_gpu_blocks": 1000}  # 16,000 tokens


def fleet(**tokens: int) -> tuple[EndpointSnapshot, ...]:
    return tuple(snap(i, num_in_flight_tokens=tokens.get(i, 0), **CAP) for i in "abcd")


def decide(handler: ProfileHandler, c: RequestContext, eps: tuple[EndpointSnapshot, ...]) -> str:
    result = handler.decide(c, eps, now=0.0, rng=np.random.default_rng(3), timer=zero_timer)
    handler.observe(c, result)
    assert result.decision.endpoint_id is not None
    return result.decision.endpoint_id


def kv_aware() -> tuple[ProfileHandler, KvBlockIndex]:
    kv = KvBlockIndex()
    kv.store("c", BLOCKS)
    return build_handler({"preset": "kv-aware"}, resources=RoutingResources(kv_index=kv)), kv


def test_kv_aware_goes_to_the_cache_holder() -> None:
    handler, _ = kv_aware()
    assert decide(handler, ctx(block_hashes=BLOCKS), fleet()) == "c"


@pytest.mark.parametrize(
    ("holder_tokens", "expected"),
    [(4000, "c"), (12000, "c"), (16001, "a")],
    ids=["lightly-loaded-holder", "busy-holder-still-wins", "saturated-holder-filtered"],
)
def test_kv_aware_trades_cache_for_load(holder_tokens: int, expected: str) -> None:
    """prefix 2 : token-load 1 : least-request 1. With equal request counts a full match
    (2) beats an idle peer's token-load advantage (at most 1), so the holder keeps the
    request until the saturation filter drops it (token load over its KV capacity)."""
    handler, _ = kv_aware()
    c = ctx(block_hashes=BLOCKS)
    assert decide(handler, c, fleet(c=holder_tokens, b=100, d=200)) == expected


def test_kv_aware_falls_back_to_approx_when_the_holder_is_stale() -> None:
    handler, kv = kv_aware()
    c = ctx(block_hashes=BLOCKS, chunk_hashes=CHUNKS)
    assert decide(handler, c, fleet()) == "c"  # observe records the chunks on c
    kv.clear_endpoint("c")  # c's events were lost (e.g. a gap) ...
    kv.mark_stale("c")  # ... and the subscriber flags it
    assert decide(handler, c, fleet()) == "c", "the approximate index still knows c"


def test_kv_aware_approx_learns_from_its_own_routing() -> None:
    handler = build_handler({"preset": "kv-aware-approx"})
    c = ctx(chunk_hashes=CHUNKS)
    first = decide(handler, c, fleet())
    others = {i: 500 for i in "abcd" if i != first}
    assert decide(handler, c, fleet(**{first: 2000}, **others)) == first


def test_kv_aware_leaves_a_holder_busier_by_both_measures() -> None:
    handler, _ = kv_aware()
    c = ctx(block_hashes=BLOCKS)
    busy = tuple(
        snap(i, num_in_flight_tokens=8000 if i == "c" else 0,
             num_in_flight_requests=3 if i == "c" else 0, **CAP)
        for i in "abcd"
    )  # fmt: skip
    assert decide(handler, c, busy) != "c"


@pytest.mark.parametrize("preset", ["kv-aware", "kv-aware-approx"])
def test_kv_aware_keeps_a_holder_one_request_busier(preset: str) -> None:
    """The affinity filter: a holder with one more (cache-hitting) request in flight than
    idle peers keeps the next turn of its conversation. The relative load terms alone
    (busiest scores 0 on both) would outweigh a partial prefix match and move it."""
    kv = KvBlockIndex()
    kv.store("c", BLOCKS)
    handler = build_handler({"preset": preset}, resources=RoutingResources(kv_index=kv))
    first = ctx(block_hashes=BLOCKS, chunk_hashes=CHUNKS)
    home = decide(handler, first, fleet())  # approx: recorded; precise: c holds it
    next_turn = ctx(block_hashes=(*BLOCKS, 999), chunk_hashes=(*CHUNKS, 998))  # 10 of 11
    busier = tuple(
        snap(i, num_in_flight_tokens=150 if i == home else 0,
             num_in_flight_requests=1 if i == home else 0, **CAP)
        for i in "abcd"
    )  # fmt: skip
    assert decide(handler, next_turn, busier) == home


@pytest.mark.parametrize(
    "saturated",
    [{"kv_cache_usage": 0.95}, {"num_queued_requests": 9}],
    ids=["kv-usage-over-bound", "queue-over-bound"],
)
def test_kv_aware_keeps_a_saturated_holder(saturated: dict[str, float]) -> None:
    """Saturation comes after affinity: a warm holder whose engine is over the queue or
    KV-use bound still gets its cache hit (recomputing the prompt elsewhere would cost
    more), while a cold prompt avoids the saturated endpoint."""
    handler, _ = kv_aware()
    eps = tuple(snap(i, **CAP, **(saturated if i == "c" else {})) for i in "abcd")
    assert decide(handler, ctx(block_hashes=BLOCKS), eps) == "c"
    cold = ctx(request_id="cold", block_hashes=(7, 8, 9))
    assert decide(handler, cold, eps) != "c"


def test_prefix_approx_keeps_affinity_until_overloaded() -> None:
    handler = build_handler({"preset": "prefix-approx"})
    c = ctx(chunk_hashes=CHUNKS)
    home = decide(handler, c, fleet())
    others = {i: 1000 for i in "abcd" if i != home}
    # Mean 1,500: home's 3,000 is over 1.5x the mean but not 4,096 tokens over it.
    assert decide(handler, c, fleet(**{home: 3000}, **others)) == home
    # Mean 3,750: 12,000 is over both the relative and the absolute imbalance.
    assert decide(handler, c, fleet(**{home: 12000}, **others)) != home
    # Balanced, but over 0.8 of its KV capacity (16,000 tokens): spreads too.
    crowded = {i: 12900 for i in "abcd" if i != home}
    assert decide(handler, c, fleet(**{home: 13000}, **crowded)) != home


def test_power_of_two_prefers_the_lighter_of_two() -> None:
    handler = build_handler({"preset": "power-of-two"})
    eps = (snap("a", num_in_flight_requests=9), snap("b", num_in_flight_requests=1))
    assert {decide(handler, ctx(), eps) for _ in range(5)} == {"b"}
