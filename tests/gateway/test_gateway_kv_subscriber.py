"""The KV-event subscriber: against the simulator's real publisher (both encodings,
discovery, a gap filled by replay) and, with a scripted replay, the seq rules
(restart clears, unreplayable gap marks stale until a cache reset, bytes hashes)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from sim_harness import MODEL, Fleet, connectable, get, post, start_fleets

from headway.core.kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    WireEncoding,
    encode_batch,
)
from headway.gateway.config import CollectorsConfig, KvEventSource
from headway.gateway.kv_subscriber import (
    KvEventSubscriber,
    SourceState,
    parse_discovered,
    substitute_host,
)
from headway.routing import KvBlockIndex

FAST = CollectorsConfig(kv_replay_timeout_s=2.0, kv_discovery_retry_s=0.1)


def source_of(fleet: Fleet, i: int) -> KvEventSource:
    """As a config names it: the wildcard bind address, `*` for the engine's host."""

    def wildcard(address: str) -> str:
        return "tcp://*:" + address.rsplit(":", 1)[1]

    return KvEventSource(wildcard(fleet.kv_endpoint(i)), wildcard(fleet.replay_endpoint(i)))


def sim_blocks(url: str) -> set[int]:
    return set(get(url, "/debug/cache").json()["block_hashes"])


