"""Picking an endpoint for a request: the pool's `headway.routing` handler over
snapshots built from the gateway's in-flight tracker.

Endpoints ejected by passive outlier detection (outlier.py) are offered with
`is_ejected=True`, so the routing profile's `healthy` filter drops them; when every
endpoint of a pool is ejected the gateway fails open (Envoy's panic mode): all are
offered as not ejected, since a pool that might answer beats a certain 503. A pool
with no endpoint hands its requests to its fallback pool, if it names one.

Endpoints at the pool's in-flight cap (`max_in_flight_per_endpoint`, counted by the
gateway's tracker) are left out of the snapshot list the routing handler sees. When
every endpoint of a pool is at its cap the answer is `Full`: the request waits in
that pool's admission queue (it does not spill over to the fallback, which is for a
pool with nothing to offer, not a busy one).

Cordoned endpoints (the admin port, docs/operations.md) are left out entirely: they
get no new request, and a pool whose endpoints are all cordoned counts as having
none (its fallback, else 503). Requests already on them finish.

A lone candidate skips the routing handler when its profile could only route the
request there (`_LoneCandidate`): the handler's answer is known without running it,
and stateful plugins still observe the decision. This is most requests of a pool with
one endpoint, where the handler's run was the largest part of the gateway's own CPU
per request.

Snapshots combine three collectors: the in-flight tracker (exact, this process), the
metrics scraper (engine queue, running, KV usage, LoRA, cache geometry; with
`is_metrics_stale` once scrapes fail) and the outlier detector. A snapshot is reused
while none of its inputs changed (the scraper's per-endpoint `version` stands for
all scraped values).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Set
from dataclasses import dataclass, replace

import numpy as np

from headway.gateway.config import GatewayConfig, PoolConfig
from headway.gateway.outlier import OutlierDetector
from headway.gateway.scraper import MetricsScraper
from headway.gateway.tracker import InFlightTracker
from headway.routing import (
    ApproxPrefixIndex,
    Decision,
    EndpointScore,
    EndpointSnapshot,
    HandlerMode,
    KvBlockIndex,
    Outcome,
    Profile,
    ProfileHandler,
    RequestContext,
    RoutingResources,
    RoutingResult,
    build_handler,
)
from headway.routing.prefix.matching import expected_cached_tokens


@dataclass(frozen=True)
class Full:
    """Every endpoint of `pool` is at its in-flight cap."""

    pool: PoolConfig


@dataclass(slots=True)
class Route:
    """Where a request goes (not changed once built; a plain slotted class: one is
    built per request, and a frozen dataclass costs several times as much)."""

    pool: PoolConfig  # the pool that serves the request (the fallback, if used)
    endpoint: str
    result: RoutingResult
    # Prompt tokens the KV-event index expects the engine to serve from its prefix
    # cache (leading matched blocks x block size); None: no precise hashes or index.
    predicted_cached_tokens: int | None = None
    # The same expectation with the approximate index as fallback (0: unknown); the
    # in-flight load is charged net of it (`charged_tokens`).
    expected_cached_tokens: int = 0

    def charged_tokens(self, num_tokens: int) -> int:
        """The in-flight token load to charge for a request estimated at `num_tokens`
        (prompt + most output): less the prompt tokens expected from the prefix cache,
        which cost the engine neither prefill nor new KV blocks. Without it a cache
        holder looks busiest exactly because it serves long cached prompts, and
        load-aware plugins push its requests to replicas that must recompute them."""
        return max(0, num_tokens - self.expected_cached_tokens)


# Plugins whose answer for a single candidate is known without running them. Filters:
# `healthy` keeps a healthy, not ejected endpoint; `serves-model` one that serves the
# request's model (and adapter). Scorers: these score a lone candidate 1.0 (round-robin:
# 1 - 0/1; least-request: all counts equal), so its combined score is 1.0. Picker:
# `max-score` picks a lone candidate without drawing from the rng.
_LONE_FILTERS = frozenset({"healthy", "serves-model"})
_LONE_SCORERS = frozenset({"round-robin", "least-request"})
_LONE_PICKERS = frozenset({"max-score"})


def _plugin_type(plugin: object) -> str | None:
    kind = getattr(type(plugin), "TYPE", None)
    return kind if isinstance(kind, str) else None


class _LoneCandidate:
    """The decision `profile` makes when offered one endpoint, for profiles built only
    from the plugins above: routed to it when it passes the filters (the checks below
    are theirs), with the scores `Profile.run` would report. No plugin runs, so the
    decision has no timings."""

    __slots__ = ("_checks_health", "_checks_model", "_profile", "_top_scores")

    def __init__(self, profile: Profile) -> None:
        self._profile = profile
        kinds = {_plugin_type(f.plugin) for f in profile.filters}
        self._checks_health = "healthy" in kinds
        self._checks_model = "serves-model" in kinds
        self._top_scores: dict[str, tuple[EndpointScore, ...]] = {}

    @staticmethod
    def of(handler: ProfileHandler) -> _LoneCandidate | None:
        """The shortcut for `handler`, or None when its answer needs running it."""
        if handler.mode != HandlerMode.SINGLE:
            return None
        profile = handler.profiles[0]
        if (
            all(_plugin_type(f.plugin) in _LONE_FILTERS for f in profile.filters)
            and all(_plugin_type(s.plugin) in _LONE_SCORERS for s in profile.scorers)
            and _plugin_type(profile.picker.plugin) in _LONE_PICKERS
        ):
            return _LoneCandidate(profile)
        return None

    def decide(
        self, ctx: RequestContext, endpoint: EndpointSnapshot, now: float
    ) -> RoutingResult | None:
        """The decision for `endpoint` offered alone; None when a filter would drop it
        (the handler then runs, and reports which)."""
        if self._checks_health and not (endpoint.is_healthy and not endpoint.is_ejected):
            return None
        if self._checks_model:
            adapter = ctx.lora_adapter
            if ctx.model not in endpoint.models or not (
                adapter is None or not endpoint.lora_adapters or adapter in endpoint.lora_adapters
            ):
                return None
        url = endpoint.endpoint_id
        top_scores = self._top_scores.get(url)
        if top_scores is None:
            profile = self._profile
            by_scorer = tuple((s.name, 1.0) for s in profile.scorers)
            top_scores = (EndpointScore(url, 1.0, by_scorer),)[: profile.num_top_scores]
            if len(self._top_scores) > 1024:  # endpoint URLs: few; stay bounded anyway
                self._top_scores.clear()
            self._top_scores[url] = top_scores
        return RoutingResult(
            Decision(
                profile=self._profile.name,
                outcome=Outcome.ROUTED,
                decided_at=now,
                num_endpoints=1,
                num_candidates=1,
                endpoint_id=url,
                top_scores=top_scores,
            )
        )


class PoolRouter:
    def __init__(
        self,
        pool: PoolConfig,
        tracker: InFlightTracker,
        seed: int,
        outliers: OutlierDetector | None = None,
        scraper: MetricsScraper | None = None,
        kv_index: KvBlockIndex | None = None,
        cordoned: Set[str] = frozenset(),
    ) -> None:
        self.pool = pool
        self._cordoned = cordoned
        self._tracker = tracker
        self._outliers = outliers
        self._scraper = scraper
        self.kv_index = kv_index if pool.has_kv_events else None
        self._approx_index = ApproxPrefixIndex()  # the handler's, shared by its plugins
        self._handler: ProfileHandler = build_handler(
            dict(pool.routing_config()),
            resources=RoutingResources(kv_index=self.kv_index, approx_index=self._approx_index),
        )
        self._lone = _LoneCandidate.of(self._handler)
        self._rng = np.random.default_rng(seed)
        self._models = frozenset({pool.model})
        # url -> ((num_requests, num_tokens, is_ejected, scrape version), the snapshot)
        self._snapshot_cache: dict[str, tuple[tuple[int, int, bool, int], EndpointSnapshot]] = {}

    def can_serve(
        self,
        pool: PoolConfig,
        outliers: OutlierDetector | None,
        scraper: MetricsScraper | None,
        kv_index: KvBlockIndex | None,
        cordoned: Set[str],
    ) -> bool:
        """Whether this router can go on serving `pool` with these collaborators."""
        return (
            pool == self.pool
            and outliers is self._outliers
            and scraper is self._scraper
            and (kv_index if pool.has_kv_events else None) is self.kv_index
            and cordoned is self._cordoned
        )

    @property
    def profile_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self._handler.profiles)

    def available(self) -> tuple[str, ...]:
        """The pool's endpoints that are not cordoned."""
        cordoned = self._cordoned
        if not cordoned:
            return self.pool.endpoints
        return tuple(u for u in self.pool.endpoints if u not in cordoned)

    def snapshots(self, exclude: frozenset[str] = frozenset()) -> list[EndpointSnapshot]:
        """Every endpoint not cordoned, below its in-flight cap and not in `exclude`."""
        cap = self.pool.max_in_flight_per_endpoint
        outliers = self._outliers
        blocked: set[str] = set()
        now = time.monotonic()
        endpoints = self.available()
        if outliers is not None:
            blocked = {u for u in endpoints if outliers.is_blocked(u, now)}
            if len(blocked) == len(endpoints):
                blocked = set()  # fail open: every endpoint is out
        out = []
        for url in endpoints:
            if url in exclude:
                continue
            load = self._tracker.load(url)
            if load.num_requests >= cap:
                continue
            out.append(self._snapshot(url, load.num_requests, load.num_tokens, url in blocked, now))
        return out

    def _snapshot(
        self, url: str, num_requests: int, num_tokens: int, is_ejected: bool, now: float
    ) -> EndpointSnapshot:
        """The endpoint's snapshot, reused while its inputs are unchanged (snapshots
        are immutable values, so an equal one may be shared between decisions)."""
        view = self._scraper.view(url, now) if self._scraper is not None else None
        key = (num_requests, num_tokens, is_ejected, -1 if view is None else view.version)
        cached = self._snapshot_cache.get(url)
        if cached is not None and cached[0] == key:
            return cached[1]
        scraped: dict[str, object] = {}
        if view is not None:
            scraped["metrics_updated_at"] = view.updated_at
            scraped["is_metrics_stale"] = view.is_stale
            m = view.metrics
            if m is not None:
                scraped.update(
                    num_queued_requests=m.num_queued_requests or 0,
                    num_running_requests=m.num_running_requests or 0,
                    kv_cache_usage=m.kv_cache_usage,  # None: the engine reports none
                    active_lora_adapters=m.active_lora_adapters,
                    max_lora_adapters=m.max_lora_adapters,
                    block_size=m.block_size,
                    num_gpu_blocks=m.num_gpu_blocks,
                )
        snapshot = EndpointSnapshot(
            endpoint_id=url,
            models=self._models,
            num_in_flight_requests=num_requests,
            num_in_flight_tokens=num_tokens,
            is_ejected=is_ejected,
            **scraped,  # type: ignore[arg-type]
        )
        self._snapshot_cache[url] = (key, snapshot)
        return snapshot

    def expected_cached_tokens(
        self, ctx: RequestContext, endpoint: str, block_size: int | None
    ) -> int:
        """Prompt tokens `endpoint` should serve from cache: precise, else approximate
        (call before `observe`, which records this very prompt in the approximate index)."""
        return expected_cached_tokens(ctx, endpoint, self.kv_index, self._approx_index, block_size)

    def predicted_cached_tokens(
        self, ctx: RequestContext, endpoint: str, block_size: int | None
    ) -> int | None:
        """Prompt tokens the KV-event index says `endpoint` holds for `ctx` (the
        hashes already leave out the last prompt token, vLLM's rule)."""
        if self.kv_index is None or not ctx.block_hashes or not block_size:
            return None
        if self.kv_index.is_stale(endpoint):
            return None
        matched = self.kv_index.match_lengths(ctx.block_hashes, (endpoint,)).get(endpoint, 0)
        return matched * block_size

    def decide(self, ctx: RequestContext, snapshots: list[EndpointSnapshot]) -> RoutingResult:
        now = time.monotonic()
        if len(snapshots) == 1 and self._lone is not None:
            result = self._lone.decide(ctx, snapshots[0], now)
            if result is not None:
                return result
        return self._handler.decide(ctx, snapshots, now=now, rng=self._rng, timer=time.perf_counter)

    def observe(self, ctx: RequestContext, result: RoutingResult) -> None:
        self._handler.observe(ctx, result)


