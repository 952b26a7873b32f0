"""Registry and config: plugins and profiles from plain dicts; errors name the field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from headway.routing import (
    PRESETS,
    ConfigError,
    EndpointField,
    Endpoints,
    HandlerMode,
    KvBlockIndex,
    PluginKind,
    PluginSpec,
    PrefillDecodeHandler,
    Registry,
    RequestContext,
    RequestScratch,
    RoutingResources,
    SingleProfileHandler,
    build_handler,
    default_registry,
)
from headway.routing.config import params_from_mapping
from headway.routing.plugins.healthy import HealthyFilter


def one(profile: Mapping[str, Any], **top: Any) -> dict[str, Any]:
    return {"profiles": {"default": profile}, **top}


LR = {"type": "least-request", "weight": 1.0}


ERROR_CASES: list[tuple[Any, str]] = [
    (
        one({"scorers": [LR, {"type": "least-request", "name": "lr2", "weight": -1}]}),
        "profiles.default.scorers[1].weight: must be >= 0",
    ),
    (
        one({"scorers": [{"type": "least-request", "weight": "heavy"}]}),
        "profiles.default.scorers[0].weight: must be a finite number",
    ),
    (
        one({"scorers": [{"type": "least-request", "weight": True}]}),
        "profiles.default.scorers[0].weight: must be a finite number",
    ),
    (
        one({"filters": ["healthy", "nope"]}),
        "profiles.default.filters[1].type: unknown filter 'nope'",
    ),
    (
        one({"filters": ["least-request"]}),
        "profiles.default.filters[0].type: 'least-request' is a scorer, not a filter",
    ),
    (
        one({"picker": "healthy"}),
        "profiles.default.picker.type: 'healthy' is a filter, not a picker",
    ),
    (
        one({"filters": [{"name": "x"}]}),
        "profiles.default.filters[0].type: must be a non-empty string",
    ),
    (
        one({"filters": [{"type": "healthy", "weight": 1}]}),
        "profiles.default.filters[0].weight: unknown field",
    ),
    (
        one({"filters": [{"type": "healthy", "params": {"fail_open": 1}}]}),
        "profiles.default.filters[0].params.fail_open: must be true or false",
    ),
    (
        one({"filters": [{"type": "healthy", "params": {"fial_open": True}}]}),
        "profiles.default.filters[0].params.fial_open: unknown field",
    ),
    (
        one({"filters": [{"type": "healthy", "params": [1]}]}),
        "profiles.default.filters[0].params: must be a mapping",
    ),
    (
        one({"picker": {"type": "max-score", "params": {"tie_tolerance": 1.5}}}),
        "profiles.default.picker.params.tie_tolerance: must be in [0, 1)",
    ),
    (
        one({"filters": ["healthy", "healthy"]}),
        "profiles.default.filters[1].name: duplicate plugin name 'healthy'",
    ),
    (one({"filters": "healthy"}), "profiles.default.filters: must be a list"),
    (one({"filters": [7]}), "profiles.default.filters[0]: must be a mapping"),
    (one({"scorer": [LR]}), "profiles.default.scorer: unknown field"),
    (one({"num_top_scores": -2}), "profiles.default.num_top_scores: must be >= 0"),
    (one({"num_top_scores": 2.5}), "profiles.default.num_top_scores: must be an integer"),
    ({"profiles": {"default": []}}, "profiles.default: must be a mapping"),
    ({"profiles": {}}, "profiles: must define at least one profile"),
    ({}, "profiles: must define at least one profile"),
    ([], "must be a mapping"),
    ({"preset": "fastest"}, "preset: unknown preset 'fastest'"),
    ({"preset": "round-robin", "profiles": {}}, "profiles: cannot be combined with preset"),
    ({"preset": "round-robin", "mode": "prefill-decode"}, "mode: presets run in mode: single"),
    (
        {"mode": "split", "profiles": {"a": {}}},
        "mode: must be one of ['single', 'prefill-decode']",
    ),
    ({"profile": "b", "profiles": {"a": {}}}, "profile: no profile named 'b'"),
    ({"profiles": {"a": {}, "b": {}}}, "profile: no profile named 'default'"),
    (
        {"profile": "a", "profiles": {"a": {}, "b": {}}},
        "profiles.b: is not used by mode: single",
    ),
    (
        {"prefill_profile": "a", "profiles": {"a": {}}},
        "prefill_profile: only used with mode: prefill-decode",
    ),
    (
        {"mode": "prefill-decode", "profiles": {"prefill": {}}},
        "decode_profile: no profile named 'decode'",
    ),
    (
        {"mode": "prefill-decode", "profile": "x", "profiles": {"x": {}}},
        "profile: not used with mode: prefill-decode",
    ),
    (
        {
            "mode": "prefill-decode",
            "prefill_profile": "x",
            "decode_profile": "x",
            "profiles": {"x": {}},
        },
        "decode_profile: must differ from prefill_profile",
    ),
    ({"profiles": {"a": {}}, "extra": 1}, "extra: unknown field"),
]


@pytest.mark.parametrize(("config", "error"), ERROR_CASES, ids=[e for _, e in ERROR_CASES])
def test_errors_name_the_field(config: Any, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_handler(config)
    assert str(info.value).startswith(error)


def test_error_under_prefix() -> None:
    """A gateway puts its own section name in front."""
    err = ConfigError("profiles.a.picker", "bad")
    assert str(err.under("routing")) == "routing.profiles.a.picker: bad"
    assert err.under("routing").path == "routing.profiles.a.picker"


_ELIGIBLE = ["healthy", "serves-model"]
PRESET_SHAPES: dict[str, tuple[list[str], list[tuple[str, float]], str]] = {
    "round-robin": (_ELIGIBLE, [("round-robin", 1.0)], "max-score"),
    "least-request": (_ELIGIBLE, [("least-request", 1.0)], "max-score"),
    "power-of-two": (_ELIGIBLE, [("least-request", 1.0)], "power-of-two"),
    "session-sticky": (
        [*_ELIGIBLE, "saturation"],
        [("session-affinity", 1.0), ("least-request", 0.1)],
        "max-score",
    ),
    "prefix-approx": (
        [*_ELIGIBLE, "prefix-affinity-until-saturated"],
        [("token-load", 1.0)],
        "max-score",
    ),
    "kv-aware": (
        [*_ELIGIBLE, "prefix-affinity-until-saturated", "saturation"],
        [
            ("precise-prefix", 2.0),
            ("token-load", 1.0),
            ("least-request", 1.0),
            ("routed-load", 3.0),
        ],
        "max-score",
    ),
    "kv-aware-approx": (
        [*_ELIGIBLE, "prefix-affinity-until-saturated", "saturation"],
        [("approx-prefix", 2.0), ("token-load", 1.0), ("least-request", 1.0)],
        "max-score",
    ),
}


def test_every_preset_has_a_shape() -> None:
    assert set(PRESET_SHAPES) == set(PRESETS)


@pytest.mark.parametrize("preset", sorted(PRESET_SHAPES), ids=sorted(PRESET_SHAPES))
def test_presets_build(preset: str) -> None:
    resources = RoutingResources(kv_index=KvBlockIndex())
    handler = build_handler({"preset": preset}, resources=resources)
    assert isinstance(handler, SingleProfileHandler) and handler.mode is HandlerMode.SINGLE
    p = handler.profile
    filters, scorers, picker = PRESET_SHAPES[preset]
    assert p.name == preset
    assert [f.name for f in p.filters] == filters
    assert [(s.name, s.weight) for s in p.scorers] == scorers
    assert p.picker.name == picker


def test_presets_get_fresh_plugin_instances() -> None:
    a = build_handler({"preset": "round-robin"})
    b = build_handler({"preset": "round-robin"})
    assert isinstance(a, SingleProfileHandler) and isinstance(b, SingleProfileHandler)
    assert a.profile.scorers[0].plugin is not b.profile.scorers[0].plugin


def test_full_profile_config() -> None:
    handler = build_handler(
        {
            "profile": "balanced",
            "profiles": {
                "balanced": {
                    "filters": [{"type": "healthy", "params": {"fail_open": True}}, "serves-model"],
                    "scorers": [
                        {"type": "least-request", "weight": 2},
                        {"type": "round-robin", "name": "rr", "weight": 0.5},
                    ],
                    "picker": {"type": "max-score", "params": {"tie_tolerance": 0}},
                    "num_top_scores": 5,
                }
            },
        }
    )
    assert isinstance(handler, SingleProfileHandler)
    p = handler.profile
    assert isinstance(p.filters[0].plugin, HealthyFilter) and p.filters[0].plugin.params.fail_open
    assert [(s.name, s.weight) for s in p.scorers] == [("least-request", 2.0), ("rr", 0.5)]
    assert p.num_top_scores == 5


def test_prefill_decode_config() -> None:
    handler = build_handler(
        {
            "mode": "prefill-decode",
            "profiles": {"prefill": {"scorers": [LR]}, "decode": {"scorers": [LR]}},
        }
    )
    assert isinstance(handler, PrefillDecodeHandler)
    assert [p.name for p in handler.profiles] == ["prefill", "decode"]


# -- registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeepAllParams:
    label: str = "x"


class KeepAll:
    TYPE = "keep-all"

    def __init__(self, params: KeepAllParams) -> None:
        self.params = params

    def filter(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Endpoints:
        return endpoints


KEEP_ALL = PluginSpec(
    "keep-all", PluginKind.FILTER, KeepAllParams, KeepAll, frozenset(), "keeps all"
)


def test_custom_registry_plugins_build_from_config() -> None:
    registry = Registry([*default_registry().specs(), KEEP_ALL])
    handler = build_handler(
        one({"filters": [{"type": "keep-all", "params": {"label": "y"}}]}), registry
    )
    assert isinstance(handler, SingleProfileHandler)
    plugin = handler.profile.filters[0].plugin
    assert isinstance(plugin, KeepAll) and plugin.params.label == "y"
    with pytest.raises(ConfigError, match="unknown filter 'keep-all'"):
        build_handler(one({"filters": ["keep-all"]}))  # not in the default registry


def test_registry_rejects_duplicates_and_unknowns() -> None:
    registry = default_registry()
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get("healthy"))
    with pytest.raises(KeyError):
        registry.get("nope")
    assert [s.type for s in registry.specs(PluginKind.PICKER)] == [
        "max-score",
        "power-of-two",
        "weighted-random",
    ]


@pytest.mark.parametrize("type_", ["Keep", "keep_all", "keep--all", "-keep", "keep-", ""], ids=str)
def test_spec_type_must_be_kebab_case(type_: str) -> None:
    with pytest.raises(ValueError, match="kebab-case"):
        PluginSpec(type_, PluginKind.FILTER, KeepAllParams, KeepAll, frozenset(), "x")


def test_spec_checks_factory_kind() -> None:
    spec = PluginSpec(
        "wrong", PluginKind.PICKER, KeepAllParams, KeepAll, frozenset({EndpointField.ROLE}), "x"
    )
    with pytest.raises(TypeError, match="did not build a picker"):
        spec.create()


# -- params parsing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AllTypes:
    flag: bool = False
    count: int = 0
    ratio: float = 0.0
    label: str = "x"
    limit: float | None = None
    names: tuple[str, ...] = ()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, AllTypes()),
        ({"ratio": 2}, AllTypes(ratio=2.0)),
        ({"limit": None}, AllTypes()),
        ({"limit": 0.5, "names": ["a", "b"]}, AllTypes(limit=0.5, names=("a", "b"))),
        ({"flag": True, "count": 3, "label": "y"}, AllTypes(flag=True, count=3, label="y")),
    ],
    ids=["defaults", "int-as-float", "optional-none", "optional-and-tuple", "scalars"],
)
def test_params_parse(raw: Any, expected: AllTypes) -> None:
    assert params_from_mapping(AllTypes, raw, "p") == expected


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ({"count": 1.5}, "p.count: must be an integer"),
        ({"count": True}, "p.count: must be an integer"),
        ({"ratio": "1"}, "p.ratio: must be a finite number"),
        ({"ratio": float("nan")}, "p.ratio: must be a finite number"),
        ({"label": ""}, "p.label: must be a non-empty string"),
        ({"names": "ab"}, "p.names: must be a list"),
        ({"names": ["a", 3]}, "p.names[1]: must be a non-empty string"),
    ],
    ids=["int-float", "int-bool", "float-str", "float-nan", "empty-str", "tuple-str", "tuple-item"],
)
def test_params_reject(raw: Any, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        params_from_mapping(AllTypes, raw, "p")
    assert str(info.value).startswith(error)
