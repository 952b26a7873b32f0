"""`prefix-affinity-until-saturated` filter: keep the cache-warm endpoints unless they
are overloaded.

With `f(e)` the share of the prompt endpoint `e` holds (routing.prefix.matching:
precise KV-event matches where trusted, else the approximate index of what this
gateway routed) and `best = max f`:

* `best < min_match_fraction`: nothing is warm enough to matter; keep all.
* warm = candidates with `f(e) >= best - match_tolerance`; keep the warm endpoints
  whose token load is within bounds. If none is, keep all (the warm ones are
  saturated: spreading beats queueing behind a hot cache).

Token load bounds; an endpoint over any of them is overloaded:

* imbalance (always): its in-flight tokens exceed BOTH `max_relative_token_load x` the
  candidates' mean and the mean plus `min_imbalance_tokens` (SGLang's cache-aware
  router likewise needs both a relative (1.5x) and an absolute imbalance before it
  gives up on cache affinity);
* capacity (when the KV capacity is known): `num_in_flight_tokens / (num_gpu_blocks *
  block_size) > max_token_load`;
* absolute (when set): `num_in_flight_tokens > max_in_flight_tokens`.

The imbalance bound is what bites on engines with large KV caches: measured in the
cluster simulation, a capacity bound alone let one warm replica take every call of an
agentic workload that shares one system prompt.

A hard filter: use it when cache hits matter more than balance (long shared
prefixes); the weighted prefix scorers trade the two off smoothly instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from headway.routing.config import ConfigError
from headway.routing.context import RequestContext
from headway.routing.decision import Decision, PluginKind
from headway.routing.endpoint import EndpointField, EndpointSnapshot
from headway.routing.load import token_load_fraction
from headway.routing.plugin import Endpoints, PluginSpec
from headway.routing.prefix.approx_index import ApproxPrefixIndex
from headway.routing.prefix.kv_index import KvBlockIndex
from headway.routing.prefix.matching import approx_fractions, prefix_fractions
from headway.routing.shared import RoutingResources
from headway.routing.state import RequestScratch

_SOURCES = ("auto", "precise", "approx")


@dataclass(frozen=True)
class PrefixAffinityParams:
    source: str = "auto"  # auto: precise (with approx fallback) when KV events exist
    min_match_fraction: float = 0.3  # below this best match, keep everything
    match_tolerance: float = 0.0  # matches this close to the best count as warm
    max_token_load: float = 0.8  # in-flight tokens / KV capacity, when capacity known
    max_in_flight_tokens: int | None = None  # absolute bound when capacity unknown
    max_relative_token_load: float = 1.5  # x candidates' mean, when neither is known
    min_imbalance_tokens: int = 4096  # ... and at least this many tokens over the mean

    def __post_init__(self) -> None:
        if self.source not in _SOURCES:
            raise ConfigError("source", f"must be one of {list(_SOURCES)}, got {self.source!r}")
        for name in ("min_match_fraction", "match_tolerance"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(name, "must be in [0, 1]")
        if not self.max_token_load > 0.0:
            raise ConfigError("max_token_load", "must be > 0")
        if self.max_in_flight_tokens is not None and self.max_in_flight_tokens < 0:
            raise ConfigError("max_in_flight_tokens", "must be >= 0")
        if not self.max_relative_token_load >= 1.0:
            raise ConfigError("max_relative_token_load", "must be >= 1")
        if self.min_imbalance_tokens < 0:
            raise ConfigError("min_imbalance_tokens", "must be >= 0")


class PrefixAffinityFilter:
    TYPE: ClassVar[str] = "prefix-affinity-until-saturated"

    def __init__(self, params: PrefixAffinityParams, resources: RoutingResources) -> None:
        self.params = params
        if params.source == "precise" and resources.kv_index is None:
            raise ConfigError(
                "params.source",
                "precise needs KV events: configure KV events for this pool, or use auto/approx",
            )
        self._kv_index: KvBlockIndex | None = (
            None if params.source == "approx" else resources.kv_index
        )
        self._approx = resources.approx_index or ApproxPrefixIndex()

    def filter(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Endpoints:
        if not endpoints:
            return endpoints
        if self._kv_index is None:
            fractions = approx_fractions(ctx, endpoints, scratch, self._approx)
        else:
            fractions = prefix_fractions(ctx, endpoints, scratch, self._kv_index, self._approx)
        best = max(fractions.values())
        p = self.params
        if best <= 0.0 or best < p.min_match_fraction:
            return endpoints
        floor = best - p.match_tolerance
        mean_tokens = sum(e.num_in_flight_tokens for e in endpoints) / len(endpoints)
        kept = tuple(
            e
            for e in endpoints
            if fractions[e.endpoint_id] >= floor and not self._overloaded(e, mean_tokens)
        )
        return kept if kept else endpoints

    def _overloaded(self, e: EndpointSnapshot, mean_tokens: float) -> bool:
        """Over any of the bounds: the relative imbalance (always), the KV-capacity
        fraction (when the capacity is known), the absolute token count (when set)."""
        p = self.params
        tokens = e.num_in_flight_tokens
        if (
            tokens > p.max_relative_token_load * mean_tokens
            and tokens > mean_tokens + p.min_imbalance_tokens
        ):
            return True
        load = token_load_fraction(e)
        if load is not None and load > p.max_token_load:
            return True
        return p.max_in_flight_tokens is not None and tokens > p.max_in_flight_tokens

    def observe(self, ctx: RequestContext, decision: Decision) -> None:
        """Record the prompt's chunks on the chosen endpoint (the approximate index)."""
        if decision.endpoint_id is not None:
            self._approx.record(decision.endpoint_id, ctx.chunk_hashes)


SPEC = PluginSpec(
    type=PrefixAffinityFilter.TYPE,
    kind=PluginKind.FILTER,
    params_type=PrefixAffinityParams,
    factory=PrefixAffinityFilter,
    reads=frozenset(
        {EndpointField.NUM_IN_FLIGHT_TOKENS, EndpointField.BLOCK_SIZE, EndpointField.NUM_GPU_BLOCKS}
    ),
    summary="keeps the best prefix-cache matches unless their token load is over a bound",
    needs_resources=True,
)
