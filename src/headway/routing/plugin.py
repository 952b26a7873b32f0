"""Plugin protocols and the spec every plugin module exports.

A filter narrows the candidates, a scorer rates each candidate in [0, 1], a picker
chooses one from the combined scores. Contracts (checked by the framework at run time
and by tests/routing/test_routing_contract.py for every registered plugin):

* `Filter.filter` returns a subset of its input, in input order.
* `Scorer.score` returns exactly one finite score in [0, 1] per input endpoint id.
* `Picker.pick` returns one of the ids it was given; it raises ValueError when given
  none (the framework never does that). Randomness comes only from `rng`, and the
  result must not depend on the mapping's iteration order.
* Inside a call a plugin mutates nothing but the `RequestScratch` it is handed. State
  that outlives a decision changes only in `StatefulPlugin.observe`.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np

from headway.routing.context import RequestContext
from headway.routing.decision import Decision, PluginKind
from headway.routing.endpoint import EndpointField, EndpointSnapshot
from headway.routing.shared import RoutingResources
from headway.routing.state import RequestScratch

Endpoints = tuple[EndpointSnapshot, ...]
"""Candidates, always in ascending `endpoint_id` order (the framework sorts them)."""


@dataclass(frozen=True)
class Pick:
    """A picker's choice: the endpoint and how many candidates shared the best score."""

    endpoint_id: str
    num_tied: int = 1


@runtime_checkable
class Filter(Protocol):
    def filter(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Endpoints: ...


@runtime_checkable
class Scorer(Protocol):
    def score(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Mapping[str, float]: ...


@runtime_checkable
class Picker(Protocol):
    def pick(self, scored: Mapping[str, float], rng: np.random.Generator) -> Pick: ...


@runtime_checkable
class StatefulPlugin(Protocol):
    """A plugin with per-instance state that learns from committed decisions."""

    def observe(self, ctx: RequestContext, decision: Decision) -> None:
        """Record a committed, routed decision of the profile this plugin runs in."""
        ...


Plugin = Filter | Scorer | Picker

_P = TypeVar("_P")
_KEBAB = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


@dataclass(frozen=True)
class PluginSpec(Generic[_P]):
    """How to build one plugin type: what each plugin module exports as `SPEC`.

    `params_type` is a frozen dataclass whose every field has a default;
    `factory(params)` builds a fresh instance, or `factory(params, resources)` when
    `needs_resources` is set (only plugins that use the caller's shared objects, such
    as the KV-event index, see them); `reads` declares the snapshot fields the plugin
    looks at (a test checks the plugin ignores every other field). A factory may raise
    `ConfigError` (path relative to the plugin entry) when the resources it needs are
    missing.
    """

    type: str  # kebab-case, unique in a registry
    kind: PluginKind
    params_type: builtins.type[_P]
    factory: Callable[..., Any]  # (params) or, with needs_resources, (params, resources)
    reads: frozenset[EndpointField]
    summary: str
    needs_resources: bool = False

    def __post_init__(self) -> None:
        if not _KEBAB.fullmatch(self.type):
            raise ValueError(f"type: {self.type!r} is not kebab-case")

    def create(self, params: _P | None = None, resources: RoutingResources | None = None) -> Plugin:
        """A new instance, with default params when none are given.

        `resources` reach the factory only when `needs_resources` is set; None then
        means empty `RoutingResources()`.
        """
        values = self.params_type() if params is None else params
        plugin: object = (
            self.factory(values, RoutingResources() if resources is None else resources)
            if self.needs_resources
            else self.factory(values)
        )
        if self.kind is PluginKind.FILTER and isinstance(plugin, Filter):
            return plugin
        if self.kind is PluginKind.SCORER and isinstance(plugin, Scorer):
            return plugin
        if self.kind is PluginKind.PICKER and isinstance(plugin, Picker):
            return plugin
        raise TypeError(f"{self.type}: factory did not build a {self.kind}")
