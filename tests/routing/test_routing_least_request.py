"""least-request scorer: 1 - in-flight / max over candidates; all equal -> all 1.0."""

from __future__ import annotations

import pytest
from routing_helpers import ctx, snap

from headway.routing import RequestScratch
from headway.routing.plugins.least_request import LeastRequestParams, LeastRequestScorer


@pytest.mark.parametrize(
    ("in_flight", "expected"),
    [
        ([0, 5, 10], [1.0, 0.5, 0.0]),
        ([1, 0], [0.0, 1.0]),
        ([4, 1, 2], [0.0, 0.75, 0.5]),
        ([0, 0, 0], [1.0, 1.0, 1.0]),
        ([7, 7], [1.0, 1.0]),
        ([3], [1.0]),
        ([], []),
    ],
    ids=["spread", "idle-wins", "relative-to-max", "all-idle", "all-equal-busy", "single", "empty"],
)
def test_least_request(in_flight: list[int], expected: list[float]) -> None:
    eps = tuple(snap(f"e{i}", num_in_flight_requests=n) for i, n in enumerate(in_flight))
    scores = LeastRequestScorer(LeastRequestParams()).score(ctx(), eps, RequestScratch(0.0))
    assert scores == pytest.approx({f"e{i}": s for i, s in enumerate(expected)})
