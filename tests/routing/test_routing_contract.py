"""Contract test: every registered plugin keeps the same invariants.

Filters return a subsequence of their input; scorers return one score in [0, 1] per
candidate id; pickers return one of the ids they were given; all of them on empty,
single and all-equal inputs, on random snapshots, reproducibly from a seed, and
without looking at snapshot fields they do not declare in `reads`.

Every plugin is built the same way, with resources whose prefix indexes hold data
(`populated_resources`), so plugins that need resources (the prefix plugins) are
exercised with real matches, stale endpoints included. Stateful plugins are checked
again after observing a decision.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from routing_helpers import (
    contexts,
    ctx,
    endpoint_sets,
    populated_resources,
    score_maps,
    snap,
    snapshots,
    zero_timer,
)

from headway.routing import (
    Decision,
    EndpointField,
    EndpointSnapshot,
    Filter,
    Outcome,
    Picker,
    PluginKind,
    PluginSpec,
    Profile,
    RequestContext,
    RequestScratch,
    Scorer,
    StatefulPlugin,
    default_registry,
)
from headway.routing.plugin import Plugin
from headway.routing.profile import NamedFilter, NamedPicker, WeightedScorer

REGISTRY = default_registry()
ALL = REGISTRY.specs()
FILTERS = REGISTRY.specs(PluginKind.FILTER)
SCORERS = REGISTRY.specs(PluginKind.SCORER)
PICKERS = REGISTRY.specs(PluginKind.PICKER)
SNAPSHOT_FIELDS = {f.name for f in dataclasses.fields(EndpointSnapshot)}

EDGE_CASES: dict[str, tuple[EndpointSnapshot, ...]] = {
    "empty": (),
    "single": (snap("a", num_in_flight_requests=3, kv_cache_usage=0.5),),
    "all-equal": tuple(snap(i, num_in_flight_requests=2, num_queued_requests=1) for i in "abc"),
    "mixed": (
        snap("a", num_in_flight_requests=0),
        snap("b", num_in_flight_requests=7, is_ejected=True),
        snap("c", num_in_flight_requests=3, models=frozenset({"other"})),
        snap("d", num_in_flight_requests=9, is_healthy=False),
    ),
}


def spec_ids(specs: tuple[PluginSpec[Any], ...]) -> list[str]:
    return [s.type for s in specs]


def make(spec: PluginSpec[Any]) -> Plugin:
    """A fresh instance with default params and freshly populated resources."""
    return spec.create(None, populated_resources())


def as_filter(spec: PluginSpec[Any]) -> Filter:
    plugin = make(spec)
    assert isinstance(plugin, Filter)
    return plugin


def as_scorer(spec: PluginSpec[Any]) -> Scorer:
    plugin = make(spec)
    assert isinstance(plugin, Scorer)
    return plugin


def as_picker(spec: PluginSpec[Any]) -> Picker:
    plugin = make(spec)
    assert isinstance(plugin, Picker)
    return plugin


def routed_to(endpoint_id: str) -> Decision:
    return Decision("p", Outcome.ROUTED, 0.0, 1, 1, endpoint_id=endpoint_id)


def assert_filter_contract(eps: tuple[EndpointSnapshot, ...], kept: tuple[Any, ...]) -> None:
    assert isinstance(kept, tuple)
    remaining = iter(eps)
    assert all(any(e is r for r in remaining) for e in kept), "not a subsequence of the input"


def assert_scorer_contract(eps: tuple[EndpointSnapshot, ...], scores: Mapping[str, float]) -> None:
    assert set(scores) == {e.endpoint_id for e in eps}
    assert len(scores) == len(eps)
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in scores.values())


# -- declarations -------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ALL, ids=spec_ids(ALL))
def test_spec_declaration(spec: PluginSpec[Any]) -> None:
    plugin = make(spec)  # every params field has a default
    assert getattr(plugin, "TYPE") == spec.type  # noqa: B009 - TYPE is a ClassVar of each plugin
    assert dataclasses.is_dataclass(spec.params_type)
    params = spec.params_type()
    for f in dataclasses.fields(params):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(params, f.name, getattr(params, f.name))
    assert all(isinstance(r, EndpointField) and r.value in SNAPSHOT_FIELDS for r in spec.reads)
    assert spec.summary


def test_registry_covers_every_kind() -> None:
    assert FILTERS and SCORERS and PICKERS
    assert len(ALL) == len(FILTERS) + len(SCORERS) + len(PICKERS)


# -- empty, single, all-equal, mixed ------------------------------------------------------


@pytest.mark.parametrize("case", EDGE_CASES, ids=list(EDGE_CASES))
@pytest.mark.parametrize("spec", FILTERS, ids=spec_ids(FILTERS))
def test_filter_edge_cases(spec: PluginSpec[Any], case: str) -> None:
    eps = EDGE_CASES[case]
    kept = as_filter(spec).filter(ctx(), eps, RequestScratch(0.0))
    assert_filter_contract(eps, kept)
    if case == "all-equal":
        assert kept in ((), eps), "endpoints equal but for their id are kept or dropped together"


@pytest.mark.parametrize("case", EDGE_CASES, ids=list(EDGE_CASES))
@pytest.mark.parametrize("spec", SCORERS, ids=spec_ids(SCORERS))
def test_scorer_edge_cases(spec: PluginSpec[Any], case: str) -> None:
    eps = EDGE_CASES[case]
    assert_scorer_contract(eps, as_scorer(spec).score(ctx(), eps, RequestScratch(0.0)))


@pytest.mark.parametrize("spec", PICKERS, ids=spec_ids(PICKERS))
def test_picker_rejects_empty(spec: PluginSpec[Any]) -> None:
    with pytest.raises(ValueError):
        as_picker(spec).pick({}, np.random.default_rng(0))


@pytest.mark.parametrize("score", [0.0, 0.3, 1.0], ids=["zero", "mid", "one"])
@pytest.mark.parametrize("spec", PICKERS, ids=spec_ids(PICKERS))
def test_picker_single(spec: PluginSpec[Any], score: float) -> None:
    assert as_picker(spec).pick({"only": score}, np.random.default_rng(0)).endpoint_id == "only"


@pytest.mark.parametrize("spec", PICKERS, ids=spec_ids(PICKERS))
def test_picker_all_equal_uses_the_rng(spec: PluginSpec[Any]) -> None:
    """Equal scores: the seed decides, and across seeds every candidate gets picked."""
    picker, scored = as_picker(spec), dict.fromkeys("abc", 0.5)
    picks = {picker.pick(scored, np.random.default_rng(seed)).endpoint_id for seed in range(64)}
    assert picks == set(scored)


# -- random inputs (Hypothesis) ------------------------------------------------------------


@pytest.mark.parametrize("spec", FILTERS, ids=spec_ids(FILTERS))
@settings(max_examples=30, deadline=None)
@given(eps=endpoint_sets(), c=contexts, data=st.data())
def test_filter_random(
    spec: PluginSpec[Any], eps: tuple[EndpointSnapshot, ...], c: RequestContext, data: st.DataObject
) -> None:
    f = as_filter(spec)
    kept = f.filter(c, eps, RequestScratch(0.0))
    assert_filter_contract(eps, kept)
    assert as_filter(spec).filter(c, eps, RequestScratch(0.0)) == kept  # fresh instance agrees
    if isinstance(f, StatefulPlugin) and eps:
        f.observe(c, routed_to(data.draw(st.sampled_from(eps)).endpoint_id))
        assert_filter_contract(eps, f.filter(c, eps, RequestScratch(0.0)))


@pytest.mark.parametrize("spec", SCORERS, ids=spec_ids(SCORERS))
@settings(max_examples=30, deadline=None)
@given(eps=endpoint_sets(), c=contexts, data=st.data())
def test_scorer_random(
    spec: PluginSpec[Any], eps: tuple[EndpointSnapshot, ...], c: RequestContext, data: st.DataObject
) -> None:
    scorer = as_scorer(spec)
    scores = scorer.score(c, eps, RequestScratch(0.0))
    assert_scorer_contract(eps, scores)
    assert as_scorer(spec).score(c, eps, RequestScratch(0.0)) == scores  # fresh instance agrees
    if isinstance(scorer, StatefulPlugin) and eps:
        # Whatever it has observed, its scores keep the contract.
        scorer.observe(c, routed_to(data.draw(st.sampled_from(eps)).endpoint_id))
        assert_scorer_contract(eps, scorer.score(c, eps, RequestScratch(0.0)))


@pytest.mark.parametrize("spec", PICKERS, ids=spec_ids(PICKERS))
@settings(max_examples=100, deadline=None)
@given(scored=score_maps, seed=st.integers(0, 2**32 - 1))
def test_picker_random(spec: PluginSpec[Any], scored: dict[str, float], seed: int) -> None:
    pick = as_picker(spec).pick(scored, np.random.default_rng(seed))
    assert pick.endpoint_id in scored
    again = as_picker(spec).pick(scored, np.random.default_rng(seed))
    shuffled = dict(reversed(scored.items()))
    assert again == pick
    assert as_picker(spec).pick(shuffled, np.random.default_rng(seed)) == pick, "order-dependent"


_UNREAD_BY = {
    spec.type: sorted(SNAPSHOT_FIELDS - {"endpoint_id"} - {r.value for r in spec.reads})
    for spec in FILTERS + SCORERS
}


@pytest.mark.parametrize("spec", FILTERS + SCORERS, ids=spec_ids(FILTERS + SCORERS))
@settings(max_examples=20, deadline=None)
@given(eps=endpoint_sets(), c=contexts, data=st.data())
def test_reads_only_declared_fields(
    spec: PluginSpec[Any], eps: tuple[EndpointSnapshot, ...], c: RequestContext, data: st.DataObject
) -> None:
    """Changing any field a plugin does not declare in `reads` leaves its output alone."""
    unread = _UNREAD_BY[spec.type]
    donors = data.draw(st.tuples(*(snapshots(e.endpoint_id) for e in eps)))
    other = tuple(
        dataclasses.replace(e, **{f: getattr(d, f) for f in unread})
        for e, d in zip(eps, donors, strict=True)
    )

    def run(endpoints: tuple[EndpointSnapshot, ...]) -> object:
        plugin = make(spec)
        if isinstance(plugin, Filter):
            return tuple(e.endpoint_id for e in plugin.filter(c, endpoints, RequestScratch(0.0)))
        assert isinstance(plugin, Scorer)
        return dict(plugin.score(c, endpoints, RequestScratch(0.0)))

    assert run(other) == run(eps)


# -- whole decisions: reproducible from a seed ---------------------------------------------


def single_plugin_profile(spec: PluginSpec[Any]) -> Profile:
    """A profile in which `spec` is the only plugin of its kind (a fresh instance)."""
    plugin = make(spec)
    filters: tuple[NamedFilter, ...] = ()
    scorers: tuple[WeightedScorer, ...] = ()
    picker = NamedPicker("max-score", as_picker(REGISTRY.get("max-score")))
    if isinstance(plugin, Filter) and spec.kind is PluginKind.FILTER:
        filters = (NamedFilter(spec.type, plugin),)
    elif isinstance(plugin, Scorer) and spec.kind is PluginKind.SCORER:
        scorers = (WeightedScorer(spec.type, plugin),)
    else:
        assert isinstance(plugin, Picker)
        picker = NamedPicker(spec.type, plugin)
    return Profile("p", filters, scorers, picker)


@pytest.mark.parametrize("spec", ALL, ids=spec_ids(ALL))
@settings(max_examples=10, deadline=None)
@given(
    eps=endpoint_sets(min_size=1),
    cs=st.lists(contexts, min_size=1, max_size=3),
    seed=st.integers(0, 2**32 - 1),
)
def test_decisions_reproducible_from_seed(
    spec: PluginSpec[Any], eps: tuple[EndpointSnapshot, ...], cs: list[RequestContext], seed: int
) -> None:
    """Two fresh profiles fed the same requests, snapshots and seed decide the same,
    observing their decisions as they go (stateful plugins included)."""

    def run() -> list[Decision]:
        profile, rng = single_plugin_profile(spec), np.random.default_rng(seed)
        out = []
        for c in cs:
            d = profile.run(c, reversed(eps), now=1.0, rng=rng, timer=zero_timer)
            profile.observe(c, d)
            assert d.endpoint_id is None or d.endpoint_id in {e.endpoint_id for e in eps}
            out.append(d)
        return out

    assert run() == run()
