"""`prefill-cost` scorer: prefers the endpoint where the request would wait for the
least work, counting the prefill its cache would save.

    cost(e) = t(e) + w x n(e)

with `t(e)` = `num_in_flight_tokens` (the gateway's estimate of the work it has in
flight on `e`: prompts net of their expected cache hits, plus their most output) and
`n(e)` = the prompt tokens `e` would have to compute for this request: the prompt's
token estimate times the share of it `e` does not hold (precise from KV events, the
approximate index where those are stale, as `precise-prefix` matches).
`w` (`new_token_weight`, default 1) weighs a token of this request's own prefill
against a token of work already queued there; above 1 it also charges what a
recompute evicts from the engine's cache (other tenants' prefixes). score(e) =
1 - cost(e) / max(cost) over the candidates (all equal: 1.0), so with `max-score` alone
it picks the least cost.

One currency for both sides of the trade a cache-aware router makes: a warm endpoint
keeps a request until the work queued on it exceeds the other's by more than the
prefill the cache saves, and not a token longer. Hard affinity (a filter with load
bounds) keeps the warm endpoint however long its queue, then drops it all at once when
a bound is crossed, and a weighted sum of a match share and a relative load compares
numbers that do not share a unit. NVIDIA Dynamo's KV router costs a worker the same
way (prefill blocks it would compute, weighted, plus the blocks it is decoding).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from headway.routing.config import ConfigError
from headway.routing.context import RequestContext
from headway.routing.decision import Decision, PluginKind
from headway.routing.endpoint import EndpointField
from headway.routing.load import inverse_relative
from headway.routing.plugin import Endpoints, PluginSpec
from headway.routing.prefix.approx_index import ApproxPrefixIndex
from headway.routing.prefix.kv_index import KvBlockIndex
from headway.routing.prefix.matching import prefix_fractions
from headway.routing.shared import RoutingResources
from headway.routing.state import RequestScratch


@dataclass(frozen=True)
class PrefillCostParams:
    new_token_weight: float = 1.0  # a token of this prefill vs a token of queued work

    def __post_init__(self) -> None:
        if not self.new_token_weight >= 0.0:
            raise ConfigError("new_token_weight", "must be >= 0")


class PrefillCostScorer:
    TYPE: ClassVar[str] = "prefill-cost"

    def __init__(self, params: PrefillCostParams, resources: RoutingResources) -> None:
        self.params = params
        self._kv_index: KvBlockIndex | None = resources.kv_index
        self._approx = resources.approx_index or ApproxPrefixIndex()

    def costs(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> dict[str, float]:
        """cost(e) in tokens for every candidate (module docstring)."""
        held = prefix_fractions(ctx, endpoints, scratch, self._kv_index, self._approx)
        prompt = ctx.num_prompt_tokens_est
        w = self.params.new_token_weight
        return {
            e.endpoint_id: e.num_in_flight_tokens + w * prompt * (1.0 - held[e.endpoint_id])
            for e in endpoints
        }

    def score(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Mapping[str, float]:
        return inverse_relative(self.costs(ctx, endpoints, scratch))

    def observe(self, ctx: RequestContext, decision: Decision) -> None:
        """Record the prompt's chunks on the chosen endpoint (the approximate index,
        this scorer's fallback where KV events are stale or absent)."""
        if decision.endpoint_id is not None:
            self._approx.record(decision.endpoint_id, ctx.chunk_hashes)


SPEC = PluginSpec(
    type=PrefillCostScorer.TYPE,
    kind=PluginKind.SCORER,
    params_type=PrefillCostParams,
    factory=PrefillCostScorer,
    reads=frozenset({EndpointField.NUM_IN_FLIGHT_TOKENS}),
    summary="1 - (in-flight tokens + the prompt tokens not cached there) / the maximum",
    needs_resources=True,
)
