"""`routed-load` scorer: decayed work per endpoint, relative scores, new and departed
endpoints, bounded state."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from routing_helpers import ctx, snap, zero_timer

from headway.routing import KvBlockIndex, RequestScratch, RoutingResources, build_handler
from headway.routing.config import ConfigError
from headway.routing.decision import Decision, NoEndpointReason, Outcome
from headway.routing.plugins.routed_load import RoutedLoadParams, RoutedLoadScorer


def routed(endpoint_id: str) -> Decision:
    return Decision("p", Outcome.ROUTED, 0.0, 1, 1, endpoint_id=endpoint_id)


def scorer_after(history: list[str], **params: Any) -> RoutedLoadScorer:
    s = RoutedLoadScorer(RoutedLoadParams(**params))
    for endpoint_id in history:
        s.observe(ctx(num_prompt_tokens_est=100, max_output_tokens=20), routed(endpoint_id))
    return s


def scores(s: RoutedLoadScorer, ids: list[str]) -> dict[str, float]:
    out = s.score(ctx(), tuple(snap(i) for i in ids), RequestScratch(0.0))
    return {k: round(v, 4) for k, v in out.items()}


@pytest.mark.parametrize(
    ("history", "params", "candidates", "expected"),
    [
        ([], {}, ["a", "b"], {"a": 1.0, "b": 1.0}),
        # "b" joins level with the least known ("a": 1), then "a" gets two more.
        (["a", "b", "a", "a"], {"half_life_decisions": 10**9}, ["a", "b"],
         {"a": 0.0, "b": 0.3333}),
        (["a", "a", "b"], {"half_life_decisions": 10**9}, ["a", "b"], {"a": 0.3333, "b": 0.0}),
        # Only the candidates count: a=4, b=3, c=2; without "a", "b" is the busiest.
        (["a", "b", "b", "c", "a", "a", "a"], {"half_life_decisions": 10**9}, ["b", "c"],
         {"b": 0.0, "c": 0.3333}),
        # A candidate without history counts as the least known candidate (2).
        (["a", "b", "a", "a"], {"half_life_decisions": 10**9}, ["a", "b", "new"],
         {"a": 0.0, "b": 0.3333, "new": 0.3333}),
        # Decay: 4 to "a", then 4 to "b" (two half-lives): a = x / 4, b = x / 4 + x.
        (["a"] * 4 + ["b"] * 4, {"half_life_decisions": 2}, ["a", "b"], {"a": 0.8, "b": 0.0}),
        (["a", "b"], {"unit": "tokens", "half_life_decisions": 10**9}, ["a", "b"],
         {"a": 0.5, "b": 0.0}),
        (["a", "a", "b"], {"normalize": "range", "half_life_decisions": 10**9},
         ["a", "b", "c"], {"a": 1.0, "b": 0.0, "c": 1.0}),
    ],
    ids=[
        "no-history-all-equal",
        "relative-to-busiest",
        "joins-level-with-least",
        "candidates-only",
        "new-endpoint-level-with-least",
        "decay-by-decisions",
        "tokens-unit",
        "range-normalization",
    ],
)  # fmt: skip
def test_scores(
    history: list[str], params: dict[str, Any], candidates: list[str], expected: dict[str, float]
) -> None:
    assert scores(scorer_after(history, **params), candidates) == expected


@pytest.mark.parametrize(
    ("unit", "expected_a"),
    [("requests", 2.0), ("tokens", 240.0)],
    ids=["requests-count-one", "tokens-count-prompt-and-output"],
)
def test_unit_of_work(unit: str, expected_a: float) -> None:
    s = scorer_after(["a", "a"], unit=unit, half_life_decisions=10**9)
    assert s.routed_load("a") == pytest.approx(expected_a)
    assert s.routed_load("b") is None


def test_new_endpoint_joins_level_with_the_least_in_observe() -> None:
    s = scorer_after(["a"] * 6 + ["b"] * 2, half_life_decisions=10**9)  # a=6, b=7+1
    s.observe(ctx(), routed("new"))
    assert s.routed_load("new") == pytest.approx(6.0 + 1.0)


def test_half_life_halves_old_work() -> None:
    s = scorer_after(["a"] + ["b"] * 8, half_life_decisions=8)
    assert s.routed_load("a") == pytest.approx(0.5, rel=1e-9)


def test_no_endpoint_decisions_change_nothing() -> None:
    s = scorer_after(["a"], half_life_decisions=4)
    reason = NoEndpointReason.NO_ENDPOINTS
    s.observe(ctx(), Decision("p", Outcome.NO_ENDPOINT, 0.0, 0, 0, reason=reason))
    assert s.routed_load("a") == pytest.approx(1.0)


def test_state_is_bounded_departed_endpoints_are_dropped() -> None:
    # 64 endpoints routed once each, then only "a" for a long time: the others decay
    # below the forget threshold and are dropped at a renormalization.
    s = scorer_after([f"e{i}" for i in range(64)] + ["a"] * 2000, half_life_decisions=16)
    assert s.routed_load("e0") is None
    assert s.routed_load("a") == pytest.approx(1.0 / (1.0 - 2.0 ** (-1 / 16)), rel=1e-6)
    assert s.num_endpoints_tracked == 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"half_life_decisions": 0}, "half_life_decisions"),
        ({"unit": "bytes"}, "unit"),
        ({"normalize": "absolute"}, "normalize"),
        ({"cold_below_match": 0.0}, "cold_below_match"),
        ({"cold_below_match": 1.5}, "cold_below_match"),
    ],
    ids=["half-life-positive", "unit-known", "normalize-known", "cold-above-0", "cold-at-most-1"],
)
def test_params_validated(params: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        RoutedLoadParams(**params)
    assert field in str(err.value)


def _kv_aware_with_routed_load(prefix_scorer: str, source: str) -> dict[str, Any]:
    """kv-aware's profile (routing.presets) with routed-load 2 added."""
    return {
        "filters": ["healthy", "serves-model",
                    {"type": "prefix-affinity-until-saturated", "params": {"source": source}},
                    "saturation"],
        "scorers": [{"type": prefix_scorer, "weight": 2.0}, {"type": "token-load", "weight": 1.0},
                    {"type": "least-request", "weight": 1.0},
                    {"type": "routed-load", "weight": 2.0}],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("prefix_scorer", "source"),
    [("approx-prefix", "approx"), ("precise-prefix", "auto")],
    ids=["kv-aware-approx-shape", "kv-aware-shape"],
)
def test_idle_misses_spread_evenly(prefix_scorer: str, source: str) -> None:
    """Every request a miss on an idle fleet (the in-flight terms tie every time): the
    routed-load term, not the rng, decides: the four endpoints take 10 each, give or
    take the start-up bias of one request (docstring)."""
    resources = RoutingResources(kv_index=KvBlockIndex())
    config = {"profiles": {"p": _kv_aware_with_routed_load(prefix_scorer, source)}}
    handler = build_handler(config, resources=resources)
    rng = np.random.default_rng(3)
    counts = dict.fromkeys("abcd", 0)
    eps = tuple(snap(i) for i in counts)
    for k in range(40):
        c = ctx(request_id=f"r{k}", num_prompt_tokens_est=100)
        result = handler.decide(c, eps, now=0.0, rng=rng, timer=zero_timer)
        assert result.decision.endpoint_id is not None
        counts[result.decision.endpoint_id] += 1
        handler.observe(c, result)
    assert max(counts.values()) - min(counts.values()) <= 1


