"""Build profile handlers from plain config (as loaded from YAML).

Schema (every key optional unless noted; paths in errors are relative to this
mapping, so a gateway prefixes them with its own section name)::

    preset: least-request          # or `profiles` (not both)
    mode: single                   # single | prefill-decode
    profile: default               # single: which profile (default: the only one)
    prefill_profile: prefill       # prefill-decode: the two profiles
    decode_profile: decode
    approx_index:                  # the handler's own approximate prefix index
      max_entries_per_endpoint: 32768   # (unused when resources bring one)
    profiles:
      <name>:
        filters: [<plugin>, ...]            # default: none
        scorers: [<plugin + weight>, ...]   # default: none (every candidate ties)
        picker: <plugin>                    # default: max-score
        num_top_scores: 3                   # scores reported per decision

    <plugin> := "<type>" | {type: <type>, name: <unique in profile; default type>,
                            params: {<the type's params>}}
    scorers also take `weight: <number >= 0>` (default 1.0)

Every profile defined must be used by the mode.

`resources` (see routing.shared) reach only plugins whose spec sets
`needs_resources`. Without `resources.approx_index` the handler gets its own
`ApproxPrefixIndex`, shared by all of its plugins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from headway.routing.config import (
    ConfigError,
    as_int,
    as_mapping,
    as_number,
    as_str,
    check_keys,
    join,
    params_from_mapping,
)
from headway.routing.decision import PluginKind
from headway.routing.handler import (
    HandlerMode,
    PrefillDecodeHandler,
    ProfileHandler,
    SingleProfileHandler,
)
from headway.routing.plugin import Filter, Picker, Plugin, Scorer
from headway.routing.prefix.approx_index import (
    DEFAULT_MAX_ENTRIES_PER_ENDPOINT,
    ApproxPrefixIndex,
)
from headway.routing.presets import PRESETS
from headway.routing.profile import NamedFilter, NamedPicker, Profile, WeightedScorer
from headway.routing.registry import Registry, default_registry
from headway.routing.shared import RoutingResources

_HANDLER_KEYS = frozenset(
    {"preset", "mode", "profile", "prefill_profile", "decode_profile", "profiles", "approx_index"}
)
_APPROX_INDEX_KEYS = frozenset({"max_entries_per_endpoint"})
_PROFILE_KEYS = frozenset({"filters", "scorers", "picker", "num_top_scores"})
_PLUGIN_KEYS = frozenset({"type", "name", "params"})
_DEFAULT_PICKER = "max-score"


def build_handler(
    raw: object,
    registry: Registry | None = None,
    *,
    resources: RoutingResources | None = None,
) -> ProfileHandler:
    """Validate `raw` and build its handler with fresh plugin instances.

    A profile using `precise-prefix` while `resources.kv_index` is None is a
    `ConfigError` naming that plugin's path.
    """
    registry = default_registry() if registry is None else registry
    config = as_mapping(raw, "")
    check_keys(config, _HANDLER_KEYS, "")
    resources = _handler_resources(config, RoutingResources() if resources is None else resources)
    if "preset" in config:
        config = _expand_preset(config)
    mode = _mode(config.get("mode", HandlerMode.SINGLE.value))
    raw_profiles = as_mapping(config.get("profiles", {}), "profiles")
    if not raw_profiles:
        raise ConfigError("profiles", "must define at least one profile (or give a preset)")

    if mode is HandlerMode.SINGLE:
        for key in ("prefill_profile", "decode_profile"):
            if key in config:
                raise ConfigError(key, "only used with mode: prefill-decode")
        default = next(iter(raw_profiles)) if len(raw_profiles) == 1 else "default"
        used = {"profile": as_str(config.get("profile", default), "profile")}
    else:
        if "profile" in config:
            raise ConfigError("profile", "not used with mode: prefill-decode")
        used = {
            key: as_str(config.get(key, key.removesuffix("_profile")), key)
            for key in ("prefill_profile", "decode_profile")
        }
    for key, name in used.items():
        if name not in raw_profiles:
            raise ConfigError(key, f"no profile named {name!r} (have {sorted(raw_profiles)})")
    for name in raw_profiles:
        if name not in used.values():
            raise ConfigError(join("profiles", name), f"is not used by mode: {mode}")

    profiles = {
        name: build_profile(
            name, raw_profiles[name], registry, join("profiles", name), resources=resources
        )
        for name in dict.fromkeys(used.values())
    }
    if mode is HandlerMode.SINGLE:
        return SingleProfileHandler(profiles[used["profile"]])
    if used["prefill_profile"] == used["decode_profile"]:
        raise ConfigError("decode_profile", "must differ from prefill_profile")
    return PrefillDecodeHandler(profiles[used["prefill_profile"]], profiles[used["decode_profile"]])


def build_profile(
    name: str,
    raw: object,
    registry: Registry,
    path: str = "",
    *,
    resources: RoutingResources | None = None,
) -> Profile:
    """Build one profile; errors are reported under `path`.

    Without `resources.approx_index` the profile's plugins share a fresh one."""
    if resources is None or resources.approx_index is None:
        resources = _handler_resources({}, RoutingResources() if resources is None else resources)
    config = as_mapping(raw, path)
    check_keys(config, _PROFILE_KEYS, path)
    filters_path, scorers_path = join(path, "filters"), join(path, "scorers")
    filters = tuple(
        _filter(entry, registry, join(filters_path, i), resources)
        for i, entry in enumerate(_as_list(config.get("filters", ()), filters_path))
    )
    scorers = tuple(
        _scorer(entry, registry, join(scorers_path, i), resources)
        for i, entry in enumerate(_as_list(config.get("scorers", ()), scorers_path))
    )
    picker = _picker(
        config.get("picker", _DEFAULT_PICKER), registry, join(path, "picker"), resources
    )
    extra: dict[str, Any] = {}
    if "num_top_scores" in config:
        extra["num_top_scores"] = as_int(config["num_top_scores"], join(path, "num_top_scores"))
    try:
        return Profile(name, filters, scorers, picker, **extra)
    except ConfigError as e:
        raise e.under(path) from None


