"""`build_handler(..., resources=)`: only plugins that ask for resources get them, a
factory's ConfigError is reported under the plugin's path, and the handler's plugins
share one approximate prefix index."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from headway.routing import (
    ApproxPrefixIndex,
    ConfigError,
    KvBlockIndex,
    PluginKind,
    PluginSpec,
    RequestContext,
    RequestScratch,
    RoutingResources,
    build_handler,
    default_preset,
    default_registry,
)
from headway.routing.plugin import Endpoints
from headway.routing.plugins import BUILTIN_SPECS
from headway.routing.registry import Registry


@dataclass(frozen=True)
class NoParams:
    """No parameters."""


class SeesResources:
    TYPE = "sees-resources"
    built: ClassVar[list[RoutingResources]] = []

    def __init__(self, params: NoParams, resources: RoutingResources) -> None:
        if resources.kv_index is None:
            raise ConfigError("", "needs a KV index")
        SeesResources.built.append(resources)

    def score(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Mapping[str, float]:
        return {e.endpoint_id: 1.0 for e in endpoints}


SPEC: PluginSpec[Any] = PluginSpec(
    type=SeesResources.TYPE,
    kind=PluginKind.SCORER,
    params_type=NoParams,
    factory=SeesResources,
    reads=frozenset(),
    summary="test plugin",
    needs_resources=True,
)


def registry() -> Registry:
    return Registry((*BUILTIN_SPECS, SPEC))


def config(num_profiles: int = 1) -> dict[str, Any]:
    profile = {"scorers": ["least-request", {"type": "sees-resources"}]}
    if num_profiles == 1:
        return {"profiles": {"p": profile}}
    return {"mode": "prefill-decode", "profiles": {"prefill": profile, "decode": profile}}


def test_resources_reach_plugins_that_need_them() -> None:
    SeesResources.built.clear()
    kv = KvBlockIndex()
    build_handler(config(2), registry(), resources=RoutingResources(kv_index=kv))
    assert len(SeesResources.built) == 2
    first, second = SeesResources.built
    assert first.kv_index is kv and second.kv_index is kv
    assert first.approx_index is not None, "the handler gets its own approximate index"
    assert first.approx_index is second.approx_index, "shared by the handler's plugins"


def test_callers_approx_index_is_used() -> None:
    SeesResources.built.clear()
    approx = ApproxPrefixIndex(10)
    resources = RoutingResources(kv_index=KvBlockIndex(), approx_index=approx)
    build_handler(config(), registry(), resources=resources)
    assert SeesResources.built[0].approx_index is approx


def test_approx_index_size_is_configurable() -> None:
    SeesResources.built.clear()
    raw = {**config(), "approx_index": {"max_entries_per_endpoint": 7}}
    build_handler(raw, registry(), resources=RoutingResources(kv_index=KvBlockIndex()))
    index = SeesResources.built[0].approx_index
    assert index is not None and index.max_entries_per_endpoint == 7


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"max_entries_per_endpoint": 0}, "approx_index.max_entries_per_endpoint: must be >= 1"),
        ({"max_entries_per_endpoint": "x"}, "approx_index.max_entries_per_endpoint: must be an"),
        ({"size": 3}, "approx_index.size: unknown field"),
    ],
    ids=["zero", "not-int", "unknown-key"],
)
def test_approx_index_config_errors(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_handler({**config(), "approx_index": raw}, registry())


def test_factory_config_error_names_the_plugin_path() -> None:
    with pytest.raises(ConfigError, match=r"^profiles\.p\.scorers\[1\]: needs a KV index$"):
        build_handler(config(), registry())


def test_plain_call_still_works() -> None:
    """The gateway's call today: no resources, a preset."""
    handler = build_handler({"preset": "least-request"})
    assert handler.profiles[0].name == "least-request"


@pytest.mark.parametrize(
    ("has_kv_events", "expected"), [(True, "kv-aware"), (False, "kv-aware-approx")]
)
def test_default_preset(has_kv_events: bool, expected: str) -> None:
    assert default_preset(has_kv_events) == expected


def test_specs_without_resources_get_params_only() -> None:
    for spec in default_registry().specs():
        if not spec.needs_resources:
            spec.create()  # would fail if the factory were given two arguments
