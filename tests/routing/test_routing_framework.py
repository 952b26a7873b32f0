"""The framework: Profile.run (filters -> weighted scorers -> picker), observe, handlers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from routing_helpers import FakeClock, ctx, snap, zero_timer

from headway.routing import (
    ConfigError,
    Decision,
    EndpointRole,
    Endpoints,
    EndpointSnapshot,
    NamedFilter,
    NamedPicker,
    NoEndpointReason,
    Outcome,
    Pick,
    PluginContractError,
    PluginKind,
    PluginTiming,
    PrefillDecodeHandler,
    Profile,
    RequestContext,
    RequestScratch,
    ScratchKey,
    SingleProfileHandler,
    WeightedScorer,
)
from headway.routing.plugins.max_score import MaxScoreParams, MaxScorePicker

# -- fake plugins ---------------------------------------------------------------------------


class DropFilter:
    """Drops the given ids; advances the fake clock by `cost_s`."""

    def __init__(self, drop: str = "", clock: FakeClock | None = None, cost_s: float = 0.0) -> None:
        self.drop, self.clock, self.cost_s = set(drop), clock, cost_s

    def filter(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Endpoints:
        if self.clock is not None:
            self.clock.advance(self.cost_s)
        return tuple(e for e in endpoints if e.endpoint_id not in self.drop)


class RoleFilter:
    def __init__(self, role: EndpointRole) -> None:
        self.role = role

    def filter(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Endpoints:
        return tuple(e for e in endpoints if e.role is self.role)


class FixedScorer:
    """Returns fixed scores (default 0.5) for the candidates it is given."""

    def __init__(
        self,
        scores: Mapping[str, float] | None = None,
        clock: FakeClock | None = None,
        cost_s: float = 0.0,
    ) -> None:
        self.scores, self.clock, self.cost_s = dict(scores or {}), clock, cost_s
        self.observed: list[str | None] = []

    def score(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Mapping[str, float]:
        if self.clock is not None:
            self.clock.advance(self.cost_s)
        return {e.endpoint_id: self.scores.get(e.endpoint_id, 0.5) for e in endpoints}

    def observe(self, ctx: RequestContext, decision: Decision) -> None:
        self.observed.append(decision.endpoint_id)


class RawScorer:
    """Returns exactly what it is told to, contract or not."""

    def __init__(self, scores: Mapping[str, float]) -> None:
        self.scores = scores

    def score(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Mapping[str, float]:
        return self.scores


class ImpostorFilter:
    """Returns an endpoint that was not among its inputs."""

    def filter(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Endpoints:
        return (snap("intruder"),)


class ReorderFilter:
    def filter(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Endpoints:
        return tuple(reversed(endpoints))


class FixedPicker:
    def __init__(self, endpoint_id: str) -> None:
        self.endpoint_id = endpoint_id

    def pick(self, scored: Mapping[str, float], rng: np.random.Generator) -> Pick:
        return Pick(self.endpoint_id)


def max_score() -> NamedPicker:
    return NamedPicker("max-score", MaxScorePicker(MaxScoreParams()))


def profile(
    filters: tuple[NamedFilter, ...] = (),
    scorers: tuple[WeightedScorer, ...] = (),
    picker: NamedPicker | None = None,
    num_top_scores: int = 3,
) -> Profile:
    return Profile("p", filters, scorers, picker or max_score(), num_top_scores)


def run(p: Profile, endpoints: tuple[EndpointSnapshot, ...], seed: int = 0) -> Decision:
    return p.run(ctx(), endpoints, now=42.0, rng=np.random.default_rng(seed), timer=zero_timer)


ABC = (snap("a"), snap("b"), snap("c"))

# -- combining scores -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scorers", "expected"),
    [
        ([(1.0, {"a": 0.2, "b": 0.8, "c": 0.5})], {"a": 0.2, "b": 0.8, "c": 0.5}),
        (
            [(1.0, {"a": 1.0, "b": 0.0}), (3.0, {"a": 0.0, "b": 1.0})],
            {"a": 0.25, "b": 0.75, "c": 0.5},
        ),
        (
            [(2.0, {"a": 0.4}), (0.0, {"a": 1.0, "b": 1.0, "c": 1.0})],
            {"a": 0.4, "b": 0.5, "c": 0.5},
        ),
        ([(0.0, {"a": 0.1}), (0.0, {"b": 0.9})], {"a": 1.0, "b": 1.0, "c": 1.0}),
        ([], {"a": 1.0, "b": 1.0, "c": 1.0}),
        (
            [(0.5, {"a": 1.0, "b": 1.0, "c": 1.0}), (0.25, {"a": 1.0, "b": 1.0, "c": 1.0})],
            {"a": 1.0, "b": 1.0, "c": 1.0},
        ),
    ],
    ids=[
        "one-scorer",
        "weighted-mean",
        "zero-weight-ignored",
        "all-zero-weights",
        "no-scorers",
        "ones-stay-one",
    ],
)
def test_combined_score_is_weighted_mean(
    scorers: list[tuple[float, dict[str, float]]], expected: dict[str, float]
) -> None:
    named = tuple(WeightedScorer(f"s{i}", FixedScorer(sc), w) for i, (w, sc) in enumerate(scorers))
    decision = run(profile(scorers=named, num_top_scores=10), ABC)
    assert {s.endpoint_id: s.score for s in decision.top_scores} == pytest.approx(expected)
    for s in decision.top_scores:  # every scorer's raw score is reported, weight 0 included
        assert [n for n, _ in s.by_scorer] == [x.name for x in named]


def test_top_scores_best_first_and_truncated() -> None:
    scorer = FixedScorer({"a": 0.3, "b": 0.9, "c": 0.3, "d": 0.1})
    eps = (*ABC, snap("d"))
    top = run(profile(scorers=(WeightedScorer("s", scorer),), num_top_scores=3), eps).top_scores
    assert [(s.endpoint_id, s.score) for s in top] == [("b", 0.9), ("a", 0.3), ("c", 0.3)]
    assert (
        run(profile(scorers=(WeightedScorer("s", scorer),), num_top_scores=0), eps).top_scores == ()
    )


# -- outcomes ---------------------------------------------------------------------------------


def test_routed_decision_fields() -> None:
    scorer = FixedScorer({"a": 0.1, "b": 0.9, "c": 0.2})
    d = run(profile((NamedFilter("f", DropFilter("c")),), (WeightedScorer("s", scorer),)), ABC)
    assert (d.outcome, d.endpoint_id, d.reason, d.eliminated_by) == (
        Outcome.ROUTED,
        "b",
        None,
        None,
    )
    assert (d.profile, d.decided_at, d.num_endpoints, d.num_candidates, d.num_tied) == (
        "p",
        42.0,
        3,
        2,
        1,
    )


@pytest.mark.parametrize(
    ("endpoints", "drops", "reason", "eliminated_by"),
    [
        ((), ("",), NoEndpointReason.NO_ENDPOINTS, None),
        (ABC, ("ab", "c"), NoEndpointReason.ALL_FILTERED, "f1"),
        (ABC, ("abc", ""), NoEndpointReason.ALL_FILTERED, "f0"),
    ],
    ids=["none-offered", "second-filter-empties", "first-filter-empties"],
)
def test_no_endpoint(
    endpoints: tuple[EndpointSnapshot, ...],
    drops: tuple[str, ...],
    reason: NoEndpointReason,
    eliminated_by: str | None,
) -> None:
    filters = tuple(NamedFilter(f"f{i}", DropFilter(d)) for i, d in enumerate(drops))
    d = run(profile(filters, (WeightedScorer("s", FixedScorer()),)), endpoints)
    assert (d.outcome, d.endpoint_id, d.reason, d.eliminated_by) == (
        Outcome.NO_ENDPOINT,
        None,
        reason,
        eliminated_by,
    )
    assert not d.is_routed and d.num_candidates == 0 and d.top_scores == ()
    assert all(t.kind is PluginKind.FILTER for t in d.timings)  # scorers and picker never ran


def test_endpoint_order_does_not_matter() -> None:
    eps = tuple(snap(f"e{i}") for i in range(8))
    p = profile(scorers=(WeightedScorer("s", FixedScorer()),))  # all tie: the rng decides
    shuffled = tuple(eps[i] for i in np.random.default_rng(3).permutation(len(eps)))
    assert shuffled != eps
    assert run(p, eps, seed=9) == run(p, shuffled, seed=9)


def test_duplicate_endpoint_ids_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate endpoint_id 'a'"):
        run(profile(), (snap("a"), snap("a", num_in_flight_requests=1)))


@pytest.mark.parametrize(
    ("p", "message"),
    [
        (profile((NamedFilter("imp", ImpostorFilter()),)), "imp: returned 'intruder'"),
        (profile((NamedFilter("rev", ReorderFilter()),)), "rev: returned"),
        (
            profile(scorers=(WeightedScorer("hi", RawScorer(dict.fromkeys("abc", 1.5))),)),
            r"hi: score 1\.5",
        ),
        (
            profile(
                scorers=(WeightedScorer("nan", RawScorer(dict.fromkeys("abc", float("nan")))),)
            ),
            "nan: score nan",
        ),
        (
            profile(scorers=(WeightedScorer("few", RawScorer({"a": 1.0})),)),
            "few: scores must be keyed",
        ),
        (
            profile(scorers=(WeightedScorer("many", RawScorer(dict.fromkeys("abcd", 1.0))),)),
            "many: scores must",
        ),
        (
            profile(picker=NamedPicker("bad", FixedPicker("zz"))),
            "bad: picked 'zz', not a candidate",
        ),
    ],
    ids=[
        "foreign-endpoint",
        "reordered",
        "score-above-1",
        "score-nan",
        "missing-id",
        "extra-id",
        "picked-outsider",
    ],
)
def test_contract_violations_name_the_plugin(p: Profile, message: str) -> None:
    with pytest.raises(PluginContractError, match=message):
        run(p, ABC)


# -- timings ----------------------------------------------------------------------------------


def test_every_plugin_call_is_timed_with_the_injected_timer() -> None:
    clock = FakeClock()
    p = profile(
        (
            NamedFilter("f0", DropFilter("", clock, 0.125)),
            NamedFilter("f1", DropFilter("a", clock, 0.25)),
        ),
        (
            WeightedScorer("s0", FixedScorer(None, clock, 0.5), 1.0),
            WeightedScorer("s1", FixedScorer(None, clock, 0.0)),
        ),
    )
    d = p.run(ctx(), ABC, now=0.0, rng=np.random.default_rng(0), timer=clock)
    assert d.timings == (
        PluginTiming("f0", PluginKind.FILTER, 0.125),  # binary fractions: exact arithmetic
        PluginTiming("f1", PluginKind.FILTER, 0.25),
        PluginTiming("s0", PluginKind.SCORER, 0.5),
        PluginTiming("s1", PluginKind.SCORER, 0.0),
        PluginTiming("max-score", PluginKind.PICKER, 0.0),
    )
    assert d.total_plugin_s == 0.875
    assert clock.num_reads == 2 * 5


# -- per-request scratch ----------------------------------------------------------------------

SEEN = ScratchKey[tuple[str, ...]]("test.seen")


class ScratchWriter:
    def filter(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Endpoints:
        scratch.put(SEEN, tuple(e.endpoint_id for e in endpoints))
        return endpoints


class ScratchReader:
    def __init__(self) -> None:
        self.seen: list[tuple[float, tuple[str, ...]]] = []

    def score(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Mapping[str, float]:
        self.seen.append((scratch.now, scratch.get(SEEN)))
        return {e.endpoint_id: 1.0 for e in endpoints}


def test_scratch_is_shared_within_a_run_and_fresh_for_each() -> None:
    reader = ScratchReader()
    p = profile((NamedFilter("w", ScratchWriter()),), (WeightedScorer("r", reader),))
    for now in (1.0, 2.0):  # a second run may write the same key again: new scratch
        p.run(ctx(), ABC, now=now, rng=np.random.default_rng(0), timer=zero_timer)
    assert reader.seen == [(1.0, ("a", "b", "c")), (2.0, ("a", "b", "c"))]


# -- observe ----------------------------------------------------------------------------------


def test_observe_reaches_stateful_plugins_only_for_routed_decisions() -> None:
    stateful = FixedScorer({"b": 1.0})
    p = profile((NamedFilter("f", DropFilter()),), (WeightedScorer("s", stateful),))
    routed = run(p, ABC)
    assert stateful.observed == []  # deciding alone records nothing
    p.observe(ctx(), routed)
    p.observe(ctx(), run(p, ()))
    assert stateful.observed == ["b"]


def test_observe_rejects_another_profiles_decision() -> None:
    other = Profile("other", (), (), max_score())
    with pytest.raises(ValueError, match="decision of profile 'other'"):
        profile().observe(ctx(), run(other, ABC))


# -- profile construction ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"scorers": (WeightedScorer("s", FixedScorer(), -0.5),)},
            r"^scorers\[0\]\.weight: must be >= 0",
        ),
        (
            {"scorers": (WeightedScorer("s", FixedScorer(), float("inf")),)},
            r"^scorers\[0\]\.weight: must be finite",
        ),
        (
            {"filters": (NamedFilter("x", DropFilter()), NamedFilter("x", DropFilter()))},
            r"^filters\[1\]\.name: duplicate",
        ),
        ({"scorers": (WeightedScorer("max-score", FixedScorer()),)}, r"^picker\.name: duplicate"),
        ({"num_top_scores": -1}, r"^num_top_scores: must be >= 0"),
    ],
    ids=[
        "negative-weight",
        "infinite-weight",
        "duplicate-filter",
        "duplicate-across-stages",
        "negative-top",
    ],
)
def test_profile_rejects(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        profile(**kwargs)


# -- handlers ---------------------------------------------------------------------------------

PD_ENDPOINTS = (
    snap("p1", role=EndpointRole.PREFILL),
    snap("p2", role=EndpointRole.PREFILL),
    snap("d1", role=EndpointRole.DECODE),
)


def role_profile(name: str, role: EndpointRole, scorer: FixedScorer) -> Profile:
    return Profile(
        name, (NamedFilter("role", RoleFilter(role)),), (WeightedScorer("s", scorer),), max_score()
    )


def test_single_handler() -> None:
    handler = SingleProfileHandler(profile())
    result = handler.decide(ctx(), ABC, now=42.0, rng=np.random.default_rng(0), timer=zero_timer)
    assert result.prefill is None and result.is_routed
    assert result.decision == run(profile(), ABC)  # same seed, same inputs


def test_prefill_decode_handler_returns_both_picks() -> None:
    pre, dec = FixedScorer({"p2": 0.9}), FixedScorer()
    handler = PrefillDecodeHandler(
        role_profile("prefill", EndpointRole.PREFILL, pre),
        role_profile("decode", EndpointRole.DECODE, dec),
    )
    result = handler.decide(
        ctx(), iter(PD_ENDPOINTS), now=1.0, rng=np.random.default_rng(0), timer=zero_timer
    )
    assert result.prefill is not None
    assert (result.prefill.profile, result.prefill.endpoint_id) == ("prefill", "p2")
    assert (result.decision.profile, result.decision.endpoint_id) == ("decode", "d1")
    assert result.is_routed
    handler.observe(ctx(), result)
    assert (pre.observed, dec.observed) == (["p2"], ["d1"])


def test_prefill_decode_without_prefill_endpoint_still_decides_decode() -> None:
    handler = PrefillDecodeHandler(
        role_profile("prefill", EndpointRole.PREFILL, FixedScorer()),
        role_profile("decode", EndpointRole.DECODE, FixedScorer()),
    )
    result = handler.decide(
        ctx(), PD_ENDPOINTS[2:], now=1.0, rng=np.random.default_rng(0), timer=zero_timer
    )
    assert result.prefill is not None and result.prefill.reason is NoEndpointReason.ALL_FILTERED
    assert result.decision.endpoint_id == "d1" and not result.is_routed


def test_prefill_decode_needs_two_profiles() -> None:
    with pytest.raises(ValueError, match="different profile"):
        PrefillDecodeHandler(profile(), profile())
