"""A named profile: filters -> weighted scorers -> one picker, run as one decision.

Invariants of `Profile.run`:

* Candidates are sorted by `endpoint_id` before the first filter, so the decision does
  not depend on the order the caller listed endpoints in.
* The combined score of a candidate is the weighted mean of its scorers' scores
  (weights >= 0), so it stays in [0, 1]; with no scorers or all weights 0 every
  candidate scores 1.0 and the picker's tie-break decides.
* Every plugin call is timed with the injected timer (two reads per call).
* A plugin that breaks its contract (see routing.plugin) raises
  `PluginContractError` naming it, instead of producing a silently wrong route.
* Nothing is mutated except a fresh `RequestScratch`; `observe` is the only way a
  decision reaches per-plugin-instance state.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from headway.routing.config import ConfigError
from headway.routing.context import RequestContext
from headway.routing.decision import (
    Decision,
    EndpointScore,
    NoEndpointReason,
    Outcome,
    PluginKind,
    PluginTiming,
)
from headway.routing.endpoint import EndpointSnapshot
from headway.routing.plugin import Endpoints, Filter, Picker, Scorer, StatefulPlugin
from headway.routing.state import RequestScratch

Timer = Callable[[], float]
"""Monotonic seconds, e.g. `time.perf_counter` in the gateway, a fake in tests."""


class PluginContractError(RuntimeError):
    """A plugin returned something its protocol forbids."""


@dataclass(frozen=True)
class NamedFilter:
    name: str
    plugin: Filter


@dataclass(frozen=True)
class WeightedScorer:
    name: str
    plugin: Scorer
    weight: float = 1.0


@dataclass(frozen=True)
class NamedPicker:
    name: str
    plugin: Picker


@dataclass(frozen=True)
class Profile:
    """Filters, weighted scorers and a picker under one name.

    Plugin names must be unique within the profile (timings and debug scores are
    keyed by them). Construction errors are `ConfigError`s with paths relative to
    the profile, e.g. ``scorers[1].weight: must be >= 0``.
    """

    name: str
    filters: tuple[NamedFilter, ...]
    scorers: tuple[WeightedScorer, ...]
    picker: NamedPicker
    num_top_scores: int = 3  # candidates whose scores a decision reports
    _stateful: tuple[StatefulPlugin, ...] = field(init=False, repr=False, compare=False)
    _total_weight: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        entries: list[tuple[str, str]] = [
            (f"filters[{i}]", f.name) for i, f in enumerate(self.filters)
        ]
        entries += [(f"scorers[{i}]", s.name) for i, s in enumerate(self.scorers)]
        entries.append(("picker", self.picker.name))
        for path, name in entries:
            if name in seen:
                raise ConfigError(f"{path}.name", f"duplicate plugin name {name!r} in this profile")
            seen.add(name)
        for i, s in enumerate(self.scorers):
            if not math.isfinite(s.weight):
                raise ConfigError(f"scorers[{i}].weight", f"must be finite, got {s.weight}")
            if s.weight < 0.0:
                raise ConfigError(f"scorers[{i}].weight", f"must be >= 0, got {s.weight}")
        if self.num_top_scores < 0:
            raise ConfigError("num_top_scores", f"must be >= 0, got {self.num_top_scores}")
        plugins: list[object] = [f.plugin for f in self.filters]
        plugins += [s.plugin for s in self.scorers]
        plugins.append(self.picker.plugin)
        stateful = tuple(p for p in plugins if isinstance(p, StatefulPlugin))
        object.__setattr__(self, "_stateful", stateful)
        object.__setattr__(self, "_total_weight", sum(s.weight for s in self.scorers))

    def run(
        self,
        ctx: RequestContext,
        endpoints: Iterable[EndpointSnapshot],
        *,
        now: float,
        rng: np.random.Generator,
        timer: Timer,
    ) -> Decision:
        """Decide where `ctx` goes among `endpoints`. Pure apart from `rng` draws."""
        candidates = _sorted_unique(endpoints)
        num_endpoints = len(candidates)
        scratch = RequestScratch(now)
        timings: list[PluginTiming] = []

        def no_endpoint(reason: NoEndpointReason, eliminated_by: str | None = None) -> Decision:
            return Decision(
                profile=self.name,
                outcome=Outcome.NO_ENDPOINT,
                decided_at=now,
                num_endpoints=num_endpoints,
                num_candidates=0,
                reason=reason,
                eliminated_by=eliminated_by,
                timings=tuple(timings),
            )

        if not candidates:
            return no_endpoint(NoEndpointReason.NO_ENDPOINTS)
        for f in self.filters:
            started = timer()
            kept = f.plugin.filter(ctx, candidates, scratch)
            timings.append(PluginTiming(f.name, PluginKind.FILTER, timer() - started))
            _check_filtered(f.name, candidates, kept)
            candidates = kept
            if not candidates:
                return no_endpoint(NoEndpointReason.ALL_FILTERED, f.name)

        ids = tuple(e.endpoint_id for e in candidates)
        by_scorer: list[Mapping[str, float]] = []
        for s in self.scorers:
            started = timer()
            scores = s.plugin.score(ctx, candidates, scratch)
            timings.append(PluginTiming(s.name, PluginKind.SCORER, timer() - started))
            _check_scores(s.name, ids, scores)
            by_scorer.append(scores)
        combined = self._combine(ids, by_scorer)

        started = timer()
        pick = self.picker.plugin.pick(combined, rng)
        timings.append(PluginTiming(self.picker.name, PluginKind.PICKER, timer() - started))
        if pick.endpoint_id not in combined:
            raise PluginContractError(
                f"{self.picker.name}: picked {pick.endpoint_id!r}, not a candidate"
            )
        return Decision(
            profile=self.name,
            outcome=Outcome.ROUTED,
            decided_at=now,
            num_endpoints=num_endpoints,
            num_candidates=len(ids),
            endpoint_id=pick.endpoint_id,
            num_tied=pick.num_tied,
            top_scores=self._top_scores(combined, by_scorer),
            timings=tuple(timings),
        )

    def observe(self, ctx: RequestContext, decision: Decision) -> None:
        """Let stateful plugins record a committed decision of this profile.

        Decisions without an endpoint were never committed and are ignored.
        """
        if decision.profile != self.name:
            raise ValueError(f"decision of profile {decision.profile!r} given to {self.name!r}")
        if not decision.is_routed:
            return
        for plugin in self._stateful:
            plugin.observe(ctx, decision)

    def _combine(
        self, ids: tuple[str, ...], by_scorer: list[Mapping[str, float]]
    ) -> dict[str, float]:
        total_weight = self._total_weight
        if total_weight == 0.0:
            return dict.fromkeys(ids, 1.0)
        weighted = [(s.weight, scores) for s, scores in zip(self.scorers, by_scorer, strict=True)]
        # min(): a weighted mean of values <= 1 can round one ulp above 1.
        return {i: min(1.0, sum(w * sc[i] for w, sc in weighted) / total_weight) for i in ids}

    def _top_scores(
        self, combined: Mapping[str, float], by_scorer: list[Mapping[str, float]]
    ) -> tuple[EndpointScore, ...]:
        best = sorted(combined.items(), key=lambda kv: (-kv[1], kv[0]))[: self.num_top_scores]
        names = [s.name for s in self.scorers]
        return tuple(
            EndpointScore(
                i, score, tuple((n, sc[i]) for n, sc in zip(names, by_scorer, strict=True))
            )
            for i, score in best
        )


_ENDPOINT_ID = operator.attrgetter("endpoint_id")


def _sorted_unique(endpoints: Iterable[EndpointSnapshot]) -> Endpoints:
    ordered = tuple(sorted(endpoints, key=_ENDPOINT_ID))
    for a, b in itertools.pairwise(ordered):
        if a.endpoint_id == b.endpoint_id:
            raise ValueError(f"endpoints: duplicate endpoint_id {a.endpoint_id!r}")
    return ordered


def _check_filtered(name: str, before: Endpoints, after: Endpoints) -> None:
    """`after` must be a subsequence of `before` (a subset, in the same order)."""
    remaining = iter(before)
    for e in after:
        for b in remaining:
            if e is b:
                break
        else:
            raise PluginContractError(
                f"{name}: returned {e.endpoint_id!r}, not one of its input objects, in order"
            )


def _check_scores(name: str, ids: tuple[str, ...], scores: Mapping[str, float]) -> None:
    if len(scores) != len(ids) or any(i not in scores for i in ids):
        raise PluginContractError(f"{name}: scores must be keyed by exactly the candidate ids")
    for i, s in scores.items():
        if not (0.0 <= s <= 1.0):  # also rejects NaN
            raise PluginContractError(f"{name}: score {s!r} for {i!r} is not in [0, 1]")
