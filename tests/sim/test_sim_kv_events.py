"""KV-cache events over ZMQ, as vLLM publishes them: multipart [topic, seq, payload],
both msgpack encodings, hashes that match /debug/cache and vLLM's own vectors,
replay over ROUTER/DEALER, and the connect mode of --kv-events-config."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
import zmq
from sim_harness import MODEL, Fleet, get, post

from headway.core.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    decode_batch,
)

END_SEQ = (-1).to_bytes(8, "big", signed=True)
# vLLM 0.32, sha256_cbor, PYTHONHASHSEED unset: tokens 0..15 and 16..31 (REFERENCE.md).
VLLM_BLOCK_HASHES = (2233398808101521225, 17911472383915781900)


@dataclass
class Message:
    topic: bytes
    seq: int
    payload: bytes
    batch: EventBatch


@dataclass
class KvSubscriber:
    """A SUB socket plus everything it has received."""

    sock: zmq.Socket[bytes]
    received: list[Message] = field(default_factory=list)

    def recv_for(self, timeout_s: float) -> list[Message]:
        """Receive until nothing arrives for `timeout_s`."""
        got: list[Message] = []
        while self.sock.poll(int(timeout_s * 1000)):
            frames = self.sock.recv_multipart()
            assert len(frames) == 3, frames
            topic, seq, payload = frames
            assert len(seq) == 8
            msg = Message(topic, int.from_bytes(seq, "big"), payload, decode_batch(payload))
            got.append(msg)
            self.received.append(msg)
        return got

    def stored_hashes(self, messages: list[Message] | None = None) -> set[int]:
        out: set[int] = set()
        for m in self.received if messages is None else messages:
            for ev in m.batch.events:
                if isinstance(ev, BlockStored):
                    out.update(ev.block_hashes)
        return out

    def sync(self, url: str, deadline_s: float = 10.0) -> None:
        """Send small unique requests until one's events arrive: ZMQ drops what a PUB
        sends before the subscription has propagated."""
        deadline = time.monotonic() + deadline_s
        while True:
            body = {
                "model": MODEL,
                "prompt": f"sync {uuid.uuid4().hex} please answer",
                "max_tokens": 1,
            }
            assert post(url, "/v1/completions", body).status == 200
            if self.recv_for(0.1):
                self.recv_for(0.05)
                return
            assert time.monotonic() < deadline, "no KV events received"


def _subscribe(ctx: zmq.Context[Any], endpoint: str, topic: bytes = b"") -> KvSubscriber:
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.connect(endpoint)
    return KvSubscriber(sock)


@pytest.fixture
def zctx() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def _cache_hashes(url: str) -> set[int]:
    return set(get(url, "/debug/cache").json()["block_hashes"])


def _tokens(url: str, prompt: str) -> list[int]:
    return list(post(url, "/tokenize", {"model": MODEL, "prompt": prompt}).json()["tokens"])


def _check_request_events(fleet: Fleet, sub: KvSubscriber, block_size: int = 16) -> None:
    """One request's BlockStored events: hashes equal the blocks it added to the cache,
    chained, tokens equal the prompt's, seq without gaps."""
    url = fleet.url
    sub.sync(url)
    before = _cache_hashes(url)
    start = len(sub.received)
    prompt = f"kv events {uuid.uuid4().hex} " + "the prompt goes on and on " * 12
    prompt_ids = _tokens(url, prompt)
    resp = post(url, "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 1})
    assert resp.status == 200, resp.text
    added = _cache_hashes(url) - before
    assert len(added) >= len(prompt_ids) // block_size
    deadline = time.monotonic() + 5.0
    while not added <= sub.stored_hashes(sub.received[start:]):
        assert time.monotonic() < deadline, "BlockStored events missing"
        sub.recv_for(0.05)
    mine = sub.received[start:]
    assert sub.stored_hashes(mine) - before == added

    stored = [
        ev
        for m in mine
        for ev in m.batch.events
        if isinstance(ev, BlockStored) and set(ev.block_hashes) & added
    ]
    # The prompt's blocks in chain order: first block has no parent, each event's
    # parent is the previous event's last block.
    assert stored[0].parent_block_hash is None
    for prev, ev in itertools.pairwise(stored):
        assert ev.parent_block_hash == prev.block_hashes[-1]
    tokens = [t for ev in stored for t in ev.token_ids]
    for ev in stored:
        assert ev.block_size == block_size
        assert len(ev.token_ids) == block_size * len(ev.block_hashes)
    n_full = len(prompt_ids) // block_size * block_size
    assert tokens[:n_full] == prompt_ids[:n_full]

    seqs = [m.seq for m in sub.received]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


def test_events_map_encoding(main_fleet: Fleet, zctx: zmq.Context[Any]) -> None:
    sub = _subscribe(zctx, main_fleet.kv_endpoint(0))
    _check_request_events(main_fleet, sub)
    assert {m.topic for m in sub.received} == {b""}
    for m in sub.received:
        raw = msgspec.msgpack.decode(m.payload)
        # vLLM 0.32: the batch is an array [ts, events, dp_rank]; events tagged maps.
        assert isinstance(raw, list) and isinstance(raw[0], float)
        assert all(isinstance(ev, dict) and "type" in ev for ev in raw[1])


def test_events_array_encoding(array_fleet: Fleet, zctx: zmq.Context[Any]) -> None:
    sub = _subscribe(zctx, array_fleet.kv_endpoint(0), b"arr")
    _check_request_events(array_fleet, sub)
    assert {m.topic for m in sub.received} == {b"arr"}
    for m in sub.received:
        raw = msgspec.msgpack.decode(m.payload)
        assert isinstance(raw, list)
        assert all(isinstance(ev, list) and isinstance(ev[0], str) for ev in raw[1])
        assert {ev[0] for ev in raw[1]} <= {"BlockStored", "BlockRemoved", "AllBlocksCleared"}


def test_each_replica_publishes_on_its_own_endpoint(
    main_fleet: Fleet, zctx: zmq.Context[Any]
) -> None:
    assert main_fleet.kv_endpoint(0) != main_fleet.kv_endpoint(1)
    sub0 = _subscribe(zctx, main_fleet.kv_endpoint(0))
    sub1 = _subscribe(zctx, main_fleet.kv_endpoint(1))
    sub0.sync(main_fleet.urls[0])
    sub1.sync(main_fleet.urls[1])
    prompt = f"replica one only {uuid.uuid4().hex} " * 6
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 1}
    assert post(main_fleet.urls[1], "/v1/completions", body).status == 200
    deadline = time.monotonic() + 5.0
    while not sub1.recv_for(0.05):
        assert time.monotonic() < deadline, "replica 1 published nothing"
    assert sub0.recv_for(0.2) == []