async def until(cond: Callable[[], Any], deadline_s: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + deadline_s
    while not await _call(cond):
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {deadline_s} s: {what}")
        await asyncio.sleep(0.02)


async def _call(cond: Callable[[], Any]) -> Any:
    value = cond()
    return await value if isinstance(value, Awaitable) else value


async def send(url: str, model: str, text: str, max_tokens: int = 2) -> None:
    body = {"model": model, "prompt": text, "max_tokens": max_tokens}
    resp = await asyncio.to_thread(post, url, "/v1/completions", body)
    assert resp.status == 200, resp.text


def prompt(n_words: int, tag: str) -> str:
    return f"{tag} " + " ".join(f"word{i % 37}" for i in range(n_words))


async def reset(url: str) -> None:
    resp = await asyncio.to_thread(post, url, "/reset_prefix_cache")
    assert resp.status == 200 and resp.json()["success"], resp.text


@pytest.mark.parametrize(
    ("fleet_name", "model"), [("map", MODEL), ("array", "array-model")], ids=["map", "array"]
)
def test_index_follows_the_sim(kv_fleets, fleet_name: str, model: str) -> None:  # type: ignore[no-untyped-def]
    fleet: Fleet = getattr(kv_fleets, fleet_name)
    url = fleet.urls[0]

    async def run() -> None:
        index = KvBlockIndex()
        sub = KvEventSubscriber(index, FAST, sources={url: [source_of(fleet, 0)]})
        await reset(url)
        sub.start()
        try:
            await until(lambda: sub.is_synced(url), what="synced after the initial replay")
            assert not index.is_stale(url)
            tag = uuid.uuid4().hex
            for i in range(6):
                await send(url, model, prompt(120 + 10 * i, tag))
            await until(
                lambda: index.blocks_of(url) == sim_blocks(url), what="index == /debug/cache"
            )
            assert index.num_blocks(url) > 6
            assert sub.block_size(url) == 16
            await reset(url)  # AllBlocksCleared
            await until(lambda: index.num_blocks(url) == 0, what="cleared")
            assert sub.is_synced(url)
        finally:
            await sub.stop()

    asyncio.run(run())


def test_discovery_substitutes_the_engine_host(kv_fleets) -> None:  # type: ignore[no-untyped-def]
    url = kv_fleets.map.urls[1]
    advertised = get(url, "/kv_event_sources").json()
    assert set(advertised) == {"0"}

    async def run() -> None:
        index = KvBlockIndex()
        sub = KvEventSubscriber(index, FAST, discover=[url])
        assert index.is_stale(url)  # nothing known before discovery
        sub.start()
        try:
            await until(lambda: sub.is_synced(url), what="discovered and synced")
            (src,) = sub.sources(url)
            assert src.source.endpoint == connectable(kv_fleets.map.kv_endpoint(1))
            assert src.source.replay_endpoint == connectable(kv_fleets.map.replay_endpoint(1))
            await send(url, MODEL, prompt(150, uuid.uuid4().hex))
            await until(lambda: index.blocks_of(url) == sim_blocks(url), what="in step")
        finally:
            await sub.stop()

    asyncio.run(run())


class DroppingSubscriber(KvEventSubscriber):
    """Loses chosen live batches, as a slow subscriber loses them to the PUB's HWM."""

    drop: set[int]

    async def on_message(self, src: SourceState, seq: int, payload: bytes) -> None:
        if seq in self.drop:
            self.drop.discard(seq)
            return
        await super().on_message(src, seq, payload)


def test_gap_is_replayed_from_the_sim(kv_fleets) -> None:  # type: ignore[no-untyped-def]
    fleet = kv_fleets.map
    url = fleet.urls[0]

    async def run() -> None:
        index = KvBlockIndex()
        sub = DroppingSubscriber(index, FAST, sources={url: [source_of(fleet, 0)]})
        sub.drop = set()
        sub.start()
        try:
            await until(lambda: sub.is_synced(url), what="synced")
            (src,) = sub.sources(url)
            base = src.last_seq if src.last_seq is not None else -1
            sub.drop = {base + 1, base + 2}  # the next two batches never arrive
            tag = uuid.uuid4().hex
            for i in range(4):
                await send(url, MODEL, prompt(100 + 7 * i, tag))
            await until(lambda: index.blocks_of(url) == sim_blocks(url), what="gap replayed")
            assert not sub.drop, "the batches to drop were published"
            assert src.num_gaps >= 1 and src.num_replays_failed == 0
            assert sub.is_synced(url)
        finally:
            await sub.stop()

    asyncio.run(run())


# -- seq rules with a scripted replay ----------------------------------------------
URL = "http://engine:8000"


def stored(*hashes: int) -> bytes:
    return encode_batch(EventBatch(0.0, (BlockStored(tuple(hashes), None, (), 16),)))


def removed(*hashes: int) -> bytes:
    return encode_batch(EventBatch(0.0, (BlockRemoved(tuple(hashes)),)))


def cleared() -> bytes:
    return encode_batch(EventBatch(0.0, (AllBlocksCleared(),)), WireEncoding.ARRAY)


class Scripted:
    """A subscriber whose replay answers from a dict of kept batches (None: fails)."""

    def __init__(self, kept: dict[int, bytes] | None) -> None:
        self.index = KvBlockIndex()
        self.sub = KvEventSubscriber(
            self.index, FAST, sources={URL: [KvEventSource("tcp://engine:5557")]}
        )
        self.kept = kept
        self.replays: list[int] = []
        self.sub.replay = self._replay
        (self.src,) = self.sub.sources(URL)

    async def _replay(self, src: SourceState, start: int) -> list[tuple[int, bytes]] | None:
        self.replays.append(start)
        if self.kept is None:
            return None
        return sorted((s, p) for s, p in self.kept.items() if s >= start)

    def feed(self, *messages: tuple[int, bytes]) -> None:
        async def run() -> None:
            for seq, payload in messages:
                await self.sub.on_message(self.src, seq, payload)

        asyncio.run(run())


def test_in_order_from_zero_is_synced() -> None:
    s = Scripted(None)
    assert s.index.is_stale(URL)
    s.feed((0, stored(1, 2)), (1, stored(3)), (2, removed(1)))
    assert s.index.blocks_of(URL) == {2, 3}
    assert not s.index.is_stale(URL) and s.replays == []


def test_backwards_seq_clears_the_endpoint() -> None:
    s = Scripted(None)
    s.feed((0, stored(1, 2)), (1, stored(3)), (0, stored(9)))
    assert s.index.blocks_of(URL) == {9}
    assert s.src.num_restarts == 1 and not s.index.is_stale(URL)


def test_gap_filled_by_replay() -> None:
    s = Scripted({0: stored(1), 1: stored(2), 2: stored(3), 3: stored(4)})
    s.feed((0, stored(1)), (3, stored(4)), (4, stored(5)))
    assert s.replays == [1]
    assert s.index.blocks_of(URL) == {1, 2, 3, 4, 5}
    assert not s.index.is_stale(URL) and s.src.last_seq == 4


def test_first_batch_after_start_replays_from_zero() -> None:
    s = Scripted({0: stored(1), 1: stored(2), 2: removed(1)})
    s.feed((2, removed(1)), (3, stored(7)))
    assert s.replays == [0]
    assert s.index.blocks_of(URL) == {2, 7} and not s.index.is_stale(URL)


def test_live_duplicates_of_replayed_batches_are_dropped() -> None:
    s = Scripted({0: stored(1), 1: stored(2), 2: removed(2)})
    s.feed((1, stored(2)), (2, removed(2)), (3, stored(2)))
    # Batch 1 revealed a gap at 0, the replay brought 0..2, live 2 is a duplicate
    # (not a restart); 3 stores 2 again.
    assert s.src.num_restarts == 0
    assert s.index.blocks_of(URL) == {1, 2}


@pytest.mark.parametrize(
    "kept",
    [None, {5: stored(8)}],
    ids=["no-replay", "replay-starts-too-late"],
)
def test_unreplayable_gap_is_stale_until_a_reset(kept: dict[int, bytes] | None) -> None:
    s = Scripted(kept)
    s.feed((0, stored(1)), (6, stored(2)))
    assert s.index.is_stale(URL)
    s.feed((7, cleared()), (8, stored(3)))
    assert not s.index.is_stale(URL)
    assert s.index.blocks_of(URL) == {3}


def test_bytes_hashes_and_unknown_fields() -> None:
    digest = bytes(range(32))
    payload = msgspec.msgpack.encode(
        [
            1.0,
            [
                {"type": "BlockStored", "block_hashes": [digest, -1], "parent_block_hash": None,
                 "token_ids": [], "block_size": 32, "lora_id": None, "medium": "GPU",
                 "lora_name": None, "locality": "x", "ownership": 3},
                {"type": "SomethingNew", "x": 1},
                {"type": "BlockStored", "block_hashes": [5], "parent_block_hash": None,
                 "token_ids": [], "block_size": 32, "lora_id": None, "medium": "CPU",
                 "lora_name": None},
            ],
            0,
        ]
    )  # fmt: skip
    s = Scripted(None)
    s.feed((0, payload))
    assert s.index.blocks_of(URL) == {int.from_bytes(digest, "big") & (2**64 - 1), 2**64 - 1}
    assert s.sub.block_size(URL) == 32


def test_undecodable_batch_marks_stale() -> None:
    s = Scripted(None)
    s.feed((0, stored(1)), (1, b"\xc1not msgpack"))
    assert s.index.is_stale(URL) and s.src.num_decode_errors == 1


def test_replay_timeout_on_a_dead_socket() -> None:
    index = KvBlockIndex()
    cfg = CollectorsConfig(kv_replay_timeout_s=0.2)
    src = KvEventSource("tcp://127.0.0.1:1", replay_endpoint="tcp://127.0.0.1:1")
    sub = KvEventSubscriber(index, cfg, sources={URL: [src]})

    async def run() -> list[tuple[int, bytes]] | None:
        sub.start()
        try:
            (state,) = sub.sources(URL)
            return await sub.replay(state, 0)
        finally:
            await sub.stop()

    assert asyncio.run(run()) is None
    assert index.is_stale(URL)


DISCOVERED = {
    "vllm-0.32-map": (
        {
            "1": {"publisher": "zmq", "endpoint": "tcp://*:5558", "replay_endpoint": "tcp://*:6558", "topic": "kv"},
            "0": {"publisher": "zmq", "endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:6557", "topic": "kv"},
        },
        [
            KvEventSource("tcp://10.0.0.5:5557", "tcp://10.0.0.5:6557", "kv"),
            KvEventSource("tcp://10.0.0.5:5558", "tcp://10.0.0.5:6558", "kv"),
        ],
    ),
    "dp-ranks-sharing-the-base-address": (
        {
            "0": {"endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:6557"},
            "1": {"endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:6557"},
        },
        [
            KvEventSource("tcp://10.0.0.5:5557", "tcp://10.0.0.5:6557"),
            KvEventSource("tcp://10.0.0.5:5558", "tcp://10.0.0.5:6558"),
        ],
    ),
    "older-list": (
        [{"data_parallel_rank": 0, "endpoint": "tcp://0.0.0.0:5557", "replay_endpoint": None, "topic": ""}],
        [KvEventSource("tcp://10.0.0.5:5557", None, "")],
    ),
    "concrete-host-kept": (
        {"0": {"endpoint": "tcp://127.0.0.1:7000"}},
        [KvEventSource("tcp://127.0.0.1:7000")],
    ),
    "disabled-or-null": (
        {"0": {"enable_kv_cache_events": False, "endpoint": "tcp://*:1"},
         "1": {"publisher": "null", "endpoint": "tcp://*:2"}},
        [],
    ),
    "empty": ({}, []),
}  # fmt: skip


@pytest.mark.parametrize(("raw", "expected"), DISCOVERED.values(), ids=DISCOVERED.keys())
def test_parse_discovered(raw: object, expected: list[KvEventSource]) -> None:
    assert parse_discovered(raw, "http://10.0.0.5:8000") == expected


def test_substitute_host_ipv6() -> None:
    assert substitute_host("tcp://*:5557", "http://[::1]:8000") == "tcp://[::1]:5557"
    assert substitute_host("ipc:///tmp/x", "http://h:1") == "ipc:///tmp/x"


def free_port() -> int:
    """A port that was free a moment ago (bound, then released), for a sim restarted
    on the same KV-event ports."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_engine_restart_clears_the_index(tmp_path: Path) -> None:
    pub, replay = free_port(), free_port()
    kv_config = json.dumps(
        {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": f"tcp://*:{pub}",
            "replay_endpoint": f"tcp://*:{replay}",
        }
    )
    args = ("--kv-events-config", kv_config, "--time-scale", "20", "--max-model-len", "8192")
    source = KvEventSource(f"tcp://127.0.0.1:{pub}", f"tcp://127.0.0.1:{replay}")
    engine = "http://engine-under-restart"

    async def run() -> None:
        index = KvBlockIndex()
        sub = KvEventSubscriber(index, FAST, sources={engine: [source]})
        (first,) = await asyncio.to_thread(start_fleets, tmp_path / "a", args)
        sub.start()
        try:
            await until(lambda: sub.is_synced(engine), what="synced")
            tag = uuid.uuid4().hex
            for i in range(10):  # many batches, so the new engine's seq stays below
                await send(first.url, MODEL, prompt(60 + 5 * i, tag))
            await until(lambda: index.blocks_of(engine) == sim_blocks(first.url), what="first")
            old = index.blocks_of(engine)
            await asyncio.to_thread(first.stop)
            (second,) = await asyncio.to_thread(start_fleets, tmp_path / "b", args)
            try:
                # ZMQ drops what the new PUB sends before the SUB has reconnected: keep
                # the engine busy until the subscriber sees it.
                (src,) = sub.sources(engine)
                for _ in range(100):
                    await send(second.url, MODEL, prompt(90, uuid.uuid4().hex))
                    if src.num_restarts:
                        break
                    await asyncio.sleep(0.05)
                await until(
                    lambda: index.blocks_of(engine) == sim_blocks(second.url),
                    what="index follows the restarted engine",
                )
                assert src.num_restarts == 1 and sub.is_synced(engine)
                assert not old & index.blocks_of(engine)
            finally:
                await asyncio.to_thread(second.stop)
        finally:
            first.stop()
            await sub.stop()

    asyncio.run(run())


def test_unusable_source_address_leaves_the_endpoint_stale(
    caplog: pytest.LogCaptureFixture,
) -> None:
    index = KvBlockIndex()
    sub = KvEventSubscriber(index, FAST, sources={URL: [KvEventSource("tcp://not a host:1")]})

    async def run() -> None:
        sub.start()
        try:
            await until(lambda: any("cannot subscribe" in r.message for r in caplog.records))
        finally:
            await sub.stop()

    asyncio.run(run())
    assert index.is_stale(URL) and not sub.is_synced(URL)


def test_replay_contiguous_from_a_reset_syncs_a_long_running_engine() -> None:
    # The engine keeps only its last batches: seq 0 is gone, but a cache reset (7) is
    # in the replay, and everything after it is there.
    s = Scripted({5: stored(8), 6: removed(8), 7: cleared(), 8: stored(3), 9: stored(4)})
    s.feed((10, stored(5)))
    assert s.replays == [0]
    assert not s.index.is_stale(URL) and s.src.num_replays_failed == 0
    assert s.index.blocks_of(URL) == {3, 4, 5}


@pytest.mark.parametrize(
    "kept",
    [
        {5: stored(8), 7: stored(9)},  # no reset: what came before 5 is unknown
        {5: cleared(), 7: stored(9)},  # a hole after the reset
    ],
    ids=["no-reset", "hole-after-the-reset"],
)
def test_replay_from_after_the_start_without_a_clean_reset_is_stale(
    kept: dict[int, bytes],
) -> None:
    s = Scripted(kept)
    s.feed((8, stored(1)))
    assert s.index.is_stale(URL) and s.src.num_replays_failed == 1


class Lossy(Scripted):
    """A replay that loses the batches in `lost` the first `times` times it is asked,
    as vLLM's ROUTER drops frames when its send queue is full."""

    def __init__(self, kept: dict[int, bytes], lost: set[int], times: int) -> None:
        super().__init__(kept)
        self.lost, self.times = lost, times

    async def _replay(self, src: SourceState, start: int) -> list[tuple[int, bytes]] | None:
        got = await super()._replay(src, start)
        assert got is not None
        if len(self.replays) > self.times:
            return got
        return [(seq, p) for seq, p in got if seq not in self.lost]


def test_a_replay_with_holes_is_asked_again_from_the_hole() -> None:
    kept = {0: stored(1), 1: stored(2), 2: removed(1), 3: stored(3), 4: removed(3), 5: stored(4)}
    s = Lossy(kept, lost={2, 3}, times=1)
    s.feed((6, stored(5)))
    assert s.replays == [0, 2]
    assert not s.index.is_stale(URL)
    assert s.src.num_replays_failed == 0 and s.src.num_replay_retries == 1
    # In order: 1 stored then removed, 3 stored then removed.
    assert s.index.blocks_of(URL) == {2, 4, 5}


def test_a_replay_that_keeps_losing_is_stale_until_a_reset() -> None:
    kept = {0: stored(1), 1: stored(2), 2: removed(1), 3: stored(3)}
    s = Lossy(kept, lost={2}, times=99)
    s.feed((4, stored(5)))
    assert s.replays == [0, 2, 2]  # REPLAY_ATTEMPTS in all, the last two from the hole
    assert s.index.is_stale(URL)
    assert s.src.num_replays_failed == 1 and s.src.num_replay_retries == 2
    # Nothing past the hole came from the replay (a removal must not come before
    # its store): 3 was not applied.
    assert 3 not in s.index.blocks_of(URL)
    s.feed((5, cleared()), (6, stored(7)))
    assert not s.index.is_stale(URL) and s.index.blocks_of(URL) == {7}


class CutShort(Scripted):
    """A replay that stops after `per_replay` batches each time, its end marker lost,
    as a long-running engine's ROUTER did (3,000 of 10,000 batches, then silence)."""

    def __init__(self, kept: dict[int, bytes], per_replay: int) -> None:
        super().__init__(kept)
        self.per_replay = per_replay

    async def _replay(self, src: SourceState, start: int) -> list[tuple[int, bytes]] | None:
        got = await super()._replay(src, start)
        assert got is not None
        return got[: self.per_replay]


def test_a_replay_cut_short_is_asked_for_the_rest_while_it_brings_more() -> None:
    """Ten batches, three a replay: the gap 0..9 is filled in four replays (more than
    REPLAY_ATTEMPTS: each brought something new), every batch applied in order."""
    kept = {i: stored(100 + i) for i in range(10)} | {4: removed(101, 102)}
    s = CutShort(kept, per_replay=3)
    s.feed((10, stored(7)))
    assert s.replays == [0, 3, 6, 9]
    assert not s.index.is_stale(URL) and s.src.num_replays_failed == 0
    assert s.index.blocks_of(URL) == ({100 + i for i in range(10)} - {101, 102, 104}) | {7}
    assert s.src.last_seq == 10


def test_a_replay_cut_short_that_brings_nothing_more_is_stale() -> None:
    """The engine kept 0..4 but the live seq is 9: the replays reach 4, the next brings
    nothing, and the index stays stale (5..8 are lost) until a reset."""
    s = CutShort({i: stored(100 + i) for i in range(5)}, per_replay=3)
    s.feed((9, stored(7)))
    assert s.replays == [0, 3, 5, 5]
    assert s.index.is_stale(URL) and s.src.num_replays_failed == 1


def replay_from_router(
    frames: Callable[[int], Iterator[tuple[bytes, ...]]], timeout_s: float, busy_loop: bool
) -> list[tuple[int, bytes]] | None:
    """`KvEventSubscriber.replay(0)` against a real ZMQ ROUTER on 127.0.0.1 that answers
    the replay request with `frames(start)` (each sent after the client identity);
    `busy_loop`: the event loop does other work meanwhile (0.5 ms a turn)."""
    import threading

    import zmq

    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def serve() -> None:
        client, _, start = router.recv_multipart()
        for frame in frames(int.from_bytes(start, "big")):
            router.send_multipart((client, *frame))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    src = KvEventSource("tcp://127.0.0.1:1", replay_endpoint=f"tcp://127.0.0.1:{port}")
    cfg = CollectorsConfig(kv_replay_timeout_s=timeout_s)
    sub = KvEventSubscriber(KvBlockIndex(), cfg, sources={URL: [src]})

    async def busy() -> None:
        while True:
            time.sleep(0.0005)
            await asyncio.sleep(0)

    async def run() -> list[tuple[int, bytes]] | None:
        sub.start()
        other_work = asyncio.create_task(busy()) if busy_loop else None
        try:
            (state,) = sub.sources(URL)
            return await sub.replay(state, 0)
        finally:
            if other_work is not None:
                other_work.cancel()
            await sub.stop()

    try:
        return asyncio.run(run())
    finally:
        server.join(timeout=5)
        router.close(0)


def test_a_replay_whose_end_marker_is_lost_returns_what_came() -> None:
    """A real ROUTER that sends 50 batches and never the end marker: after the idle
    timeout the replay returns the 50 (not None: `fill_gap` asks for the rest)."""

    def frames(start: int) -> Iterator[tuple[bytes, ...]]:
        for seq in range(50):
            yield (b"", b"kv", seq.to_bytes(8, "big"), stored(seq))

    got = replay_from_router(frames, timeout_s=0.3, busy_loop=False)
    assert got is not None and [seq for seq, _ in got] == list(range(50))


def test_replay_of_a_full_vllm_buffer_arrives_whole() -> None:
    """vLLM's replay ROUTER sends its whole buffer (10,000 batches by default) from a
    thread and drops what the reader's queue has no room for; the subscriber must take
    it all while its event loop is busy with other work (0.5 ms per loop turn), and a
    replay that keeps coming (here in bursts 0.15 s apart, 1.5 s in all) is not cut
    off by the 0.5 s timeout, which bounds the wait for each frame."""
    num_batches = 10_000
    tokens = tuple(range(16 * 16))
    payload = encode_batch(EventBatch(0.0, (BlockStored(tuple(range(1, 17)), None, tokens, 16),)))

    def frames(start: int) -> Iterator[tuple[bytes, ...]]:
        for seq in range(start, num_batches):
            if seq % 1000 == 0:
                time.sleep(0.15)
            yield (b"", b"kv", seq.to_bytes(8, "big"), payload)
        yield (b"", b"", (-1).to_bytes(8, "big", signed=True), b"")

    got = replay_from_router(frames, timeout_s=0.5, busy_loop=True)
    assert got is not None
    assert [seq for seq, _ in got] == list(range(num_batches))
