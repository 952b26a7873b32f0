"""`healthy` filter: drops endpoints that fail health checks or are ejected.

Fails closed by default: when no candidate is healthy the request gets no endpoint
(the gateway answers 503 or uses the pool's fallback pool), because sending traffic
to endpoints known to be down turns a clean 503 into timeouts. `fail_open: true`
keeps every candidate instead when all of them are out (Envoy's "panic" routing),
for fleets where health signals are less trustworthy than the endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from headway.routing.context import RequestContext
from headway.routing.decision import PluginKind
from headway.routing.endpoint import EndpointField
from headway.routing.plugin import Endpoints, PluginSpec
from headway.routing.state import RequestScratch


@dataclass(frozen=True)
class HealthyParams:
    fail_open: bool = False  # keep all candidates when none is healthy


class HealthyFilter:
    """Keeps endpoints with `is_healthy` and not `is_ejected`."""

    TYPE: ClassVar[str] = "healthy"

    def __init__(self, params: HealthyParams) -> None:
        self.params = params

    def filter(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Endpoints:
        kept = tuple(e for e in endpoints if e.is_healthy and not e.is_ejected)
        if not kept and self.params.fail_open:
            return endpoints
        return kept


SPEC = PluginSpec(
    type=HealthyFilter.TYPE,
    kind=PluginKind.FILTER,
    params_type=HealthyParams,
    factory=HealthyFilter,
    reads=frozenset({EndpointField.IS_HEALTHY, EndpointField.IS_EJECTED}),
    summary="drops unhealthy or ejected endpoints (fails closed unless fail_open)",
)