def test_eviction_and_reset_events(start_fleet: Any, zctx: zmq.Context[Any]) -> None:
    """A small cache evicts (BlockRemoved of blocks stored before); a prefix-cache reset
    publishes AllBlocksCleared."""
    fleet = start_fleet(
        "--kv-events-port", "0", "--num-gpu-blocks-override", "12", "--time-scale", "20"
    )
    sub = _subscribe(zctx, fleet.kv_endpoint(0))
    sub.sync(fleet.url)
    # Blocks cached before the subscription took effect were stored unseen.
    baseline = _cache_hashes(fleet.url)
    start = len(sub.received)
    for i in range(6):
        prompt = f"evict {i} {uuid.uuid4().hex} " + "filler words here " * 10
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 1}
        assert post(fleet.url, "/v1/completions", body).status == 200
    cached = _cache_hashes(fleet.url)

    def replayed_state() -> tuple[set[int], int]:
        stored, num_removed = set(baseline), 0
        for m in sub.received[start:]:
            for ev in m.batch.events:
                if isinstance(ev, BlockStored):
                    stored.update(ev.block_hashes)
                elif isinstance(ev, BlockRemoved):
                    assert set(ev.block_hashes) <= stored, "removed a block never stored"
                    stored.difference_update(ev.block_hashes)
                    num_removed += 1
        return stored, num_removed

    deadline = time.monotonic() + 5.0
    while replayed_state()[0] != cached:
        assert time.monotonic() < deadline, "events do not add up to /debug/cache"
        sub.recv_for(0.05)
    assert replayed_state()[1] > 0, "no BlockRemoved"
    reset = post(fleet.url, "/reset_prefix_cache")
    assert reset.status == 200 and reset.json().get("success", True) is True
    deadline = time.monotonic() + 5.0
    while not any(isinstance(ev, AllBlocksCleared) for ev in sub.received[-1].batch.events):
        assert time.monotonic() < deadline, "no AllBlocksCleared"
        sub.recv_for(0.05)
    seqs = [m.seq for m in sub.received]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_block_hashes_match_vllm_vectors(array_fleet: Fleet, zctx: zmq.Context[Any]) -> None:
    """Token ids 0..31 hash, end to end through the events, to vLLM's own values."""
    url = array_fleet.url
    sub = _subscribe(zctx, array_fleet.kv_endpoint(0), b"arr")
    sub.sync(url)
    resp = post(
        url, "/v1/completions", {"model": MODEL, "prompt": list(range(32)), "max_tokens": 1}
    )
    assert resp.status == 200, resp.text
    assert set(VLLM_BLOCK_HASHES) <= _cache_hashes(url)
    deadline = time.monotonic() + 5.0
    while not set(VLLM_BLOCK_HASHES) <= sub.stored_hashes():
        assert time.monotonic() < deadline
        sub.recv_for(0.05)
    ev = next(
        ev
        for m in sub.received
        for ev in m.batch.events
        if isinstance(ev, BlockStored) and VLLM_BLOCK_HASHES[0] in ev.block_hashes
    )
    assert ev.parent_block_hash is None
    assert ev.block_hashes[:2] == VLLM_BLOCK_HASHES
    assert ev.token_ids[:32] == tuple(range(32))


