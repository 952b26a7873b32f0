"""approx-prefix, precise-prefix (with its fallback to the approximate index on stale
endpoints or without block hashes) and prefix-affinity-until-saturated; match lengths
computed once per decision."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pytest
from routing_helpers import ctx, snap, zero_timer

from headway.routing import (
    ApproxPrefixIndex,
    ConfigError,
    Decision,
    KvBlockIndex,
    Outcome,
    RequestScratch,
    RoutingResources,
    build_handler,
)
from headway.routing.plugins.approx_prefix import ApproxPrefixParams, ApproxPrefixScorer
from headway.routing.plugins.precise_prefix import PrecisePrefixParams, PrecisePrefixScorer
from headway.routing.plugins.prefix_affinity import PrefixAffinityFilter, PrefixAffinityParams
from headway.routing.prefix.matching import APPROX_MATCH_CHUNKS, PRECISE_MATCH_BLOCKS

BLOCKS = (11, 12, 13, 14)
CHUNKS = (21, 22, 23, 24)
EPS = (snap("a"), snap("b"), snap("c"))


def routed_to(endpoint_id: str) -> Decision:
    return Decision("p", Outcome.ROUTED, 0.0, 1, 1, endpoint_id=endpoint_id)


def resources() -> RoutingResources:
    """KV events: a holds 4 blocks, b 2, c none. Routed chunks: c got all 4, a 1."""
    kv = KvBlockIndex()
    kv.store("a", BLOCKS)
    kv.store("b", BLOCKS[:2])
    approx = ApproxPrefixIndex()
    approx.record("c", CHUNKS)
    approx.record("a", CHUNKS[:1])
    return RoutingResources(kv_index=kv, approx_index=approx)


# -- approx-prefix ---------------------------------------------------------------------------


def test_approx_prefix_scores_the_matched_fraction() -> None:
    scorer = ApproxPrefixScorer(ApproxPrefixParams(), resources())
    scores = scorer.score(ctx(chunk_hashes=CHUNKS), EPS, RequestScratch(0.0))
    assert scores == {"a": 0.25, "b": 0.0, "c": 1.0}


def test_approx_prefix_learns_from_observe() -> None:
    scorer = ApproxPrefixScorer(ApproxPrefixParams(), RoutingResources())
    c = ctx(chunk_hashes=(1, 2, 3))
    assert scorer.score(c, EPS, RequestScratch(0.0)) == {"a": 0.0, "b": 0.0, "c": 0.0}
    scorer.observe(c, routed_to("b"))
    later = ctx(chunk_hashes=(1, 2, 9, 10))  # same first two chunks, then new text
    assert scorer.score(later, EPS, RequestScratch(0.0)) == {"a": 0.0, "b": 0.5, "c": 0.0}


def test_approx_prefix_without_chunk_hashes_scores_zero() -> None:
    scorer = ApproxPrefixScorer(ApproxPrefixParams(), resources())
    assert set(scorer.score(ctx(), EPS, RequestScratch(0.0)).values()) == {0.0}


# -- precise-prefix --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stale", "fields", "expected"),
    [
        ((), {"block_hashes": BLOCKS, "chunk_hashes": CHUNKS}, {"a": 1.0, "b": 0.5, "c": 0.0}),
        (("c",), {"block_hashes": BLOCKS, "chunk_hashes": CHUNKS}, {"a": 1.0, "b": 0.5, "c": 1.0}),
        (("a",), {"block_hashes": BLOCKS, "chunk_hashes": CHUNKS}, {"a": 0.25, "b": 0.5, "c": 0.0}),
        ((), {"chunk_hashes": CHUNKS}, {"a": 0.25, "b": 0.0, "c": 1.0}),
        ((), {}, {"a": 0.0, "b": 0.0, "c": 0.0}),
        (("a", "b", "c"), {"block_hashes": BLOCKS}, {"a": 0.0, "b": 0.0, "c": 0.0}),
    ],
    ids=[
        "precise",
        "stale-endpoint-falls-back-to-approx",
        "stale-holder-loses-its-precise-score",
        "no-block-hashes-all-approx",
        "nothing-to-match",
        "all-stale-no-chunks",
    ],
)
def test_precise_prefix(
    stale: tuple[str, ...], fields: dict[str, Any], expected: dict[str, float]
) -> None:
    res = resources()
    assert res.kv_index is not None
    for e in stale:
        res.kv_index.mark_stale(e)
    scorer = PrecisePrefixScorer(PrecisePrefixParams(), res)
    assert scorer.score(ctx(**fields), EPS, RequestScratch(0.0)) == expected


def test_precise_prefix_fallback_index_learns_from_observe() -> None:
    res = RoutingResources(kv_index=KvBlockIndex())
    handler = build_handler({"profiles": {"p": {"scorers": ["precise-prefix"]}}}, resources=res)
    c = ctx(chunk_hashes=(5, 6))
    first = handler.decide(c, EPS, now=0.0, rng=np.random.default_rng(0), timer=zero_timer)
    handler.observe(c, first)
    again = handler.decide(c, EPS, now=1.0, rng=np.random.default_rng(1), timer=zero_timer)
    assert again.decision.endpoint_id == first.decision.endpoint_id
    assert again.decision.num_tied == 1, "the fallback index now prefers the first pick"


def test_precise_prefix_needs_kv_events() -> None:
    with pytest.raises(ConfigError, match=r"^profiles\.p\.scorers\[1\]: .*KV events"):
        build_handler({"profiles": {"p": {"scorers": ["token-load", "precise-prefix"]}}})
    with pytest.raises(ConfigError, match=r"^profiles\.kv-aware\.scorers\[0\]: .*KV events"):
        build_handler({"preset": "kv-aware"})


# -- shared match lengths --------------------------------------------------------------------


class CountingKvIndex(KvBlockIndex):
    def __init__(self) -> None:
        super().__init__()
        self.num_calls = 0

    def match_lengths(
        self, block_hashes: Sequence[int], endpoint_ids: Iterable[str]
    ) -> dict[str, int]:
        self.num_calls += 1
        return super().match_lengths(block_hashes, endpoint_ids)


class CountingApproxIndex(ApproxPrefixIndex):
    def __init__(self) -> None:
        super().__init__()
        self.num_calls = 0

    def match_lengths(self, hashes: Sequence[int], endpoint_ids: Iterable[str]) -> dict[str, int]:
        self.num_calls += 1
        return super().match_lengths(hashes, endpoint_ids)


def test_match_lengths_computed_once_per_decision() -> None:
    kv, approx = CountingKvIndex(), CountingApproxIndex()
    kv.store("a", BLOCKS)
    kv.mark_stale("c")
    config = {
        "profiles": {
            "p": {
                "filters": ["prefix-affinity-until-saturated"],
                "scorers": ["precise-prefix", "approx-prefix"],
            }
        }
    }
    handler = build_handler(config, resources=RoutingResources(kv_index=kv, approx_index=approx))
    c = ctx(block_hashes=BLOCKS, chunk_hashes=CHUNKS)
    handler.decide(c, EPS, now=0.0, rng=np.random.default_rng(0), timer=zero_timer)
    assert kv.num_calls == 1
    # The filter asks approx about the stale endpoint only; approx-prefix about all.
    assert approx.num_calls == 2


def test_scratch_keys_hold_the_lengths() -> None:
    scratch = RequestScratch(0.0)
    scorer = PrecisePrefixScorer(PrecisePrefixParams(), resources())
    scorer.score(ctx(block_hashes=BLOCKS, chunk_hashes=CHUNKS), EPS, scratch)
    assert scratch.get(PRECISE_MATCH_BLOCKS) == {"a": 4, "b": 2, "c": 0}
    assert APPROX_MATCH_CHUNKS not in scratch


# -- prefix-affinity-until-saturated ---------------------------------------------------------

CAP = {"block_size": 16, "num_gpu_blocks": 100}  # 1,600 tokens


def affinity(
    eps: tuple[Any, ...], c: Any = None, res: RoutingResources | None = None, **params: Any
) -> list[str]:
    f = PrefixAffinityFilter(PrefixAffinityParams(**params), res or resources())
    c = c or ctx(block_hashes=BLOCKS, chunk_hashes=CHUNKS)
    return [e.endpoint_id for e in f.filter(c, eps, RequestScratch(0.0))]


@pytest.mark.parametrize(
    ("eps", "params", "expected"),
    [
        (EPS, {}, ["a"]),
        ((snap("a", num_in_flight_tokens=1200, **CAP), snap("b"), snap("c")), {}, ["a"]),
        ((snap("a", num_in_flight_tokens=1300, **CAP), snap("b"), snap("c")), {}, ["a", "b", "c"]),
        ((snap("b"), snap("c")), {}, ["b"]),
        ((snap("b"), snap("c")), {"min_match_fraction": 0.6}, ["b", "c"]),
        (EPS, {"match_tolerance": 0.5}, ["a", "b"]),
        (EPS, {"source": "approx"}, ["c"]),
        (
            (snap("a", num_in_flight_tokens=5001), snap("b")),
            {"max_in_flight_tokens": 5000},
            ["a", "b"],
        ),
        ((snap("a", num_in_flight_tokens=5000), snap("b")), {"max_in_flight_tokens": 5000}, ["a"]),
        (
            (snap("a", num_in_flight_tokens=9000), snap("b", num_in_flight_tokens=100)),
            {},
            ["a", "b"],
        ),
        ((snap("a", num_in_flight_tokens=3000), snap("b", num_in_flight_tokens=0)), {}, ["a"]),
    ],
    ids=[
        "best-match-kept",
        "warm-under-token-bound",
        "warm-over-token-bound-passes-all",
        "best-among-the-rest",
        "best-below-min-match-passes-all",
        "tolerance-widens-warm-set",
        "approx-source",
        "absolute-bound-exceeded",
        "absolute-bound-met",
        "relative-imbalance",
        "small-imbalance-keeps-affinity",
    ],
)
def test_prefix_affinity(eps: tuple[Any, ...], params: dict[str, Any], expected: list[str]) -> None:
    assert affinity(eps, **params) == expected


def test_prefix_affinity_stale_endpoint_uses_approx() -> None:
    res = resources()
    assert res.kv_index is not None
    res.kv_index.mark_stale("c")  # c's KV events are unreliable; it was sent the prompt
    assert affinity(EPS, res=res) == ["a", "c"]


def test_prefix_affinity_no_prefix_passes_all() -> None:
    assert affinity(EPS, c=ctx()) == ["a", "b", "c"]


def test_prefix_affinity_precise_source_needs_kv_events() -> None:
    raw = {
        "filters": [{"type": "prefix-affinity-until-saturated", "params": {"source": "precise"}}]
    }
    with pytest.raises(ConfigError, match=r"^profiles\.p\.filters\[0\]\.params\.source: "):
        build_handler({"profiles": {"p": raw}})
    build_handler({"profiles": {"p": raw}}, resources=RoutingResources(kv_index=KvBlockIndex()))
