"""KV-event wire encoding: both vLLM encodings, tolerance, hash normalisation, errors."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway.core.block_hash import MASK_64
from headway.core.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    KvEvent,
    KvEventDecodeError,
    WireEncoding,
    decode_batch,
    encode_batch,
)

STORED = BlockStored(
    block_hashes=(1, 2, MASK_64),
    parent_block_hash=None,
    token_ids=tuple(range(48)),
    block_size=16,
)
STORED_CHILD = BlockStored(
    block_hashes=(7,),
    parent_block_hash=MASK_64,
    token_ids=tuple(range(16)),
    block_size=16,
    lora_id=3,
    medium="CPU",
    lora_name="adapter-a",
    extra_keys=("adapter-a", "salt"),
)
STORED_NO_MEDIUM = BlockStored((5,), 4, (1, 2), 2, medium=None)

BATCHES = [
    EventBatch(1.5, ()),
    EventBatch(2.0, (STORED,), data_parallel_rank=0),
    EventBatch(3.25, (STORED, STORED_CHILD, BlockRemoved((1, 2)), AllBlocksCleared()), 3),
    EventBatch(4.0, (BlockRemoved((9,), medium="CPU"), STORED_NO_MEDIUM)),
]
BATCH_IDS = ["empty", "one-stored", "mixed", "non-default-medium"]


@pytest.mark.parametrize("encoding", list(WireEncoding), ids=[e.value for e in WireEncoding])
@pytest.mark.parametrize("batch", BATCHES, ids=BATCH_IDS)
def test_round_trip(batch: EventBatch, encoding: WireEncoding) -> None:
    assert decode_batch(encode_batch(batch, encoding)) == batch


def test_map_encoding_layout_and_omitted_defaults() -> None:
    raw = msgspec.msgpack.decode(encode_batch(EventBatch(1.0, (STORED, BlockRemoved((1,))), 2)))
    ts, events, rank = raw
    assert (ts, rank) == (1.0, 2)
    # vLLM 0.32: lora_id, medium and lora_name have no default and are always sent;
    # the optional fields are omitted when None.
    assert events[0] == {
        "type": "BlockStored",
        "block_hashes": [1, 2, MASK_64],
        "parent_block_hash": None,
        "token_ids": list(range(48)),
        "block_size": 16,
        "lora_id": None,
        "medium": "GPU",
        "lora_name": None,
    }
    assert events[1] == {"type": "BlockRemoved", "block_hashes": [1], "medium": "GPU"}


def test_map_encoding_keeps_non_default_fields() -> None:
    raw = msgspec.msgpack.decode(encode_batch(EventBatch(1.0, (STORED_CHILD,))))
    ev = raw[1][0]
    assert ev["lora_id"] == 3
    assert ev["medium"] == "CPU"
    assert ev["lora_name"] == "adapter-a"
    assert ev["extra_keys"] == ["adapter-a", "salt"]


def test_array_encoding_layout() -> None:
    payload = encode_batch(
        EventBatch(1.0, (STORED, BlockRemoved((1,)), AllBlocksCleared())), WireEncoding.ARRAY
    )
    _, events, _ = msgspec.msgpack.decode(payload)
    assert events[0] == [
        "BlockStored",
        [1, 2, MASK_64],
        None,
        list(range(48)),
        16,
        None,
        "GPU",
        None,
        None,
        None,
        None,
        None,
    ]
    assert events[1] == ["BlockRemoved", [1], "GPU", None]
    assert events[2] == ["AllBlocksCleared"]


def _payload(obj: Any) -> bytes:
    return msgspec.msgpack.encode(obj)


DIGEST = bytes(range(32))
DIGEST_INT = int.from_bytes(DIGEST[-8:], "big")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            [1.0, [{"type": "BlockRemoved", "block_hashes": [1], "locality": "x", "new": 1}]],
            EventBatch(1.0, (BlockRemoved((1,)),)),
        ),
        (
            {"ts": 2, "events": [{"type": "AllBlocksCleared"}], "data_parallel_rank": 1},
            EventBatch(2.0, (AllBlocksCleared(),), 1),
        ),
        (
            [1.0, [{"type": "Mystery", "x": 1}, {"type": "AllBlocksCleared"}], None],
            EventBatch(1.0, (AllBlocksCleared(),), None, ("Mystery",)),
        ),
        (
            [1.0, [["Mystery", 1, 2], ["BlockRemoved", [3], "GPU", 0, "extra-field"]]],
            EventBatch(1.0, (BlockRemoved((3,), group_idx=0),), None, ("Mystery",)),
        ),
        (
            [1.0, [{"type": "BlockRemoved", "block_hashes": [-1, DIGEST]}]],
            EventBatch(1.0, (BlockRemoved((MASK_64, DIGEST_INT)),)),
        ),
        (
            [
                1.0,
                [
                    {
                        "type": "BlockStored",
                        "block_hashes": [DIGEST, -2],
                        "parent_block_hash": DIGEST,
                        "token_ids": [1, 2],
                        "block_size": 1,
                        "session_id": "s",
                    }
                ],
            ],
            EventBatch(1.0, (BlockStored((DIGEST_INT, MASK_64 - 1), DIGEST_INT, (1, 2), 1),)),
        ),
        (
            [1.0, [["BlockStored", [-(1 << 63)], -1, [1], 1]]],
            EventBatch(1.0, (BlockStored((1 << 63,), MASK_64, (1,), 1),)),
        ),
        (
            [1.0, [["BlockRemoved", [1]]]],
            EventBatch(1.0, (BlockRemoved((1,)),)),
        ),
        ([0.5, []], EventBatch(0.5, ())),
    ],
    ids=[
        "unknown-map-fields",
        "batch-as-map",
        "unknown-event-type-map",
        "unknown-type-and-trailing-fields-array",
        "removed-signed-and-bytes",
        "stored-bytes-signed-unknown-field",
        "stored-array-signed",
        "array-missing-default-fields",
        "batch-without-rank",
    ],
)
def test_decode_tolerates_and_normalises(raw: Any, expected: EventBatch) -> None:
    assert decode_batch(_payload(raw)) == expected


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\xc1", "not msgpack"),
        (b"", "not msgpack"),
        (_payload(42), "neither"),
        (_payload([1.0]), "neither"),
        (_payload("batch"), "neither"),
        (_payload([1.0, "events"]), "event list"),
        (_payload(["now", []]), "timestamp"),
        (_payload({"events": []}), "timestamp"),
        (_payload([1.0, [{"block_hashes": [1]}]]), "type"),
        (_payload([1.0, [{"type": 3}]]), "type"),
        (_payload([1.0, [7]]), "tagged"),
        (_payload([1.0, [[]]]), "tagged"),
        (_payload([1.0, [[1, 2]]]), "tagged"),
        (_payload([1.0, [{"type": "BlockRemoved", "block_hashes": 5}]]), "BlockRemoved"),
        (_payload([1.0, [{"type": "BlockRemoved", "block_hashes": ["ab"]}]]), "BlockRemoved"),
        (_payload([1.0, [{"type": "BlockRemoved", "block_hashes": [1.5]}]]), "BlockRemoved"),
        (
            _payload([1.0, [{"type": "BlockStored", "block_hashes": [1], "block_size": "x"}]]),
            "BlockStored",
        ),
        (
            _payload([1.0, [{"type": "BlockStored", "block_hashes": [1], "token_ids": 3}]]),
            "BlockStored",
        ),
        (_payload([1.0, [["BlockStored", [1], "parent"]]]), "BlockStored"),
    ],
    ids=[
        "invalid-msgpack",
        "empty",
        "int",
        "short-array",
        "string",
        "events-not-list",
        "ts-string",
        "map-without-ts",
        "event-without-type",
        "event-type-not-string",
        "event-int",
        "event-empty-array",
        "event-array-tag-not-string",
        "hashes-not-list",
        "hash-string",
        "hash-float",
        "block-size-string",
        "token-ids-int",
        "parent-string",
    ],
)
def test_malformed_payloads_raise(payload: bytes, match: str) -> None:
    with pytest.raises(KvEventDecodeError, match=match):
        decode_batch(payload)


# -- Hypothesis: any batch survives either encoding ------------------------------------

hashes = st.lists(st.integers(0, MASK_64), max_size=4).map(tuple)
stored = st.builds(
    BlockStored,
    block_hashes=hashes,
    parent_block_hash=st.one_of(st.none(), st.integers(0, MASK_64)),
    token_ids=st.lists(st.integers(0, 2**31 - 1), max_size=8).map(tuple),
    block_size=st.integers(1, 256),
    lora_id=st.one_of(st.none(), st.integers(0, 100)),
    medium=st.sampled_from([None, "GPU", "CPU", "disk"]),
    lora_name=st.one_of(st.none(), st.text(max_size=5)),
    extra_keys=st.one_of(
        st.none(),
        st.lists(st.one_of(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1)), max_size=3).map(
            tuple
        ),
    ),
)
removed = st.builds(BlockRemoved, block_hashes=hashes, medium=st.sampled_from([None, "GPU", "CPU"]))
events: st.SearchStrategy[KvEvent] = st.one_of(stored, removed, st.just(AllBlocksCleared()))
batches = st.builds(
    EventBatch,
    ts=st.floats(0, 1e10, allow_nan=False),
    events=st.lists(events, max_size=5).map(tuple),
    data_parallel_rank=st.one_of(st.none(), st.integers(0, 7)),
)


@settings(max_examples=100, deadline=None)
@given(batch=batches, encoding=st.sampled_from(list(WireEncoding)))
def test_round_trip_property(batch: EventBatch, encoding: WireEncoding) -> None:
    assert decode_batch(encode_batch(batch, encoding)) == batch
