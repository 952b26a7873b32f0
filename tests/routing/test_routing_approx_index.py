"""ApproxPrefixIndex: bound never exceeded, LRU order, match is the leading run."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway.routing import ApproxPrefixIndex

ENDPOINTS = ["a", "b"]
SMALL = st.integers(0, 15)
records = st.lists(
    st.tuples(st.sampled_from(ENDPOINTS), st.lists(SMALL, max_size=8).map(tuple)), max_size=30
)


@settings(max_examples=150, deadline=None)
@given(ops=records, bound=st.integers(1, 10))
def test_lru_model(ops: list[tuple[str, tuple[int, ...]]], bound: int) -> None:
    """Against a plain list model: hashes written last-to-first, oldest dropped first."""
    index = ApproxPrefixIndex(bound)
    model: dict[str, list[int]] = {e: [] for e in ENDPOINTS}  # least recent first
    for endpoint_id, hashes in ops:
        index.record(endpoint_id, hashes)
        held = model[endpoint_id]
        for h in reversed(hashes):
            if h in held:
                held.remove(h)
            held.append(h)
        del held[: max(0, len(held) - bound)]
        for e in ENDPOINTS:
            assert index.entries_of(e) == tuple(model[e])
            assert index.num_entries(e) <= bound


@settings(max_examples=150, deadline=None)
@given(ops=records, request=st.lists(SMALL, max_size=10), bound=st.integers(1, 10))
def test_match_is_the_leading_run(
    ops: list[tuple[str, tuple[int, ...]]], request: list[int], bound: int
) -> None:
    index = ApproxPrefixIndex(bound)
    for endpoint_id, hashes in ops:
        index.record(endpoint_id, hashes)
    lengths = index.match_lengths(request, [*ENDPOINTS, "unknown"])
    assert lengths["unknown"] == 0
    for e in ENDPOINTS:
        held, n = set(index.entries_of(e)), lengths[e]
        assert 0 <= n <= len(request)
        assert all(h in held for h in request[:n])
        assert n == len(request) or request[n] not in held


def test_head_of_a_prompt_outlives_its_tail() -> None:
    """Past the bound, a prompt's last chunks go first, so its leading run survives."""
    index = ApproxPrefixIndex(4)
    index.record("a", (1, 2, 3, 4, 5, 6))
    assert index.match_lengths((1, 2, 3, 4, 5, 6), ["a"]) == {"a": 4}


def test_recording_refreshes_a_shared_prefix() -> None:
    index = ApproxPrefixIndex(4)
    index.record("a", (1, 2))  # system prompt + first question
    index.record("a", (3, 4))
    index.record("a", (1, 5))  # same system prompt: 1 becomes most recent again
    assert index.entries_of("a") == (4, 3, 5, 1)
    index.record("a", (6,))
    assert index.entries_of("a") == (3, 5, 1, 6), "4 was least recently recorded"


def test_matching_never_reorders() -> None:
    index = ApproxPrefixIndex(3)
    index.record("a", (1, 2, 3))
    before = index.entries_of("a")
    index.match_lengths((3, 2, 1), ["a"])
    assert index.entries_of("a") == before


def test_same_decision_recorded_twice_changes_nothing() -> None:
    index = ApproxPrefixIndex(3)
    hashes = (1, 2)
    index.record("a", hashes)
    index.record("a", (3,))
    index.record("a", hashes)  # another plugin observing a later decision: refreshes
    assert index.entries_of("a") == (3, 2, 1)
    index.record("a", hashes)  # the same committed decision again: nothing moves
    assert index.entries_of("a") == (3, 2, 1)


def test_remove_endpoint() -> None:
    index = ApproxPrefixIndex()
    index.record("a", (1, 2))
    index.record("b", (1,))
    index.remove_endpoint("a")
    assert index.match_lengths((1, 2), ["a", "b"]) == {"a": 0, "b": 1}
    assert index.endpoint_ids() == {"b"}
    assert index.estimated_bytes() > 0


@pytest.mark.parametrize("bound", [0, -3], ids=["zero", "negative"])
def test_bound_must_be_positive(bound: int) -> None:
    with pytest.raises(ValueError, match="max_entries_per_endpoint"):
        ApproxPrefixIndex(bound)
