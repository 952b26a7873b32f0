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
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from headway.gateway.config import GatewayConfig, PoolConfig
from headway.gateway.outlier import OutlierDetector
from headway.gateway.tracker import InFlightTracker
from headway.routing import (
    EndpointSnapshot,
    ProfileHandler,
    RequestContext,
    RoutingResult,
    build_handler,
)


@dataclass(frozen=True)
class Full:
    """Every endpoint of `pool` is at its in-flight cap."""

    pool: PoolConfig


@dataclass(frozen=True)
class Route:
    pool: PoolConfig  # the pool that serves the request (the fallback, if used)
    endpoint: str
    result: RoutingResult


class PoolRouter:
    def __init__(
        self,
        pool: PoolConfig,
        tracker: InFlightTracker,
        seed: int,
        outliers: OutlierDetector | None = None,
    ) -> None:
        self.pool = pool
        self._tracker = tracker
        self._outliers = outliers
        self._handler: ProfileHandler = build_handler(dict(pool.routing_config()))
        self._rng = np.random.default_rng(seed)
        self._models = frozenset({pool.model})
        # url -> ((num_requests, num_tokens, is_ejected), the snapshot built from them)
        self._snapshot_cache: dict[str, tuple[tuple[int, int, bool], EndpointSnapshot]] = {}

    def snapshots(self, exclude: frozenset[str] = frozenset()) -> list[EndpointSnapshot]:
        """Every endpoint below its in-flight cap and not in `exclude`."""
        cap = self.pool.max_in_flight_per_endpoint
        outliers = self._outliers
        blocked: set[str] = set()
        if outliers is not None:
            now = time.monotonic()
            blocked = {u for u in self.pool.endpoints if outliers.is_blocked(u, now)}
            if len(blocked) == len(self.pool.endpoints):
                blocked = set()  # fail open: every endpoint is out
        out = []
        for url in self.pool.endpoints:
            if url in exclude:
                continue
            load = self._tracker.load(url)
            if load.num_requests >= cap:
                continue
            out.append(self._snapshot(url, load.num_requests, load.num_tokens, url in blocked))
        return out

    def _snapshot(
        self, url: str, num_requests: int, num_tokens: int, is_ejected: bool
    ) -> EndpointSnapshot:
        """The endpoint's snapshot, reused while its inputs are unchanged (snapshots
        are immutable values, so an equal one may be shared between decisions)."""
        key = (num_requests, num_tokens, is_ejected)
        cached = self._snapshot_cache.get(url)
        if cached is not None and cached[0] == key:
            return cached[1]
        snapshot = EndpointSnapshot(
            endpoint_id=url,
            models=self._models,
            num_in_flight_requests=num_requests,
            num_in_flight_tokens=num_tokens,
            is_ejected=is_ejected,
        )
        self._snapshot_cache[url] = (key, snapshot)
        return snapshot

    def decide(self, ctx: RequestContext, snapshots: list[EndpointSnapshot]) -> RoutingResult:
        return self._handler.decide(
            ctx, snapshots, now=time.monotonic(), rng=self._rng, timer=time.perf_counter
        )

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
    ) -> None:
        self.config = config
        self._outliers = outliers
        self._pools = {
            p.model: PoolRouter(p, tracker, seed + i, outliers) for i, p in enumerate(config.pools)
        }
        self._by_name = {name: p.model for p in config.pools for name in p.names}

    def pool_for(self, model: str) -> PoolConfig | None:
        name = self._by_name.get(model)
        return None if name is None else self._pools[name].pool

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
            if not snapshots and current.endpoints:
                if exclude and all(u in exclude for u in current.endpoints):
                    return None
                return Full(current)
            pool_ctx = ctx if ctx.model == current.model else _with_model(ctx, current.model)
            result = router.decide(pool_ctx, snapshots)
            if result.is_routed:
                router.observe(pool_ctx, result)
                endpoint = result.decision.endpoint_id
                assert endpoint is not None
                if self._outliers is not None:
                    self._outliers.routed(endpoint)
                return Route(current, endpoint, result)
            fallback = current.fallback
            current = self._pools[fallback].pool if fallback in self._pools else None
        return None


def _with_model(ctx: RequestContext, model: str) -> RequestContext:
    return replace(ctx, model=model)
