"""`approx-prefix` scorer: prefers endpoints this gateway sent the same prompt prefix.

score(e) = m(e) / len(ctx.chunk_hashes), where m(e) is the number of leading chunk
hashes of the prompt recorded for `e` in the approximate index (routing.prefix.
approx_index); 0.0 for every candidate when the request has no chunk hashes.

State: the handler's `ApproxPrefixIndex` (shared with the other prefix plugins of the
handler); `observe` records the committed request's chunk hashes on the chosen
endpoint. Match lengths are computed once per decision (routing.prefix.matching).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from headway.routing.context import RequestContext
from headway.routing.decision import Decision, PluginKind
from headway.routing.plugin import Endpoints, PluginSpec
from headway.routing.prefix.approx_index import ApproxPrefixIndex
from headway.routing.prefix.matching import approx_fractions
from headway.routing.shared import RoutingResources
from headway.routing.state import RequestScratch


@dataclass(frozen=True)
class ApproxPrefixParams:
    """No parameters (the index's size is the handler's `approx_index` setting)."""


class ApproxPrefixScorer:
    TYPE: ClassVar[str] = "approx-prefix"

    def __init__(self, params: ApproxPrefixParams, resources: RoutingResources) -> None:
        self.params = params
        self.index = resources.approx_index or ApproxPrefixIndex()

    def score(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Mapping[str, float]:
        return approx_fractions(ctx, endpoints, scratch, self.index)

    def observe(self, ctx: RequestContext, decision: Decision) -> None:
        if decision.endpoint_id is not None:
            self.index.record(decision.endpoint_id, ctx.chunk_hashes)


SPEC = PluginSpec(
    type=ApproxPrefixScorer.TYPE,
    kind=PluginKind.SCORER,
    params_type=ApproxPrefixParams,
    factory=ApproxPrefixScorer,
    reads=frozenset(),
    summary="share of the prompt's chunk hashes this gateway already sent to the endpoint",
    needs_resources=True,
)
