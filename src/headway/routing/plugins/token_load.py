"""`token-load` scorer: prefers endpoints with fewer tokens in flight from this gateway.

t(e) = `num_in_flight_tokens`, the gateway's estimate of the prefill + decode tokens
of the requests it has in flight on `e` (exact for this process and current, unlike
scraped engine gauges; it weighs a 30k-token prompt 300 times a 100-token one,
unlike request counts).

* `normalize: relative` (the default): relative to the candidates, score(e) = 1 -
  t(e) / max(t), the rule `least-request` uses; all equal (including all idle) scores
  1.0. The busiest candidate scores 0, so the term keeps its pull however lightly the
  fleet is loaded.
* `normalize: capacity`: when every candidate's KV capacity `C(e) = num_gpu_blocks *
  block_size` is known, score(e) = 1 - min(1, t(e) / C(e)), an absolute measure (an
  endpoint with twice the memory takes twice the tokens); relative otherwise. On
  engines with large KV caches every score stays near 1 until the fleet is nearly
  full, so next to a prefix scorer this term barely moves decisions (measured: a
  shared system prompt sent 80-100% of an agentic workload to one replica).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from headway.routing.config import ConfigError
from headway.routing.context import RequestContext
from headway.routing.decision import PluginKind
from headway.routing.endpoint import EndpointField
from headway.routing.load import inverse_relative, token_load_fraction
from headway.routing.plugin import Endpoints, PluginSpec
from headway.routing.state import RequestScratch

_NORMALIZE = ("relative", "capacity")


@dataclass(frozen=True)
class TokenLoadParams:
    normalize: str = "relative"  # relative: 1 - t / max t; capacity: 1 - t / KV capacity

    def __post_init__(self) -> None:
        if self.normalize not in _NORMALIZE:
            raise ConfigError(
                "normalize", f"must be one of {list(_NORMALIZE)}, got {self.normalize!r}"
            )


class TokenLoadScorer:
    TYPE: ClassVar[str] = "token-load"

    def __init__(self, params: TokenLoadParams) -> None:
        self.params = params

    def score(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Mapping[str, float]:
        loads = [token_load_fraction(e) for e in endpoints]
        if self.params.normalize == "capacity" and all(load is not None for load in loads):
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
    summary="1 - in-flight tokens / the candidates' maximum (or / KV capacity)",
)
