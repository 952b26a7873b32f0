"""`precise-prefix` scorer: prefers endpoints whose KV cache holds the prompt's prefix,
per the engines' KV events.

score(e) = b(e) / len(ctx.block_hashes), b(e) the number of leading request blocks
the KV-event index (`RoutingResources.kv_index`) says `e` holds.

Fallback, per endpoint: when the index marks `e` stale (the subscriber missed events)
or the request carries no engine block hashes, score(e) = the approximate score
(`approx-prefix`'s formula over `ctx.chunk_hashes`), so routing degrades to
approximate prefix affinity instead of ignoring the cache. `observe` records the
committed request's chunk hashes in the handler's approximate index for that.

Building it without `resources.kv_index` is a config error: precise prefix routing
needs KV events configured for the pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from headway.routing.config import ConfigError
from headway.routing.context import RequestContext
from headway.routing.decision import Decision, PluginKind
from headway.routing.plugin import Endpoints, PluginSpec
from headway.routing.prefix.approx_index import ApproxPrefixIndex
from headway.routing.prefix.kv_index import KvBlockIndex
from headway.routing.prefix.matching import prefix_fractions
from headway.routing.shared import RoutingResources
from headway.routing.state import RequestScratch


@dataclass(frozen=True)
class PrecisePrefixParams:
    """No parameters."""


class PrecisePrefixScorer:
    TYPE: ClassVar[str] = "precise-prefix"

    def __init__(self, params: PrecisePrefixParams, resources: RoutingResources) -> None:
        if resources.kv_index is None:
            raise ConfigError(
                "",
                "precise-prefix needs the KV-event index: configure KV events for this pool "
                "(or use approx-prefix / the kv-aware-approx preset)",
            )
        self.params = params
        self.kv_index: KvBlockIndex = resources.kv_index
        self.approx_index = resources.approx_index or ApproxPrefixIndex()

    def score(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Mapping[str, float]:
        return prefix_fractions(ctx, endpoints, scratch, self.kv_index, self.approx_index)

    def observe(self, ctx: RequestContext, decision: Decision) -> None:
        if decision.endpoint_id is not None:
            self.approx_index.record(decision.endpoint_id, ctx.chunk_hashes)


SPEC = PluginSpec(
    type=PrecisePrefixScorer.TYPE,
    kind=PluginKind.SCORER,
    params_type=PrecisePrefixParams,
    factory=PrecisePrefixScorer,
    reads=frozenset(),
    summary="share of the prompt's KV blocks the endpoint holds (KV events; approx fallback)",
    needs_resources=True,
)
