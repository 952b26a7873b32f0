"""`kv-usage` scorer: prefers endpoints with more free KV cache.

score(e) = 1 - `kv_cache_usage` (the engine's fraction of KV blocks in use,
vllm:kv_cache_usage_perc); an absolute measure, so two half-full engines both score
0.5. An endpoint whose metrics are stale, or whose engine reports no KV usage (None,
e.g. llama.cpp), scores `stale_score` (neutral by default).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from headway.routing.config import ConfigError
from headway.routing.context import RequestContext
from headway.routing.decision import PluginKind
from headway.routing.endpoint import EndpointField
from headway.routing.plugin import Endpoints, PluginSpec
from headway.routing.state import RequestScratch


@dataclass(frozen=True)
class KvUsageParams:
    stale_score: float = 0.5  # score of an endpoint whose metrics are stale

    def __post_init__(self) -> None:
        if not 0.0 <= self.stale_score <= 1.0:
            raise ConfigError("stale_score", "must be in [0, 1]")


class KvUsageScorer:
    TYPE: ClassVar[str] = "kv-usage"

    def __init__(self, params: KvUsageParams) -> None:
        self.params = params

    def score(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Mapping[str, float]:
        stale = self.params.stale_score
        return {
            e.endpoint_id: stale
            if e.is_metrics_stale or e.kv_cache_usage is None
            else 1.0 - e.kv_cache_usage
            for e in endpoints
        }


SPEC = PluginSpec(
    type=KvUsageScorer.TYPE,
    kind=PluginKind.SCORER,
    params_type=KvUsageParams,
    factory=KvUsageScorer,
    reads=frozenset({EndpointField.KV_CACHE_USAGE, EndpointField.IS_METRICS_STALE}),
    summary="1 - the engine's KV cache usage",
)
