"""KvBlockIndex: invariants under random operation sequences (Hypothesis) and how
batches of KV events change it (table tests)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway.core.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    KvEvent,
    decode_batch,
    encode_batch,
)
from headway.routing import KvBlockIndex

ENDPOINTS = ["a", "b", "c"]
HASHES = st.integers(0, 2**64 - 1)
SMALL_HASHES = st.integers(0, 12)  # collide often, so operations interact


def stored(*hashes: int, medium: str | None = "GPU") -> BlockStored:
    return BlockStored(tuple(hashes), None, (), 16, medium=medium)


def removed(*hashes: int, medium: str | None = "GPU") -> BlockRemoved:
    return BlockRemoved(tuple(hashes), medium=medium)


def batch(*events: KvEvent) -> EventBatch:
    return EventBatch(1.0, tuple(events))


def check_consistent(index: KvBlockIndex) -> None:
    """The reverse map and the per-endpoint sets describe the same relation."""
    for e in index.endpoint_ids():
        assert index.num_blocks(e) == len(index.blocks_of(e)) > 0
        for h in index.blocks_of(e):
            assert e in index.holders_of(h)
    pairs = {(e, h) for e in index.endpoint_ids() for h in index.blocks_of(e)}
    all_hashes = {h for _, h in pairs}
    assert index.num_hashes() == len(all_hashes)
    assert {(e, h) for h in all_hashes for e in index.holders_of(h)} == pairs


# -- Hypothesis: random operation sequences against a plain model --------------------


@dataclass(frozen=True)
class Op:
    kind: str
    endpoint_id: str
    hashes: tuple[int, ...] = ()


ops = st.lists(
    st.builds(
        Op,
        kind=st.sampled_from(["store", "remove", "clear", "stale", "fresh"]),
        endpoint_id=st.sampled_from(ENDPOINTS),
        hashes=st.lists(SMALL_HASHES, max_size=6).map(tuple),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops=ops, bound=st.none() | st.integers(1, 6))
def test_index_matches_a_plain_model(ops: list[Op], bound: int | None) -> None:
    index = KvBlockIndex(max_blocks_per_endpoint=bound)
    model: dict[str, list[int]] = {e: [] for e in ENDPOINTS}  # oldest store first
    stale: set[str] = set()
    for op in ops:
        held = model[op.endpoint_id]
        if op.kind == "store":
            index.apply(op.endpoint_id, batch(stored(*op.hashes)))
            for h in op.hashes:
                if h in held:
                    held.remove(h)
                held.append(h)
            if bound is not None:
                del held[: max(0, len(held) - bound)]
        elif op.kind == "remove":
            index.apply(op.endpoint_id, batch(removed(*op.hashes)))
            held[:] = [h for h in held if h not in op.hashes]
        elif op.kind == "clear":
            index.apply(op.endpoint_id, batch(AllBlocksCleared()))
            held.clear()
        else:
            index.mark_stale(op.endpoint_id, op.kind == "stale")
            (stale.add if op.kind == "stale" else stale.discard)(op.endpoint_id)
        check_consistent(index)
        for e in ENDPOINTS:
            assert index.blocks_of(e) == frozenset(model[e])
            assert index.is_stale(e) == (e in stale)
            if bound is not None:
                assert index.num_blocks(e) <= bound


@settings(max_examples=150, deadline=None)
@given(
    held=st.dictionaries(st.sampled_from(ENDPOINTS), st.sets(SMALL_HASHES, max_size=10)),
    request=st.lists(SMALL_HASHES, max_size=12),
    asked=st.lists(st.sampled_from([*ENDPOINTS, "unknown"]), unique=True),
)
def test_match_is_the_leading_run(
    held: dict[str, set[int]], request: list[int], asked: list[str]
) -> None:
    index = KvBlockIndex()
    for e, hashes in held.items():
        index.store(e, sorted(hashes))
    lengths = index.match_lengths(request, asked)
    assert set(lengths) == set(asked)
    for e, n in lengths.items():
        blocks = held.get(e, set())
        assert 0 <= n <= len(request)
        assert all(h in blocks for h in request[:n]), "every counted block is held"
        assert n == len(request) or request[n] not in blocks, "the run stops at a miss"


@settings(max_examples=50, deadline=None)
@given(hashes=st.lists(HASHES, min_size=1, max_size=8, unique=True))
def test_stale_flag_and_contents_are_independent(hashes: list[int]) -> None:
    index = KvBlockIndex()
    index.store("a", hashes)
    index.mark_stale("a")
    assert index.is_stale("a")
    assert index.match_lengths(hashes, ["a"]) == {"a": len(hashes)}, "stale keeps contents"
    index.clear_endpoint("a")
    assert index.is_stale("a"), "clearing keeps the flag"
    assert index.match_lengths(hashes, ["a"]) == {"a": 0}
    index.mark_stale("a", False)
    assert not index.is_stale("a")


def test_bits_are_recycled_when_endpoints_come_and_go() -> None:
    index = KvBlockIndex()
    for round_ in range(200):  # far more endpoints over time than at once
        e = f"ep-{round_}"
        index.store(e, [1, 2, round_ + 10])
        assert index.match_lengths([1, 2], [e, "ep-0"])[e] == 2
        if round_ > 2:
            index.clear_endpoint(f"ep-{round_ - 3}")
    assert len(index.endpoint_ids()) == 3
    assert index.holders_of(1) == {"ep-197", "ep-198", "ep-199"}
    check_consistent(index)


# -- table tests: KV-event batches -------------------------------------------------------

CASES: list[tuple[str, list[tuple[str, EventBatch]], dict[str, set[int]]]] = [
    ("stored", [("a", batch(stored(1, 2, 3)))], {"a": {1, 2, 3}}),
    ("stored-then-removed", [("a", batch(stored(1, 2, 3), removed(2)))], {"a": {1, 3}}),
    ("remove-unknown-is-ignored", [("a", batch(removed(9)))], {"a": set()}),
    (
        "cleared-only-that-endpoint",
        [("a", batch(stored(1, 2))), ("b", batch(stored(1))), ("a", batch(AllBlocksCleared()))],
        {"a": set(), "b": {1}},
    ),
    ("store-after-clear", [("a", batch(stored(1), AllBlocksCleared(), stored(2)))], {"a": {2}}),
    ("cpu-store-ignored", [("a", batch(stored(1, medium="CPU")))], {"a": set()}),
    ("cpu-remove-ignored", [("a", batch(stored(1), removed(1, medium="CPU")))], {"a": {1}}),
    ("none-medium-is-gpu", [("a", batch(stored(1, medium=None), stored(2)))], {"a": {1, 2}}),
    ("none-medium-remove", [("a", batch(stored(1, 2), removed(1, medium=None)))], {"a": {2}}),
    (
        "two-endpoints-share-a-block",
        [("a", batch(stored(1, 2))), ("b", batch(stored(1, 3))), ("b", batch(removed(1)))],
        {"a": {1, 2}, "b": {3}},
    ),
]


@pytest.mark.parametrize(("batches", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_event_batches(
    batches: list[tuple[str, EventBatch]], expected: dict[str, set[int]]
) -> None:
    index = KvBlockIndex()
    for endpoint_id, b in batches:
        index.apply(endpoint_id, b)
    assert {e: set(index.blocks_of(e)) for e in expected} == expected
    check_consistent(index)


def test_decoded_wire_batch_applies() -> None:
    """Hashes as `decode_batch` produces them (unsigned 64-bit, from signed ints too)."""
    wire = encode_batch(batch(stored(2233398808101521225, 17911472383915781900)))
    index = KvBlockIndex()
    index.apply("a", decode_batch(wire))
    assert index.match_lengths([2233398808101521225, 17911472383915781900, 5], ["a"]) == {"a": 2}


@pytest.mark.parametrize(
    ("request_hashes", "expected"),
    [
        ((), {"a": 0, "b": 0, "c": 0}),
        ((1,), {"a": 1, "b": 1, "c": 0}),
        ((1, 2, 3), {"a": 3, "b": 1, "c": 0}),
        ((1, 2, 3, 4), {"a": 3, "b": 1, "c": 0}),
        ((2, 3), {"a": 2, "b": 0, "c": 0}),
        ((1, 5, 3), {"a": 1, "b": 1, "c": 0}),
    ],
    ids=["empty", "first", "full", "longer-than-held", "starts-mid-chain", "gap"],
)
def test_match_lengths_table(request_hashes: tuple[int, ...], expected: dict[str, int]) -> None:
    index = KvBlockIndex()
    index.store("a", [1, 2, 3])
    index.store("b", [1, 3])
    assert index.match_lengths(request_hashes, ["a", "b", "c"]) == expected


def test_bound_drops_the_oldest_store() -> None:
    index = KvBlockIndex(max_blocks_per_endpoint=3)
    index.store("a", [1, 2, 3])
    index.store("a", [1])  # refreshed: 2 is now the oldest
    index.store("a", [4])
    assert index.blocks_of("a") == {1, 3, 4}
    check_consistent(index)


@pytest.mark.parametrize("bound", [0, -1], ids=["zero", "negative"])
def test_bound_must_be_positive(bound: int) -> None:
    with pytest.raises(ValueError, match="max_blocks_per_endpoint"):
        KvBlockIndex(max_blocks_per_endpoint=bound)