BLOCKS = tuple(range(100, 110))  # a 10-block prompt


def _new_tokens_scorer() -> tuple[RoutedLoadScorer, tuple[Any, ...]]:
    """unit new-tokens; KV events say `warm` holds 9 of the prompt's 10 blocks."""
    kv = KvBlockIndex()
    kv.store("warm", BLOCKS[:9])
    scorer = RoutedLoadScorer(
        RoutedLoadParams(unit="new-tokens", half_life_decisions=10**9),
        RoutingResources(kv_index=kv),
    )
    return scorer, (snap("warm"), snap("cold"))


@pytest.mark.parametrize(
    ("chosen", "expected"),
    [("warm", 0.1 * 330 + 20), ("cold", 330.0 + 20)],
    ids=["a-hit-writes-its-uncached-tail", "a-miss-writes-the-whole-prompt"],
)
def test_new_tokens_count_what_the_chosen_engine_writes(chosen: str, expected: float) -> None:
    """w grows by the prompt tokens the chosen endpoint did not hold when it was chosen
    (as `score` saw them) plus the request's output: the blocks it writes there."""
    scorer, eps = _new_tokens_scorer()
    c = ctx(block_hashes=BLOCKS, num_prompt_tokens_est=330, max_output_tokens=20)
    scorer.score(c, eps, RequestScratch(0.0))
    scorer.observe(c, routed(chosen))
    assert scorer.routed_load(chosen) == pytest.approx(expected)


