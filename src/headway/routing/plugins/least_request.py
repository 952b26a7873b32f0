"""`least-request` scorer: prefers endpoints with fewer in-flight requests.

score(e) = 1 - n(e) / max(n over candidates), where n is `num_in_flight_requests`
as tracked by the gateway (exact and current, unlike scraped queue depth). When all
counts are equal (including all zero) every candidate scores 1.0 and the picker's
seeded tie-break decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from headway.routing.context import RequestContext
from headway.routing.decision import PluginKind
from headway.routing.endpoint import EndpointField
from headway.routing.plugin import Endpoints, PluginSpec
from headway.routing.state import RequestScratch


@dataclass(frozen=True)
class LeastRequestParams:
    """No parameters."""


class LeastRequestScorer:
    TYPE: ClassVar[str] = "least-request"

    def __init__(self, params: LeastRequestParams) -> None:
        self.params = params

    def score(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Mapping[str, float]:
        counts = [e.num_in_flight_requests for e in endpoints]
        most = max(counts, default=0)
        if most == min(counts, default=0):  # all equal, including all idle
            return {e.endpoint_id: 1.0 for e in endpoints}
        return {e.endpoint_id: 1.0 - e.num_in_flight_requests / most for e in endpoints}


SPEC = PluginSpec(
    type=LeastRequestScorer.TYPE,
    kind=PluginKind.SCORER,
    params_type=LeastRequestParams,
    factory=LeastRequestScorer,
    reads=frozenset({EndpointField.NUM_IN_FLIGHT_REQUESTS}),
    summary="1 - in-flight requests / the candidates' maximum",
)
