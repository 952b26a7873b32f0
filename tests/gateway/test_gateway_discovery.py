"""Discovery providers: the static list, applying a provider's list to the config,
and a polled provider whose list changes while the gateway serves."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import MODEL, Fleets
from gateway_harness import InProcessGateway, pool
from sim_harness import poll, post

from headway.gateway.config import GatewayConfigError, KvEventSource, config_from_mapping
from headway.gateway.discovery import (
    DiscoveredEndpoint,
    StaticDiscovery,
    apply_endpoints,
    make_discovery,
)

A, B = "http://10.0.0.1:8000", "http://10.0.0.2:8000"


def _config(**extra: Any) -> Any:
    return config_from_mapping(
        {
            "pools": [
                {"model": "m", "endpoints": [A, {"url": B, "kv_events": "tcp://10.0.0.2:5557"}]},
                {"model": "n", "engine": "sglang", "endpoints": [B]},
            ],
            **extra,
        }
    )


def test_static_discovery_lists_the_config() -> None:
    provider = make_discovery(_config(discovery={"kind": "static"}))
    assert isinstance(provider, StaticDiscovery) and provider.poll_interval_s is None
    found = asyncio.run(provider.endpoints())
    assert found == [
        DiscoveredEndpoint("m", A),
        DiscoveredEndpoint("m", B, KvEventSource("tcp://10.0.0.2:5557")),
        DiscoveredEndpoint("n", B),
    ]
    config = _config()
    assert apply_endpoints(config, found) == config  # the static list changes nothing


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        ([DiscoveredEndpoint("n", A)], {"m": (), "n": (A,)}),
        ([DiscoveredEndpoint("m", B), DiscoveredEndpoint("m", B)], {"m": (B,), "n": ()}),
        ([], {"m": (), "n": ()}),
    ],
    ids=["moved", "duplicate", "empty"],
)
def test_apply_endpoints(
    found: list[DiscoveredEndpoint], expected: dict[str, tuple[str, ...]]
) -> None:
    config = apply_endpoints(_config(), found)
    assert {p.model: p.endpoints for p in config.pools} == expected


def test_apply_endpoints_unknown_pool() -> None:
    with pytest.raises(GatewayConfigError, match=r"^discovery: .*names no pool"):
        apply_endpoints(_config(), [DiscoveredEndpoint("zzz", A)])


class _ListProvider:
    """A provider whose list the test changes (stands in for Kubernetes)."""

    poll_interval_s = 0.02

    def __init__(self, found: list[DiscoveredEndpoint]) -> None:
        self.found = found

    async def endpoints(self) -> list[DiscoveredEndpoint]:
        return list(self.found)


@pytest.fixture
def provider_gw(fleets: Fleets) -> Iterator[tuple[InProcessGateway, _ListProvider]]:
    a = fleets.main.urls[0]
    provider = _ListProvider([DiscoveredEndpoint(MODEL, a)])
    gw = InProcessGateway(
        {"pools": [pool(MODEL, [a], routing="round-robin")]}, discovery=provider
    ).start()
    yield gw, provider
    gw.stop()


def _routed_to(url: str) -> str:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
    resp = post(url, "/v1/completions", body, headers={"x-headway-debug": "1"})
    assert resp.status == 200, resp.text
    return resp.headers["x-headway-route"].split(";")[0].removeprefix("endpoint=")


def test_polled_provider_changes_endpoints(
    provider_gw: tuple[InProcessGateway, _ListProvider], fleets: Fleets
) -> None:
    gw, provider = provider_gw
    a, b = fleets.main.urls
    provider.found = [DiscoveredEndpoint(MODEL, b)]
    poll(lambda: gw.gateway.config.pools[0].endpoints, lambda e: e == (b,), what="b only")
    assert {_routed_to(gw.url) for _ in range(3)} == {b}
    provider.found = [DiscoveredEndpoint(MODEL, a), DiscoveredEndpoint(MODEL, b)]
    poll(lambda: gw.gateway.config.pools[0].endpoints, lambda e: e == (a, b), what="a and b")
    assert {_routed_to(gw.url) for _ in range(4)} == {a, b}
