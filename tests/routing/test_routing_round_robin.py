"""round-robin scorer: the next id after the last committed pick scores 1.0."""

from __future__ import annotations

import pytest
from routing_helpers import ctx, snap

from headway.routing import Decision, NoEndpointReason, Outcome, RequestScratch
from headway.routing.plugins.round_robin import RoundRobinParams, RoundRobinScorer


def scores_after(ids: str, last: str | None) -> dict[str, float]:
    scorer = RoundRobinScorer(RoundRobinParams())
    if last is not None:
        scorer.observe(ctx(), Decision("p", Outcome.ROUTED, 0.0, 1, 1, endpoint_id=last))
    return dict(scorer.score(ctx(), tuple(snap(i) for i in ids), RequestScratch(0.0)))


@pytest.mark.parametrize(
    ("ids", "last", "expected"),
    [
        ("abc", None, {"a": 1.0, "b": 2 / 3, "c": 1 / 3}),
        ("abc", "a", {"b": 1.0, "c": 2 / 3, "a": 1 / 3}),
        ("abc", "c", {"a": 1.0, "b": 2 / 3, "c": 1 / 3}),
        ("ac", "b", {"c": 1.0, "a": 0.5}),
        ("abc", "z", {"a": 1.0, "b": 2 / 3, "c": 1 / 3}),
        ("bcd", "a", {"b": 1.0, "c": 2 / 3, "d": 1 / 3}),
        ("a", "a", {"a": 1.0}),
        ("", "a", {}),
    ],
    ids=[
        "start",
        "after-first",
        "wraps",
        "last-pick-left-the-set",
        "last-after-all",
        "last-before-all",
        "single",
        "empty",
    ],
)
def test_round_robin(ids: str, last: str | None, expected: dict[str, float]) -> None:
    assert scores_after(ids, last) == pytest.approx(expected)


def test_no_endpoint_decision_leaves_cursor() -> None:
    scorer = RoundRobinScorer(RoundRobinParams())
    scorer.observe(ctx(), Decision("p", Outcome.ROUTED, 0.0, 2, 2, endpoint_id="a"))
    none = Decision("p", Outcome.NO_ENDPOINT, 0.0, 0, 0, reason=NoEndpointReason.NO_ENDPOINTS)
    scorer.observe(ctx(), none)
    assert scorer.last_endpoint_id == "a"


def test_score_does_not_move_cursor() -> None:
    """Scoring is side-effect free: only observe() advances the cycle."""
    scorer = RoundRobinScorer(RoundRobinParams())
    eps = (snap("a"), snap("b"))
    first = scorer.score(ctx(), eps, RequestScratch(0.0))
    assert scorer.score(ctx(), eps, RequestScratch(0.0)) == first
    assert scorer.last_endpoint_id is None
