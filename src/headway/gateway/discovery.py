"""Where the pools' endpoint lists come from: discovery providers behind one small
interface, selected by `discovery: {kind: ...}` in the config.

A provider answers `endpoints()` with the full current list (every pool's
endpoints, each with its KV-event source if it has one). A provider with a
`poll_interval_s` is asked again that often by the gateway, which applies a changed
list like a config reload (gateway/server.py `Gateway.reload`: nothing in flight is
dropped); a provider with None (the static list) is never polled. Kubernetes (pods
selected by labels, as the Gateway API's InferencePool does) is meant to be the
next implementation.

Invariant: `apply_endpoints(config, provider.endpoints())` is a valid config whose
pools are the config's pools, in order, each with exactly the endpoints the
provider gave for it (pools it gave none for get an empty list: their requests go
to their fallback, or get 503).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Protocol

from headway.gateway.config import (
    DiscoveryKind,
    EngineKind,
    GatewayConfig,
    GatewayConfigError,
    KvEventSource,
)


@dataclass(frozen=True)
class DiscoveredEndpoint:
    """One endpoint of one pool (`pool`: the pool's `model`)."""

    pool: str
    url: str
    kv_events: KvEventSource | None = None


class DiscoveryProvider(Protocol):
    """Lists every pool's endpoints; see the module docstring."""

    @property
    def poll_interval_s(self) -> float | None:
        """Ask `endpoints()` again this often; None: the list never changes."""
        ...

    async def endpoints(self) -> list[DiscoveredEndpoint]:
        """The current endpoints of every pool."""
        ...


class StaticDiscovery:
    """The pools' `endpoints` as the config file lists them (`kind: static`)."""

    poll_interval_s: float | None = None

    def __init__(self, config: GatewayConfig) -> None:
        self._endpoints = [
            DiscoveredEndpoint(p.model, url, p.kv_events.get(url))
            for p in config.pools
            for url in p.endpoints
        ]

    async def endpoints(self) -> list[DiscoveredEndpoint]:
        return list(self._endpoints)


def make_discovery(config: GatewayConfig) -> DiscoveryProvider:
    """The provider `config.discovery.kind` names."""
    if config.discovery.kind == DiscoveryKind.STATIC:
        return StaticDiscovery(config)
    raise GatewayConfigError("discovery.kind", f"no provider for {config.discovery.kind!r}")


def apply_endpoints(config: GatewayConfig, found: list[DiscoveredEndpoint]) -> GatewayConfig:
    """`config` with each pool's endpoints replaced by those `found` for it (see the
    module invariant). Endpoints of pools the config does not have are an error."""
    by_pool: dict[str, list[DiscoveredEndpoint]] = {p.model: [] for p in config.pools}
    for ep in found:
        if ep.pool not in by_pool:
            raise GatewayConfigError("discovery", f"endpoint {ep.url} names no pool: {ep.pool!r}")
        if all(e.url != ep.url for e in by_pool[ep.pool]):
            by_pool[ep.pool].append(ep)
    pools = []
    for pool in config.pools:
        eps = by_pool[pool.model]
        kv = {e.url: e.kv_events for e in eps if e.kv_events is not None}
        urls = tuple(e.url for e in eps)
        # As config loading decides it: sources given, or discovery on a vLLM pool.
        has_kv_events = bool(kv) or (
            bool(urls) and pool.engine == EngineKind.VLLM and config.collectors.discover_kv_events
        )
        pools.append(
            replace(
                pool,
                endpoints=urls,
                kv_events=MappingProxyType(kv),
                has_kv_events=has_kv_events or pool.has_kv_events,
            )
        )
    return replace(config, pools=tuple(pools))