def _handler_resources(config: Mapping[str, Any], resources: RoutingResources) -> RoutingResources:
    """`resources`, with the handler's own approximate index when they bring none."""
    raw = as_mapping(config.get("approx_index", {}), "approx_index")
    check_keys(raw, _APPROX_INDEX_KEYS, "approx_index")
    if resources.approx_index is not None:
        return resources
    key = "max_entries_per_endpoint"
    max_entries = as_int(raw.get(key, DEFAULT_MAX_ENTRIES_PER_ENDPOINT), join("approx_index", key))
    if max_entries < 1:
        raise ConfigError(join("approx_index", key), f"must be >= 1, got {max_entries}")
    return replace(resources, approx_index=ApproxPrefixIndex(max_entries))


def _expand_preset(config: Mapping[str, Any]) -> Mapping[str, Any]:
    preset = as_str(config["preset"], "preset")
    if preset not in PRESETS:
        raise ConfigError("preset", f"unknown preset {preset!r} (have {sorted(PRESETS)})")
    for key in ("profiles", "profile", "prefill_profile", "decode_profile"):
        if key in config:
            raise ConfigError(key, "cannot be combined with preset")
    if config.get("mode", HandlerMode.SINGLE.value) != HandlerMode.SINGLE.value:
        raise ConfigError("mode", "presets run in mode: single")
    return {"profiles": {preset: PRESETS[preset]}, "profile": preset}


def _mode(raw: object) -> HandlerMode:
    try:
        return HandlerMode(as_str(raw, "mode"))
    except ValueError:
        raise ConfigError("mode", f"must be one of {[m.value for m in HandlerMode]}") from None


def _as_list(raw: object, path: str) -> list[object]:
    if not isinstance(raw, list | tuple):
        raise ConfigError(path, "must be a list")
    return list(raw)


def _filter(
    entry: object, registry: Registry, path: str, resources: RoutingResources
) -> NamedFilter:
    name, plugin = _plugin(entry, PluginKind.FILTER, registry, path, resources)
    if not isinstance(plugin, Filter):
        raise TypeError(f"{path}: not a filter")  # unreachable: PluginSpec.create checks
    return NamedFilter(name, plugin)


def _scorer(
    entry: object, registry: Registry, path: str, resources: RoutingResources
) -> WeightedScorer:
    weight = 1.0
    if isinstance(entry, Mapping) and "weight" in entry:
        weight = as_number(entry["weight"], join(path, "weight"))
        entry = {k: v for k, v in entry.items() if k != "weight"}
    name, plugin = _plugin(entry, PluginKind.SCORER, registry, path, resources)
    if not isinstance(plugin, Scorer):
        raise TypeError(f"{path}: not a scorer")
    return WeightedScorer(name, plugin, weight)


def _picker(
    entry: object, registry: Registry, path: str, resources: RoutingResources
) -> NamedPicker:
    name, plugin = _plugin(entry, PluginKind.PICKER, registry, path, resources)
    if not isinstance(plugin, Picker):
        raise TypeError(f"{path}: not a picker")
    return NamedPicker(name, plugin)


def _plugin(
    entry: object, kind: PluginKind, registry: Registry, path: str, resources: RoutingResources
) -> tuple[str, Plugin]:
    """(name, new instance) for one plugin entry of the expected `kind`."""
    config = as_mapping({"type": entry} if isinstance(entry, str) else entry, path)
    check_keys(config, _PLUGIN_KEYS, path)
    type_ = as_str(config.get("type"), join(path, "type"))
    if type_ not in registry:
        known = [s.type for s in registry.specs(kind)]
        raise ConfigError(join(path, "type"), f"unknown {kind} {type_!r} (have {known})")
    spec = registry.get(type_)
    if spec.kind is not kind:
        raise ConfigError(join(path, "type"), f"{type_!r} is a {spec.kind}, not a {kind}")
    name = as_str(config.get("name", type_), join(path, "name"))
    params = params_from_mapping(spec.params_type, config.get("params"), join(path, "params"))
    try:
        return name, spec.create(params, resources)
    except ConfigError as e:
        raise e.under(path) from None