class Router:
    """Every pool's router; resolves a model name (or alias) to a pool."""

    def __init__(
        self,
        config: GatewayConfig,
        tracker: InFlightTracker,
        seed: int = 0,
        outliers: OutlierDetector | None = None,
        scraper: MetricsScraper | None = None,
        kv_index: KvBlockIndex | None = None,
        block_size_of: Callable[[str], int | None] | None = None,
        cordoned: Set[str] = frozenset(),
        previous: Router | None = None,
    ) -> None:
        self.config = config
        self._outliers = outliers
        self._block_size_of = block_size_of
        if kv_index is None and any(p.has_kv_events for p in config.pools):
            # Nothing feeds it: every endpoint counts as unknown, and `precise-prefix`
            # falls back to approximate matching (the gateway passes its fed index).
            kv_index = KvBlockIndex()
            for p in config.pools:
                for url in p.endpoints:
                    kv_index.mark_stale(url)
        self._pools: dict[str, PoolRouter] = {}
        for i, p in enumerate(config.pools):
            old = previous._pools.get(p.model) if previous is not None else None
            if old is not None and old.can_serve(p, outliers, scraper, kv_index, cordoned):
                # A reload that left the pool alone keeps its plugins' state (indexes).
                self._pools[p.model] = old
            else:
                self._pools[p.model] = PoolRouter(
                    p, tracker, seed + i, outliers, scraper, kv_index, cordoned
                )
        self._by_name = {name: p.model for p in config.pools for name in p.names}

    def pool_for(self, model: str) -> PoolConfig | None:
        name = self._by_name.get(model)
        return None if name is None else self._pools[name].pool

    def pool_router(self, model: str) -> PoolRouter:
        return self._pools[model]

    def block_size(self, pool: PoolConfig) -> int | None:
        """The engines' KV block size for `pool`: the first endpoint's that is known."""
        if self._block_size_of is None:
            return None
        for url in pool.endpoints:
            size = self._block_size_of(url)
            if size:
                return size
        return None

    def route(
        self, pool: PoolConfig, ctx: RequestContext, exclude: frozenset[str] = frozenset()
    ) -> Route | Full | None:
        """Decide and commit (observe) a route, following fallbacks; `Full`: the pool
        that would serve it has every endpoint at its cap; None: no endpoint.
        `exclude`: endpoints not to use (a retry's earlier attempts)."""
        seen: set[str] = set()
        current: PoolConfig | None = pool
        while current is not None and current.model not in seen:
            seen.add(current.model)
            router = self._pools[current.model]
            snapshots = router.snapshots(exclude)
            if not snapshots and (available := router.available()):
                if exclude and all(u in exclude for u in available):
                    return None
                return Full(current)
            pool_ctx = ctx if ctx.model == current.model else _with_model(ctx, current.model)
            result = router.decide(pool_ctx, snapshots)
            if result.is_routed:
                endpoint = result.decision.endpoint_id
                assert endpoint is not None
                expected, predicted = 0, None
                if pool_ctx.block_hashes or pool_ctx.chunk_hashes:  # else nothing to match
                    block_size = self.block_size(current)
                    predicted = router.predicted_cached_tokens(pool_ctx, endpoint, block_size)
                    if predicted is not None:  # the precise answer both give: match once
                        expected = max(0, min(predicted, pool_ctx.num_prompt_tokens_est - 1))
                    else:
                        expected = router.expected_cached_tokens(pool_ctx, endpoint, block_size)
                router.observe(pool_ctx, result)
                if self._outliers is not None:
                    self._outliers.routed(endpoint)
                return Route(current, endpoint, result, predicted, expected)
            fallback = current.fallback
            current = self._pools[fallback].pool if fallback in self._pools else None
        return None


def _with_model(ctx: RequestContext, model: str) -> RequestContext:
    return replace(ctx, model=model)
