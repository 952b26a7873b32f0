"""headway.routing: the pure scheduler (filters -> scorers -> picker, named profiles).

The caller passes in everything from outside: endpoint snapshots, `now`, a seeded
`numpy.random.Generator` and a timer. See docs/policies.md for the plugins.

    handler = build_handler({"preset": "least-request"})
    result = handler.decide(ctx, snapshots, now=now, rng=rng, timer=time.perf_counter)
    if result.is_routed:
        handler.observe(ctx, result)  # commit: stateful plugins learn the pick
"""

from headway.routing.builder import build_handler, build_profile
from headway.routing.config import ConfigError
from headway.routing.context import Headers, RequestContext, Slo
from headway.routing.decision import (
    Decision,
    EndpointScore,
    NoEndpointReason,
    Outcome,
    PluginKind,
    PluginTiming,
)
from headway.routing.endpoint import EndpointField, EndpointRole, EndpointSnapshot
from headway.routing.handler import (
    HandlerMode,
    PrefillDecodeHandler,
    ProfileHandler,
    RoutingResult,
    SingleProfileHandler,
)
from headway.routing.plugin import (
    Endpoints,
    Filter,
    Pick,
    Picker,
    PluginSpec,
    Scorer,
    StatefulPlugin,
)
from headway.routing.prefix import ApproxPrefixIndex, KvBlockIndex
from headway.routing.presets import PRESETS, default_preset
from headway.routing.profile import (
    NamedFilter,
    NamedPicker,
    PluginContractError,
    Profile,
    Timer,
    WeightedScorer,
)
from headway.routing.registry import Registry, default_registry
from headway.routing.shared import RoutingResources
from headway.routing.state import RequestScratch, ScratchKey

__all__ = [
    "PRESETS",
    "ApproxPrefixIndex",
    "ConfigError",
    "Decision",
    "EndpointField",
    "EndpointRole",
    "EndpointScore",
    "EndpointSnapshot",
    "Endpoints",
    "Filter",
    "HandlerMode",
    "Headers",
    "KvBlockIndex",
    "NamedFilter",
    "NamedPicker",
    "NoEndpointReason",
    "Outcome",
    "Pick",
    "Picker",
    "PluginContractError",
    "PluginKind",
    "PluginSpec",
    "PluginTiming",
    "PrefillDecodeHandler",
    "Profile",
    "ProfileHandler",
    "Registry",
    "RequestContext",
    "RequestScratch",
    "RoutingResources",
    "RoutingResult",
    "Scorer",
    "ScratchKey",
    "SingleProfileHandler",
    "Slo",
    "StatefulPlugin",
    "Timer",
    "WeightedScorer",
    "build_handler",
    "build_profile",
    "default_preset",
    "default_registry",
]