def _replay(ctx: zmq.Context[Any], endpoint: str, start: int) -> list[list[bytes]]:
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    try:
        dealer.send_multipart([b"", start.to_bytes(8, "big")])
        replies: list[list[bytes]] = []
        deadline = time.monotonic() + 10.0
        while True:
            assert dealer.poll(int(max(0.0, deadline - time.monotonic()) * 1000)), (
                "replay did not end"
            )
            frames = dealer.recv_multipart()
            replies.append(frames)
            if frames[-2] == END_SEQ:
                return replies
    finally:
        dealer.close(0)


@pytest.mark.parametrize("which", ["map", "array"])
def test_replay_returns_buffered_batches_then_end_marker(
    which: str, main_fleet: Fleet, array_fleet: Fleet, zctx: zmq.Context[Any]
) -> None:
    """DEALER sends [b"", start seq]; replies are [b"", (topic,) seq, payload], then the
    end marker with seq -1 (vLLM 0.32 repeats the topic frame; older releases did not)."""
    fleet, topic = (main_fleet, b"") if which == "map" else (array_fleet, b"arr")
    sub = _subscribe(zctx, fleet.kv_endpoint(0), topic)
    sub.sync(fleet.url)
    live = {m.seq: m.payload for m in sub.received}
    replies = _replay(zctx, fleet.replay_endpoint(0), 0)
    end = replies[-1]
    assert end[-2:] == [END_SEQ, b""]
    assert all(f == b"" for f in end[:-2])
    assert int.from_bytes(end[-2], "big", signed=True) == -1
    batches = replies[:-1]
    assert batches, "nothing replayed"
    head = [b"", topic] if which == "map" else [b""]
    for f in batches:
        assert f[:-2] == head, f[:-2]
        assert len(f[-2]) == 8
        decode_batch(f[-1])
    seqs = [int.from_bytes(f[-2], "big") for f in batches]
    assert seqs == list(range(len(seqs))), "replay from 0 starts at 0, without gaps"
    assert seqs[-1] >= max(live)
    for f, seq in zip(batches, seqs, strict=True):
        if seq in live:
            assert f[-1] == live[seq], "replayed payload differs from the live one"
    # Replay from a later seq returns only the tail.
    tail = _replay(zctx, fleet.replay_endpoint(0), seqs[-1])
    assert [int.from_bytes(f[-2], "big", signed=True) for f in tail] == [seqs[-1], -1]


def test_kv_events_config_connect_mode(start_fleet: Any, zctx: zmq.Context[Any]) -> None:
    """With a concrete host, vLLM connects its publisher: the subscriber binds."""
    sub_sock = zctx.socket(zmq.SUB)
    sub_sock.setsockopt(zmq.LINGER, 0)
    sub_sock.setsockopt(zmq.SUBSCRIBE, b"kv")
    port = sub_sock.bind_to_random_port("tcp://127.0.0.1")
    sub = KvSubscriber(sub_sock)
    config = (
        '{"enable_kv_cache_events": true, "publisher": "zmq", '
        f'"endpoint": "tcp://127.0.0.1:{port}", "topic": "kv"}}'
    )
    fleet = start_fleet("--kv-events-config", config, "--time-scale", "20")
    assert fleet.replica(0)["kv_events_endpoint"] == f"tcp://127.0.0.1:{port}"
    src = get(fleet.url, "/kv_event_sources").json()["0"]
    assert src["endpoint"] == f"tcp://127.0.0.1:{port}"
    assert src["topic"] == "kv"
    _check_request_events(fleet, sub)
    assert {m.topic for m in sub.received} == {b"kv"}


def test_kv_events_disabled_in_config(start_fleet: Any) -> None:
    fleet = start_fleet("--kv-events-config", '{"enable_kv_cache_events": false}')
    assert fleet.replica(0)["kv_events_endpoint"] is None
    assert get(fleet.url, "/kv_event_sources").json() == {}
