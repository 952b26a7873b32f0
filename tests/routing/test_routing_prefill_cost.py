"""`prefill-cost`: in-flight tokens plus the prompt tokens an endpoint would compute,
one currency for the cache-versus-load trade."""

from __future__ import annotations

import numpy as np
import pytest
from routing_helpers import ctx, snap, zero_timer

from headway.routing import (
    ApproxPrefixIndex,
    ConfigError,
    KvBlockIndex,
    RequestContext,
    RequestScratch,
    RoutingResources,
    build_handler,
)
from headway.routing.plugins.prefill_cost import PrefillCostParams, PrefillCostScorer

BLOCKS = tuple(range(100, 110))  # a 10-block prompt (320 tokens at 32 a block)
PROMPT_TOKENS = 330


def kv_resources() -> RoutingResources:
    """KV events: `warm` holds 9 of the 10 blocks, `cold` none."""
    kv = KvBlockIndex()
    kv.store("warm", BLOCKS[:9])
    return RoutingResources(kv_index=kv, approx_index=ApproxPrefixIndex())


def request() -> RequestContext:
    return ctx(block_hashes=BLOCKS, num_prompt_tokens_est=PROMPT_TOKENS)


def test_costs_add_the_uncached_prompt_to_the_queued_work() -> None:
    scorer = PrefillCostScorer(PrefillCostParams(), kv_resources())
    eps = (snap("warm", num_in_flight_tokens=500), snap("cold", num_in_flight_tokens=400))
    costs = scorer.costs(request(), eps, RequestScratch(0.0))
    assert costs == pytest.approx({"warm": 500 + 0.1 * 330, "cold": 400 + 330})
    scores = scorer.score(request(), eps, RequestScratch(0.0))
    assert scores["warm"] > scores["cold"] == 0.0


@pytest.mark.parametrize(
    ("warm_load", "cold_load", "weight", "expected"),
    [
        (500, 400, 1.0, "warm"),  # the cache saves more than the queue costs
        (1000, 400, 1.0, "cold"),  # 600 tokens more queued > 297 tokens of prefill saved
        (1000, 400, 3.0, "warm"),  # recomputing weighs 3x: 891 saved > 600 more queued
        (0, 0, 0.0, "tie"),  # weight 0: load alone, and equal
    ],
    ids=["stays-warm", "spills-when-the-queue-costs-more", "weight-keeps-it", "load-only-tie"],
)
def test_picks_the_least_work_through_the_handler(
    warm_load: int, cold_load: int, weight: float, expected: str
) -> None:
    handler = build_handler(
        {
            "profiles": {
                "p": {"scorers": [{"type": "prefill-cost", "params": {"new_token_weight": weight}}]}
            }
        },
        resources=kv_resources(),
    )
    eps = (
        snap("warm", num_in_flight_tokens=warm_load),
        snap("cold", num_in_flight_tokens=cold_load),
    )
    result = handler.decide(
        request(),
        eps,
        now=0.0,
        rng=np.random.default_rng(0),
        timer=zero_timer,
    )
    if expected == "tie":
        assert result.decision.num_tied == 2
    else:
        assert result.decision.endpoint_id == expected
        assert result.decision.num_tied == 1


def test_falls_back_to_what_it_routed_where_events_are_stale() -> None:
    res = kv_resources()
    assert res.kv_index is not None
    res.kv_index.mark_stale("warm")
    scorer = PrefillCostScorer(PrefillCostParams(), res)
    chunks = (1, 2, 3, 4)
    c = ctx(block_hashes=BLOCKS, chunk_hashes=chunks, num_prompt_tokens_est=400)
    eps = (snap("warm"), snap("cold"))
    # Stale and never routed there: the warm blocks no longer count.
    assert scorer.costs(c, eps, RequestScratch(0.0)) == {"warm": 400.0, "cold": 400.0}
    handler = build_handler({"profiles": {"p": {"scorers": ["prefill-cost"]}}}, resources=res)
    first = handler.decide(c, eps, now=0.0, rng=np.random.default_rng(0), timer=zero_timer)
    handler.observe(c, first)
    again = handler.decide(c, eps, now=1.0, rng=np.random.default_rng(1), timer=zero_timer)
    assert again.decision.endpoint_id == first.decision.endpoint_id
    assert again.decision.num_tied == 1


def test_without_kv_events_uses_the_approximate_index() -> None:
    approx = ApproxPrefixIndex()
    approx.record("b", (1, 2))
    scorer = PrefillCostScorer(PrefillCostParams(), RoutingResources(approx_index=approx))
    c = ctx(chunk_hashes=(1, 2, 3, 4), num_prompt_tokens_est=100)
    eps = (snap("a"), snap("b"))
    assert scorer.costs(c, eps, RequestScratch(0.0)) == {"a": 100.0, "b": 50.0}


def test_new_token_weight_is_validated() -> None:
    with pytest.raises(ConfigError, match="new_token_weight"):
        build_handler(
            {
                "profiles": {
                    "p": {"scorers": [{"type": "prefill-cost", "params": {"new_token_weight": -1}}]}
                }
            },
            resources=kv_resources(),
        )
