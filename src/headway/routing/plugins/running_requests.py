"""`running-requests` scorer: prefers endpoints with fewer requests in the engine's batch.

score(e) = 1 - r(e) / max(r over fresh candidates), r = `num_running_requests` as
scraped from the engine (vllm:num_requests_running); every fresh candidate scores
1.0 when all counts are equal. An endpoint whose metrics are stale scores
`stale_score` (neutral by default): its last count may be long gone, and a
stale zero must not attract a burst.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from headway.routing.config import ConfigError
from headway.routing.context import RequestContext
from headway.routing.decision import PluginKind
from headway.routing.endpoint import EndpointField
from headway.routing.load import inverse_relative
from headway.routing.plugin import Endpoints, PluginSpec
from headway.routing.state import RequestScratch


@dataclass(frozen=True)
class RunningRequestsParams:
    stale_score: float = 0.5  # score of an endpoint whose metrics are stale

    def __post_init__(self) -> None:
        if not 0.0 <= self.stale_score <= 1.0:
            raise ConfigError("stale_score", "must be in [0, 1]")


class RunningRequestsScorer:
    TYPE: ClassVar[str] = "running-requests"

    def __init__(self, params: RunningRequestsParams) -> None:
        self.params = params

    def score(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Mapping[str, float]:
        fresh = {e.endpoint_id: e.num_running_requests for e in endpoints if not e.is_metrics_stale}
        scores = inverse_relative(fresh)
        return {
            e.endpoint_id: scores.get(e.endpoint_id, self.params.stale_score) for e in endpoints
        }


SPEC = PluginSpec(
    type=RunningRequestsScorer.TYPE,
    kind=PluginKind.SCORER,
    params_type=RunningRequestsParams,
    factory=RunningRequestsScorer,
    reads=frozenset({EndpointField.NUM_RUNNING_REQUESTS, EndpointField.IS_METRICS_STALE}),
    summary="1 - engine running requests / the candidates' maximum",
)
