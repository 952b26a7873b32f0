"""`round-robin` scorer: cycles over the candidates in ascending endpoint-id order.

Per-instance state: the id of the last committed pick (`observe`). The next
endpoint in the cycle is the first candidate id after it (wrapping round), so the
cycle survives endpoints coming and going. With n candidates and k the distance
from that next endpoint along the cycle, score = 1 - k / n: exactly one candidate
scores 1.0, so a max-score picker never needs the rng. Without `observe` the
cursor never moves and every decision picks the same endpoint.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from headway.routing.context import RequestContext
from headway.routing.decision import Decision, PluginKind
from headway.routing.plugin import Endpoints, PluginSpec
from headway.routing.state import RequestScratch


@dataclass(frozen=True)
class RoundRobinParams:
    """No parameters."""


class RoundRobinScorer:
    TYPE: ClassVar[str] = "round-robin"

    def __init__(self, params: RoundRobinParams) -> None:
        self.params = params
        self.last_endpoint_id: str | None = None  # None: start from the smallest id

    def score(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Mapping[str, float]:
        # The framework already sorts; sorting again (O(n) then) keeps direct callers exact.
        ids = sorted(e.endpoint_id for e in endpoints)
        n = len(ids)
        if n == 0:
            return {}
        start = (
            0 if self.last_endpoint_id is None else bisect.bisect_right(ids, self.last_endpoint_id)
        )
        return {ids[(start + k) % n]: 1.0 - k / n for k in range(n)}

    def observe(self, ctx: RequestContext, decision: Decision) -> None:
        if decision.endpoint_id is not None:
            self.last_endpoint_id = decision.endpoint_id


SPEC = PluginSpec(
    type=RoundRobinScorer.TYPE,
    kind=PluginKind.SCORER,
    params_type=RoundRobinParams,
    factory=RoundRobinScorer,
    reads=frozenset(),  # the endpoint id only
    summary="next endpoint id after the last pick scores 1.0, then down the cycle",
)
