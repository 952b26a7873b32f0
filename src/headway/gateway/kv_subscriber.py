"""The KV-event subscriber: one ZMQ SUB per engine source, feeding the gateway's
`KvBlockIndex` (headway.routing) with each engine's block stores and removals.

Wire format (REFERENCE.md, "vLLM KV-cache events"): multipart `[topic, seq (8-byte
big-endian), payload]`, payload decoded by `core.kv_events.decode_batch` (both vLLM
encodings, hashes as ints or bytes, unknown fields and events ignored). Replay: a
DEALER sends `[b"", start seq]` to the engine's ROUTER and reads `[..., seq, payload]`
frames until the seq `-1` end marker.

Per source, a small state machine on `seq` (invariants):

* `last_seq` is the seq of the last batch applied (None: none yet, or reset).
* A batch is applied at most once and in seq order: a live batch with seq <= the last
  replayed one is the duplicate of a replayed batch and is dropped.
* A gap (seq > last_seq + 1, or a first batch > 0) is filled by a replay from the
  first missing seq. If the replay is unavailable, fails, or does not cover the gap
  contiguously (from the first missing seq, or from a cache reset in the replay),
  the source is UNSYNCED.
* A seq that goes backwards (and is not a replay duplicate) means the engine
  restarted: the endpoint's index is cleared and the source starts over from seq 0.
* A source is SYNCED when the index holds the engine's full history for it: it
  applied every batch from seq 0 on (live or replayed), or applied an
  `AllBlocksCleared` (the engine's cache was reset, so nothing before matters).
  Recovery rule: an UNSYNCED source becomes SYNCED again on the next engine
  restart or cache reset (e.g. `POST /reset_prefix_cache` through the gateway).

An endpoint is marked stale in the index (`KvBlockIndex.mark_stale`) while it has no
source yet (discovery pending or none found) or any of its sources is UNSYNCED, so the
`precise-prefix` scorer falls back to approximate matching for it. Data-parallel ranks
of one endpoint (several sources) feed the same endpoint's block set.

First-block hash check (`FirstBlockCheck`, when the subscriber is given one): a
`BlockStored` whose chain starts in it (`parent_block_hash` None) and that carries its
`token_ids` (full attention, KV-cache group 0, GPU medium) is re-hashed with the gateway's own hasher (`core.block_hash`,
`sha256_cbor`, `prompt.hash_seed`; the same scheme the prompt reader hashes requests
with) and compared with the engine's first hash. A wrong hash seed or scheme then
shows at once, as `headway_gateway_kv_event_hash_checks_total{endpoint,result}`
counting `mismatch` (the first mismatch per endpoint is logged once, with both
hashes), instead of as silent precise-routing misses. Blocks with extra keys the
gateway cannot rebuild (LoRA: the adapter path; multimodal; prompt embeddings) count
as `skipped`; a lone cache salt is rebuilt. The check never changes what is applied.

Sources come from the pool's config (`kv_events` per endpoint), the `--kv-events`
quick-form flag, or discovery: `GET {endpoint}/kv_event_sources` (vLLM 0.32: an object
keyed by data-parallel rank; older: a list of `{data_parallel_rank, endpoint,
replay_endpoint, topic}`). A wildcard host (`tcp://*:P`, `tcp://0.0.0.0:P`) is replaced
by the engine's host.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
import zmq
import zmq.asyncio

from headway.core.block_hash import ExtraKeys, hash_block, none_hash, to_event_int
from headway.core.kv_events import (
    DEFAULT_MEDIUM,
    FULL_ATTENTION,
    AllBlocksCleared,
    BlockStored,
    EventBatch,
    KvEventDecodeError,
    decode_batch,
)
from headway.gateway.background import stop_tasks
from headway.gateway.config import CollectorsConfig, KvEventSource
from headway.gateway.kv_metrics import (
    HASH_CHECK_MATCH,
    HASH_CHECK_MISMATCH,
    HASH_CHECK_SKIPPED,
    KvEventMetrics,
)
from headway.routing import KvBlockIndex

log = logging.getLogger(__name__)

END_OF_REPLAY = -1
REPLAY_ATTEMPTS = 3  # replays per gap: the first, then again from a hole in it ...
MAX_REPLAYS = 64  # ... (retries that bring something new do not count), at most this many
_WILDCARD_HOSTS = ("*", "0.0.0.0", "[::]", "::")


def substitute_host(address: str, engine_url: str) -> str:
    """`tcp://*:P` (or 0.0.0.0) -> `tcp://ENGINE_HOST:P`; other addresses unchanged."""
    if not address.startswith("tcp://"):
        return address
    host, sep, port = address[len("tcp://") :].rpartition(":")
    if sep and host in _WILDCARD_HOSTS:
        engine_host = urlsplit(engine_url).hostname or "127.0.0.1"
        if ":" in engine_host:
            engine_host = f"[{engine_host}]"
        return f"tcp://{engine_host}:{port}"
    return address


def parse_discovered(raw: object, engine_url: str) -> list[KvEventSource]:
    """Sources from a `/kv_event_sources` answer (either known shape); entries that
    are disabled or not ZMQ are skipped. Data-parallel rank k publishes on the
    configured port + k (vLLM's rule): a rank > 0 reporting the very address of a
    lower rank gets its ports offset by k, so no PUB socket is subscribed twice."""
    ranked: list[tuple[int, Any]]
    if isinstance(raw, Mapping):
        ranked = [(_rank(k, i), raw[k]) for i, k in enumerate(raw)]
    elif isinstance(raw, list):
        ranked = [
            (_rank(e.get("data_parallel_rank", i) if isinstance(e, Mapping) else i, i), e)
            for i, e in enumerate(raw)
        ]
    else:
        raise ValueError(f"expected an object or a list, got {type(raw).__name__}")
    out: list[KvEventSource] = []
    for rank, entry in sorted(ranked, key=lambda r: r[0]):
        if not isinstance(entry, Mapping):
            continue
        if entry.get("enable_kv_cache_events") is False:
            continue
        if entry.get("publisher", "zmq") != "zmq":
            continue
        endpoint = entry.get("endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            continue
        replay = entry.get("replay_endpoint")
        replay = replay if isinstance(replay, str) and replay else None
        source = KvEventSource(
            endpoint=substitute_host(endpoint, engine_url),
            replay_endpoint=None if replay is None else substitute_host(replay, engine_url),
            topic=str(entry.get("topic") or ""),
        )
        if rank > 0 and any(s.endpoint == source.endpoint for s in out):
            source = KvEventSource(
                _offset_port(source.endpoint, rank),
                None
                if source.replay_endpoint is None
                else _offset_port(source.replay_endpoint, rank),
                source.topic,
            )
        out.append(source)
    return out


def _dialable(source: KvEventSource, engine_url: str) -> KvEventSource:
    """`source` with wildcard hosts replaced by the engine's."""
    replay = source.replay_endpoint
    return KvEventSource(
        substitute_host(source.endpoint, engine_url),
        None if replay is None else substitute_host(replay, engine_url),
        source.topic,
    )


def _rank(key: object, default: int) -> int:
    try:
        return int(str(key))
    except ValueError:
        return default


def _offset_port(address: str, offset: int) -> str:
    head, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not address.startswith("tcp://"):
        return address
    return f"{head}:{int(port) + offset}"


class FirstBlockCheck:
    """Re-hashes the first block of every `BlockStored` that starts a chain and
    counts agreement with the engine (see the module docstring)."""

    def __init__(self, hash_seed: str | None, metrics: KvEventMetrics | None = None) -> None:
        self.hash_seed = hash_seed
        self.metrics = metrics
        self._root = none_hash(hash_seed)
        self.counts: dict[tuple[str, str], int] = {}
        self._warned: set[str] = set()
        self._children: dict[tuple[str, str], Any] = {}

    def count(self, endpoint_id: str, result: str) -> int:
        """Checks of `endpoint_id` that ended in `result` so far."""
        return self.counts.get((endpoint_id, result), 0)

    def check_batch(self, endpoint_id: str, batch: EventBatch) -> None:
        for ev in batch.events:
            if isinstance(ev, BlockStored):
                result = self.check(endpoint_id, ev)
                if result is not None:
                    self._record(endpoint_id, result)

    def check(self, endpoint_id: str, ev: BlockStored) -> str | None:
        """The result for one event; None when it is not a chain's start with tokens
        (nothing to check), so it is not counted."""
        bs = ev.block_size
        if (
            ev.parent_block_hash is not None
            or not ev.block_hashes
            or bs <= 0
            or len(ev.token_ids) < bs
            or (ev.medium is not None and ev.medium != DEFAULT_MEDIUM)
            # Sliding-window groups skip null blocks: hash 0 need not be block 0.
            or ev.kv_cache_spec_kind not in (None, FULL_ATTENTION)
            # Hybrid models' further groups may hash at another granularity.
            or ev.group_idx not in (None, 0)
        ):
            return None
        is_known, keys = self._first_block_keys(ev)
        if not is_known:
            return HASH_CHECK_SKIPPED
        expected = to_event_int(hash_block(self._root, ev.token_ids[:bs], keys))
        published = ev.block_hashes[0]
        if expected == published:
            return HASH_CHECK_MATCH
        if endpoint_id not in self._warned:
            self._warned.add(endpoint_id)
            log.warning(
                "%s: KV-event hash check failed: the engine published %d for a chain's "
                "first block, the gateway computes %d (sha256_cbor, hash seed %s). The "
                "engine must run with --prefix-caching-hash-algo sha256_cbor and "
                "PYTHONHASHSEED equal to prompt.hash_seed, else precise prefix routing "
                "misses (logged once per endpoint; headway_gateway_kv_event_hash_checks_total)",
                endpoint_id,
                published,
                expected,
                "unset" if self.hash_seed is None else repr(self.hash_seed),
            )
        return HASH_CHECK_MISMATCH

    @staticmethod
    def _first_block_keys(ev: BlockStored) -> tuple[bool, ExtraKeys]:
        """(whether they can be rebuilt, block 0's hash extra keys) from the event's
        untagged form (vLLM 0.32 publishes a LoRA name, a cache salt or a prompt
        embedding digest bare, and hashes `('lora', name, path)`, `('cache_salt',
        salt)`, `('mm', id, offset)`, `('prompt_embeds', digest)`)."""
        first = ev.extra_keys[0] if ev.extra_keys else None
        has_lora = ev.lora_id is not None or ev.lora_name is not None
        if first is None:
            return not has_lora, None
        is_lone_str = isinstance(first, tuple) and len(first) == 1 and isinstance(first[0], str)
        if not has_lora and is_lone_str:
            return True, (("cache_salt", first[0]),)
        return False, None

    def _record(self, endpoint_id: str, result: str) -> None:
        key = (endpoint_id, result)
        self.counts[key] = self.counts.get(key, 0) + 1
        if self.metrics is not None:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.metrics.hash_checks.labels(*key)
            child.inc()


@dataclass
class SourceState:
    """One source's position in its engine's event stream (see the module docstring)."""

    endpoint_id: str
    source: KvEventSource
    last_seq: int | None = None
    replayed_through: int | None = None
    is_synced: bool = False
    num_batches: int = 0
    num_gaps: int = 0
    num_replays_failed: int = 0
    num_replay_retries: int = 0  # replays asked again from a hole in the last
    num_restarts: int = 0
    num_decode_errors: int = 0


ReplayFn = Callable[[SourceState, int], Awaitable[list[tuple[int, bytes]] | None]]


@dataclass
class _Endpoint:
    sources: list[SourceState] = field(default_factory=list)
    block_size: int | None = None


class KvEventSubscriber:
    """Subscribes to every known source and keeps `index` in step with the engines."""

    def __init__(
        self,
        index: KvBlockIndex,
        config: CollectorsConfig,
        *,
        sources: Mapping[str, Sequence[KvEventSource]] | None = None,
        discover: Sequence[str] = (),
        without_source: Sequence[str] = (),
        on_stale_change: Callable[[str, bool], None] | None = None,
        on_batch: Callable[[str], None] | None = None,
        first_block_check: FirstBlockCheck | None = None,
    ) -> None:
        self.index = index
        self.config = config
        self.first_block_check = first_block_check
        self._on_stale_change = on_stale_change
        self._on_batch = on_batch
        self._endpoints: dict[str, _Endpoint] = {}
        for url, srcs in (sources or {}).items():
            ep = self._endpoints.setdefault(url, _Endpoint())
            ep.sources.extend(SourceState(url, _dialable(s, url)) for s in srcs)
        self._discover = [u for u in discover if u not in self._endpoints]
        for url in self._discover:
            self._endpoints.setdefault(url, _Endpoint())
        for url in without_source:  # stale for good: the index knows nothing of them
            self._endpoints.setdefault(url, _Endpoint())
        self._stale: dict[str, bool] = {}
        for url in self._endpoints:
            self._update_stale(url)
        self._ctx: zmq.asyncio.Context | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.replay: ReplayFn = self._replay

    # -- queries -----------------------------------------------------------------
    @property
    def endpoint_ids(self) -> tuple[str, ...]:
        return tuple(self._endpoints)

    def block_size(self, endpoint_id: str) -> int | None:
        """The block size the endpoint's `BlockStored` events reported, if any."""
        ep = self._endpoints.get(endpoint_id)
        return None if ep is None else ep.block_size

    def sources(self, endpoint_id: str) -> tuple[SourceState, ...]:
        ep = self._endpoints.get(endpoint_id)
        return () if ep is None else tuple(ep.sources)

    def is_synced(self, endpoint_id: str) -> bool:
        return not self._stale.get(endpoint_id, True)

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        if self._tasks or not self._endpoints:
            return
        self._ctx = zmq.asyncio.Context()
        for ep in self._endpoints.values():
            for src in ep.sources:
                self._tasks.append(asyncio.create_task(self._run_source(src)))
        if self._discover:
            self._session = aiohttp.ClientSession(
                skip_auto_headers=("User-Agent",), timeout=aiohttp.ClientTimeout(total=5.0)
            )
            for url in self._discover:
                self._tasks.append(asyncio.create_task(self._run_discovery(url)))

    async def stop(self) -> None:
        await stop_tasks(self._tasks, self._session)
        self._session = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # -- discovery ---------------------------------------------------------------
    async def _run_discovery(self, url: str) -> None:
        assert self._session is not None
        while True:
            try:
                async with self._session.get(url + "/kv_event_sources") as resp:
                    if resp.status == 404:
                        log.info("%s has no /kv_event_sources: no KV events", url)
                        return
                    if resp.status != 200:
                        raise ValueError(f"HTTP {resp.status}")
                    found = parse_discovered(msgspec.json.decode(await resp.read()), url)
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                log.debug("KV-event discovery on %s failed: %r; retrying", url, exc)
                await asyncio.sleep(self.config.kv_discovery_retry_s)
                continue
            ep = self._endpoints[url]
            if not found:
                log.info("%s publishes no KV events; its index stays stale", url)
                return
            log.info("%s: KV events from %s", url, ", ".join(s.endpoint for s in found))
            for source in found:
                src = SourceState(url, source)
                ep.sources.append(src)
                self._tasks.append(asyncio.create_task(self._run_source(src)))
            self._update_stale(url)
            return

    # -- one source --------------------------------------------------------------
    async def _run_source(self, src: SourceState) -> None:
        assert self._ctx is not None
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        sock.setsockopt(zmq.SUBSCRIBE, src.source.topic.encode())
        try:
            sock.connect(src.source.endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            log.error("%s: cannot subscribe to KV events at %s: %s; index stays stale",
                      src.endpoint_id, src.source.endpoint, exc)  # fmt: skip
            return
        try:
            if src.source.replay_endpoint:
                # Catch up on what was published before we subscribed.
                await self.fill_gap(src, 0, None)
            while True:
                frames = await sock.recv_multipart()
                if len(frames) < 2 or len(frames[-2]) != 8:
                    log.warning("%s: malformed KV-event message (%d frames)", src.endpoint_id, len(frames))  # fmt: skip
                    continue
                try:
                    await self.on_message(src, int.from_bytes(frames[-2], "big"), frames[-1])
                except Exception:  # a bug must not end the subscription
                    log.exception("%s: KV-event batch not applied; index stale", src.endpoint_id)
                    src.is_synced = False
                    self._update_stale(src.endpoint_id)
        finally:
            sock.close(0)

    async def on_message(self, src: SourceState, seq: int, payload: bytes) -> None:
        """One live batch (see the module docstring for the rules)."""
        if src.last_seq is not None and seq <= src.last_seq:
            if src.replayed_through is not None and seq <= src.replayed_through:
                return  # already applied from the replay
            log.warning(
                "%s: KV-event seq went back from %d to %d: engine restarted; index cleared",
                src.endpoint_id,
                src.last_seq,
                seq,
            )
            src.num_restarts += 1
            self.index.clear_endpoint(src.endpoint_id)
            src.last_seq = None
            src.is_synced = False
        src.replayed_through = None
        expected = 0 if src.last_seq is None else src.last_seq + 1
        if seq > expected:
            src.num_gaps += 1
            await self.fill_gap(src, expected, seq)
            if src.last_seq is not None and seq <= src.last_seq:
                self._update_stale(src.endpoint_id)
                return  # the replay covered it
        elif src.last_seq is None:
            src.is_synced = True  # seq 0: the engine's whole history follows
        self.apply(src, seq, payload)
        self._update_stale(src.endpoint_id)

    async def fill_gap(self, src: SourceState, start: int, upto: int | None) -> None:
        """Replay from `start`, apply what is new; `upto`: the live seq that revealed
        the gap (None: catching up at subscription).

        The replay covers the gap when it is contiguous from `start` on, or from an
        `AllBlocksCleared` in it (the engine's cache was reset there, so nothing before
        matters: a long-running engine keeps only its last batches, not seq 0 on),
        and reaches the live seq.

        Batches are applied in order up to the first hole in a replay, and the rest is
        asked for again from the hole: vLLM's replay ROUTER drops frames when its send
        queue is full (1,000 by default), so a replay of a long history can come back
        with holes even into an unbounded receive queue (seen against real vLLM:
        0..1280 with a hole, the index stale for the rest of the run), or cut short,
        its end marker lost (seen: 3,000 of a long-running engine's 10,000 batches,
        then silence). A replay that ends before the live seq counts as a hole there.
        Retries go on while each brings new batches (at most `MAX_REPLAYS` replays);
        `REPLAY_ATTEMPTS` - 1 that bring nothing end it. A hole that stays leaves the
        index stale until the engine's next cache reset, as any gap that cannot be
        replayed."""
        batches = await self.replay(src, start)
        if batches is None:
            src.num_replays_failed += 1
            if upto is not None:
                log.warning(
                    "%s: KV events %d..%d missed and not replayable; index stale",
                    src.endpoint_id,
                    start,
                    upto - 1,
                )
                src.is_synced = False
            self._update_stale(src.endpoint_id)
            return
        seqs: list[int] = []  # contiguous after the first
        cleared_at: int | None = None  # index in `seqs` of the last reset applied
        hole: int | None = None
        num_replays, num_stalled = 1, 0
        while True:
            hole = None
            num_seen = len(seqs)
            for seq, payload in batches:
                if seqs and seq <= seqs[-1]:
                    continue  # already seen in an earlier replay
                if seqs and seq != seqs[-1] + 1:
                    hole = seqs[-1] + 1
                    break
                if src.last_seq is None or seq > src.last_seq:
                    if self.apply(src, seq, payload):
                        cleared_at = len(seqs)
                    src.replayed_through = seq
                seqs.append(seq)
            if hole is None and upto is not None and seqs and seqs[-1] < upto - 1:
                hole = seqs[-1] + 1  # cut short of the live batch that revealed the gap
            num_stalled = num_stalled + 1 if len(seqs) == num_seen else 0
            if hole is None or num_stalled >= REPLAY_ATTEMPTS - 1 or num_replays >= MAX_REPLAYS:
                break
            log.info("%s: KV-event replay lost batches from %d; asking again", src.endpoint_id, hole)  # fmt: skip
            src.num_replay_retries += 1
            num_replays += 1
            more = await self.replay(src, hole)
            if more is None:
                break
            batches = more
        from_i = 0 if seqs and seqs[0] <= start else cleared_at
        covers = (not seqs and upto is None) or (
            from_i is not None and hole is None and (upto is None or seqs[-1] >= upto - 1)
        )
        if not covers:
            src.num_replays_failed += 1
            log.warning(
                "%s: KV-event replay from %d incomplete (got %s%s); index stale",
                src.endpoint_id,
                start,
                f"{seqs[0]}..{seqs[-1]}" if seqs else "nothing",
                f", missing {hole} on" if hole is not None else "",
            )
            src.is_synced = False
        elif start == 0 or cleared_at is not None:
            src.is_synced = True
        self._update_stale(src.endpoint_id)

    def apply(self, src: SourceState, seq: int, payload: bytes) -> bool:
        """Decode and apply one batch; `seq` becomes the source's last. Returns whether
        the batch reset the engine's cache (`AllBlocksCleared`)."""
        src.last_seq = seq
        try:
            batch = decode_batch(payload)
        except KvEventDecodeError as exc:
            src.num_decode_errors += 1
            src.is_synced = False
            log.warning("%s: KV-event batch %d undecodable (%s); index stale", src.endpoint_id, seq, exc)  # fmt: skip
            return False
        self.index.apply(src.endpoint_id, batch)
        src.num_batches += 1
        if self.first_block_check is not None:
            try:
                self.first_block_check.check_batch(src.endpoint_id, batch)
            except Exception:  # a diagnostic: must never cost the index its sync
                log.exception("%s: KV-event hash check failed to run", src.endpoint_id)
        is_cleared = False
        for ev in batch.events:
            if isinstance(ev, BlockStored) and ev.block_size > 0:
                self._endpoints[src.endpoint_id].block_size = ev.block_size
            elif isinstance(ev, AllBlocksCleared):
                src.is_synced = True  # the cache restarts empty: nothing before matters
                is_cleared = True
        if self._on_batch is not None:
            self._on_batch(src.endpoint_id)
        return is_cleared

    async def _replay(self, src: SourceState, start: int) -> list[tuple[int, bytes]] | None:
        """The engine's kept batches from `start` on; None when there is no replay
        socket, or it went `kv_replay_timeout_s` without sending a frame (a long
        replay that keeps coming is not cut off) before sending any: after some, what
        came (the end marker was lost; `fill_gap` asks for the rest).

        vLLM's ROUTER sends its whole buffer (10,000 batches by default) at once and
        drops frames a slow reader's queue has no room for: the queue here is
        unbounded."""
        if not src.source.replay_endpoint or self._ctx is None:
            return None
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 0)  # no limit: the sender drops what does not fit
        sock.connect(src.source.replay_endpoint)
        out: list[tuple[int, bytes]] = []
        idle_s = self.config.kv_replay_timeout_s
        try:
            await sock.send_multipart((b"", start.to_bytes(8, "big")))
            while True:
                # Frames already queued come back without a loop turn (zmq.asyncio
                # tries a non-blocking read first); the timeout bounds the waits.
                async with asyncio.timeout(idle_s):
                    frames = await sock.recv_multipart()
                if len(frames) < 2 or len(frames[-2]) != 8:
                    continue
                seq = int.from_bytes(frames[-2], "big", signed=True)
                if seq == END_OF_REPLAY:
                    return out
                out.append((seq, frames[-1]))
        except TimeoutError:
            log.warning("%s: KV-event replay from %s: nothing for %g s after %d batches",
                        src.endpoint_id, src.source.replay_endpoint, idle_s, len(out))  # fmt: skip
            return out or None
        finally:
            sock.close(0)

    def _update_stale(self, endpoint_id: str) -> None:
        ep = self._endpoints[endpoint_id]
        is_stale = not ep.sources or not all(s.is_synced for s in ep.sources)
        if self._stale.get(endpoint_id) == is_stale:
            return
        self._stale[endpoint_id] = is_stale
        self.index.mark_stale(endpoint_id, is_stale)
        if self._on_stale_change is not None:
            self._on_stale_change(endpoint_id, is_stale)