def test_new_tokens_without_a_scored_decision_count_the_whole_prompt() -> None:
    """`observe` for a request `score` never saw (or another request's scores): the
    conservative reading, every prompt token written."""
    scorer, eps = _new_tokens_scorer()
    c = ctx(block_hashes=BLOCKS, num_prompt_tokens_est=330, max_output_tokens=20)
    scorer.score(ctx(request_id="other", block_hashes=BLOCKS), eps, RequestScratch(0.0))
    scorer.observe(c, routed("warm"))
    assert scorer.routed_load("warm") == pytest.approx(350.0)


@pytest.mark.parametrize(
    ("unit", "expected"),
    [("new-tokens", "busy"), ("requests", "churn"), ("tokens", "churn")],
    ids=["new-tokens-follow-the-cache-writes", "requests-count-calls", "tokens-count-gross"],
)
def test_where_a_cold_prefix_goes(unit: str, expected: str) -> None:
    """Through the handler, kv-aware's shape plus routed-load (range, 3): one cold prompt
    each, then `busy` serves six warm turns of a tenant it holds (few new tokens each)
    and `churn` one more cold prompt; nothing in flight now. A new tenant's first prompt
    goes where fewer tokens were written lately (new-tokens: `busy`), though `busy`
    took more requests and more prompt tokens (the other units: `churn`)."""
    kv = KvBlockIndex()
    hot = tuple(range(1000, 1010))
    kv.store("busy", hot)
    profile = _kv_aware_with_routed_load("precise-prefix", "auto")
    profile["scorers"][-1] = {
        "type": "routed-load", "weight": 3.0, "params": {"unit": unit, "normalize": "range"},
    }  # fmt: skip
    handler = build_handler({"profiles": {"p": profile}}, resources=RoutingResources(kv_index=kv))
    rng = np.random.default_rng(0)
    busy, churn = snap("busy"), snap("churn")

    def route(name: str, blocks: tuple[int, ...], eps: tuple[Any, ...]) -> str | None:
        c = ctx(request_id=name, block_hashes=blocks, num_prompt_tokens_est=330)
        result = handler.decide(c, eps, now=0.0, rng=rng, timer=zero_timer)
        handler.observe(c, result)
        return result.decision.endpoint_id

    route("cold0", (5000,), (busy,))
    route("cold1", (5001,), (churn,))
    for k in range(6):  # the hot tenant's turns: affinity keeps them on its holder
        assert route(f"hot{k}", hot, (busy, churn)) == "busy"
    route("cold2", (5002,), (churn,))
    assert route("new", tuple(range(7000, 7010)), (busy, churn)) == expected


@pytest.mark.parametrize(
    ("held_blocks", "expected"),
    [(0, {"warm": 0.0, "cold": 1.0}), (2, {"warm": 0.0, "cold": 1.0}),
     (3, {"warm": 1.0, "cold": 1.0}), (9, {"warm": 1.0, "cold": 1.0})],
    ids=["cached-nowhere", "below-the-threshold", "at-the-threshold", "warm"],
)  # fmt: skip
def test_cold_below_match_scores_only_cold_prompts(
    held_blocks: int, expected: dict[str, float]
) -> None:
    """With `cold_below_match` 0.3 the term ranks the candidates (here: `warm` took
    more work) only for a prompt no candidate holds 30% of; a prompt some candidate
    holds 3 of 10 blocks of (an overloaded holder the affinity filter let through)
    scores 1.0 everywhere, left to the prefix and load terms."""
    kv = KvBlockIndex()
    kv.store("warm", BLOCKS[:held_blocks])
    scorer = RoutedLoadScorer(
        RoutedLoadParams(normalize="range", half_life_decisions=10**9, cold_below_match=0.3),
        RoutingResources(kv_index=kv),
    )
    scorer.observe(ctx(request_id="a"), routed("warm"))
    scorer.observe(ctx(request_id="b"), routed("warm"))
    scorer.observe(ctx(request_id="c"), routed("cold"))  # joins level with warm's 2, +1
    scorer.observe(ctx(request_id="d"), routed("warm"))
    scorer.observe(ctx(request_id="e"), routed("warm"))  # warm 4, cold 3
    eps = (snap("warm"), snap("cold"))
    got = scorer.score(ctx(block_hashes=BLOCKS), eps, RequestScratch(0.0))
    assert dict(got) == expected
