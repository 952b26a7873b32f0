"""`token-load` scorer: prefers endpoints with fewer tokens in flight from this gateway.

t(e) = `num_in_flight_tokens`, the gateway's estimate of the prefill + decode tokens
of the requests it has in flight on `e` (exact for this process and current, unlike
scraped engine gauges; it weighs a 30k-token prompt 300 times a 100-token one,
unlike request counts).

* When every candidate's KV capacity `C(e) = num_gpu_blocks * block_size` is known:
  score(e) = 1 - min(1, t(e) / C(e)), an absolute measure (an endpoint with twice
  the memory takes twice the tokens).
* Otherwise, relative to the candidates: score(e) = 1 - t(e) / max(t); all equal
  (including all idle) scores 1.0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from headway.routing.context import RequestContext
from headway.routing.decision import PluginKind
from headway.routing.endpoint import EndpointField
from headway.routing.load import inverse_relative, token_load_fraction
from headway.routing.plugin import Endpoints, PluginSpec
from headway.routing.state import RequestScratch


@dataclass(frozen=True)
class TokenLoadParams:
    """No parameters."""


class TokenLoadScorer:
    TYPE: ClassVar[str] = "token-load"

    def __init__(self, params: TokenLoadParams) -> None:
        self.params = params

    def score(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Mapping[str, float]:
        loads = [token_load_fraction(e) for e in endpoints]
        if all(load is not None for load in loads):
            return {
                e.endpoint_id: 1.0 - min(1.0, load or 0.0)
                for e, load in zip(endpoints, loads, strict=True)
            }
        return inverse_relative({e.endpoint_id: e.num_in_flight_tokens for e in endpoints})


SPEC = PluginSpec(
    type=TokenLoadScorer.TYPE,
    kind=PluginKind.SCORER,
    params_type=TokenLoadParams,
    factory=TokenLoadScorer,
    reads=frozenset(
        {EndpointField.NUM_IN_FLIGHT_TOKENS, EndpointField.BLOCK_SIZE, EndpointField.NUM_GPU_BLOCKS}
    ),
    summary="1 - in-flight tokens / KV capacity (or / the candidates' maximum)",
)
