"""`session-affinity` scorer: bounded-load consistent hashing on the session id.

Each candidate owns `num_virtual_nodes` points on a 64-bit hash ring (BLAKE2b of
"<endpoint_id>#<k>"); a session hashes to a point (BLAKE2b of `ctx.session_id`,
which the gateway fills from x-session-id / x-session-token / a configured header).
Walking the ring clockwise from the session's point visits the candidates in an
order that depends only on the session and the candidate set, and the session goes
to the first one under the load bound (Mirrokni, Thorup, Zadimoghaddam, "Consistent
Hashing with Bounded Loads"):

    load(e) = num_in_flight_requests(e)            (gateway-tracked, current)
    bound   = ceil((1 + epsilon) * (sum of loads + 1) / number of candidates)
    target  = first e on the walk with load(e) + 1 <= bound

Some candidate always fits (the least loaded one is below the mean). score(target) =
1.0, every other candidate 0.0; without a session id every candidate scores 1.0.

Stickiness and its release, with no per-session state: the same session keeps the
same target while the candidate set and loads allow; it moves to the next endpoint
on its walk when its endpoint is over `(1 + epsilon) x` the mean load or has gone
(filtered out as unhealthy or saturated), and comes back when that clears. Adding or
removing an endpoint moves only the sessions whose walk it changes (~1/n of them).

Per-instance memo: the sorted ring points of each endpoint id, a pure function of the
id (it never changes a score, only saves rehashing).
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from headway.routing.config import ConfigError
from headway.routing.context import RequestContext
from headway.routing.decision import PluginKind
from headway.routing.endpoint import EndpointField
from headway.routing.plugin import Endpoints, PluginSpec
from headway.routing.state import RequestScratch

_RING = 1 << 64
_MAX_MEMO = 4096  # endpoint ids whose points are kept


def ring_hash(key: str) -> int:
    """A stable 64-bit point on the ring (same in every process and release)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class SessionAffinityParams:
    epsilon: float = 0.25  # load bound: (1 + epsilon) x the mean, 0.25 as in the paper's tests
    num_virtual_nodes: int = 100  # ring points per endpoint (more: smoother spread)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon > 0.0):
            raise ConfigError("epsilon", f"must be > 0, got {self.epsilon}")
        if not 1 <= self.num_virtual_nodes <= 10_000:
            raise ConfigError("num_virtual_nodes", "must be in [1, 10000]")


class SessionAffinityScorer:
    TYPE: ClassVar[str] = "session-affinity"

    def __init__(self, params: SessionAffinityParams) -> None:
        self.params = params
        self._points: dict[str, list[int]] = {}  # memo: endpoint id -> its sorted points

    def score(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Mapping[str, float]:
        if ctx.session_id is None or not endpoints:
            return {e.endpoint_id: 1.0 for e in endpoints}
        target = self.target(ctx.session_id, endpoints)
        return {e.endpoint_id: 1.0 if e.endpoint_id == target else 0.0 for e in endpoints}

    def target(self, session_id: str, endpoints: Endpoints) -> str:
        """The endpoint the session goes to among `endpoints` (non-empty)."""
        total = sum(e.num_in_flight_requests for e in endpoints)
        bound = math.ceil((1.0 + self.params.epsilon) * (total + 1) / len(endpoints))
        start = ring_hash(session_id)
        for e in sorted(endpoints, key=lambda e: self._walk_key(start, e.endpoint_id)):
            if e.num_in_flight_requests + 1 <= bound:
                return e.endpoint_id
        # Unreachable: the least loaded endpoint is at or below the mean. Kept total.
        return min(endpoints, key=lambda e: e.num_in_flight_requests).endpoint_id

    def walk_order(self, session_id: str, endpoint_ids: list[str]) -> list[str]:
        """Candidates in the order the session's ring walk visits them."""
        start = ring_hash(session_id)
        return sorted(endpoint_ids, key=lambda i: self._walk_key(start, i))

    def _walk_key(self, start: int, endpoint_id: str) -> tuple[int, str]:
        """Clockwise distance from the session's point to the endpoint's first point."""
        points = self._points_of(endpoint_id)
        i = bisect.bisect_left(points, start)
        first = points[i] if i < len(points) else points[0] + _RING
        return first - start, endpoint_id

    def _points_of(self, endpoint_id: str) -> list[int]:
        points = self._points.get(endpoint_id)
        if points is None:
            if len(self._points) >= _MAX_MEMO:
                self._points.clear()  # endpoints churned; rebuilding is cheap
            n = self.params.num_virtual_nodes
            points = sorted(ring_hash(f"{endpoint_id}#{k}") for k in range(n))
            self._points[endpoint_id] = points
        return points


SPEC = PluginSpec(
    type=SessionAffinityScorer.TYPE,
    kind=PluginKind.SCORER,
    params_type=SessionAffinityParams,
    factory=SessionAffinityScorer,
    reads=frozenset({EndpointField.NUM_IN_FLIGHT_REQUESTS}),
    summary="bounded-load consistent hashing of the session id: 1.0 for its endpoint",
)
