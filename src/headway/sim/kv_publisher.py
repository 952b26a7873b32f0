"""Publishes a replica's KV events over ZMQ the way vLLM's ZmqEventPublisher does.

* PUB socket: multipart ``[topic, seq (8-byte big-endian), payload]``, seq counting
  from 0 at start. ``tcp://*:P`` binds; ``tcp://HOST:P`` connects (the subscriber
  binds and can collect many engines), as vLLM does.
* Replay: a ROUTER socket. A DEALER sends ``[b"", start_seq (8 bytes)]``; each kept
  batch with seq >= start_seq is answered ``[b"", topic, seq, payload]``, then the end
  marker ``[b"", b"", -1 (signed 8 bytes), b""]`` (vLLM 0.32; with the older array
  encoding, as vLLM 0.23: ``[b"", seq, payload]`` and ``[b"", -1, b""]``). Malformed
  requests get no answer. Only the last `buffer_steps` batches are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass

import zmq
import zmq.asyncio

from headway.core.kv_events import EventBatch, WireEncoding, encode_batch

log = logging.getLogger(__name__)

END_OF_REPLAY_SEQ = (-1).to_bytes(8, "big", signed=True)


@dataclass(frozen=True)
class KvEventsConfig:
    """vLLM's `--kv-events-config`, for one replica (ports already offset)."""

    endpoint: str
    replay_endpoint: str | None = None
    topic: str = ""
    encoding: WireEncoding = WireEncoding.MAP
    buffer_steps: int = 10_000
    hwm: int = 100_000


def _ephemeral(endpoint: str) -> str:
    # ZMQ spells "any free port" as "*", not 0.
    return endpoint[:-2] + ":*" if endpoint.endswith(":0") else endpoint


def _attach(sock: zmq.asyncio.Socket, endpoint: str) -> str:
    """Bind wildcard-host endpoints and connect concrete ones, as vLLM does; returns
    the endpoint as bound (with the real port) or as connected."""
    host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0]
    if host in ("*", "0.0.0.0") or endpoint.startswith("ipc://") or endpoint.endswith(":0"):
        sock.bind(_ephemeral(endpoint))
        bound = sock.getsockopt(zmq.LAST_ENDPOINT)
        return bound.decode() if isinstance(bound, bytes) else str(bound)
    sock.connect(endpoint)
    return endpoint


class KvEventPublisher:
    """PUB + replay sockets for one replica."""

    def __init__(self, config: KvEventsConfig, ctx: zmq.asyncio.Context) -> None:
        self.config = config
        self._topic = config.topic.encode()
        self._seq = 0
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self._pub = ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, config.hwm)
        self._pub.setsockopt(zmq.LINGER, 0)
        self.bound_endpoint = _attach(self._pub, config.endpoint)
        self.bound_replay_endpoint: str | None = None
        self._replay: zmq.asyncio.Socket | None = None
        self._replay_task: asyncio.Task[None] | None = None
        if config.replay_endpoint:
            self._replay = ctx.socket(zmq.ROUTER)
            self._replay.setsockopt(zmq.LINGER, 0)
            self._replay.bind(_ephemeral(config.replay_endpoint))
            bound = self._replay.getsockopt(zmq.LAST_ENDPOINT)
            self.bound_replay_endpoint = bound.decode() if isinstance(bound, bytes) else str(bound)
            self._replay_task = asyncio.get_running_loop().create_task(self._serve_replay())
        self.num_published = 0

    def publish(self, batch: EventBatch) -> None:
        payload = encode_batch(batch, self.config.encoding)
        seq = self._seq
        self._seq += 1
        self._buffer.append((seq, payload))
        frames = (self._topic, seq.to_bytes(8, "big"), payload)
        try:
            self._pub.send_multipart(frames, flags=zmq.NOBLOCK)
            self.num_published += 1
        except zmq.Again:
            log.warning("KV event PUB queue full; batch %d dropped (replayable)", seq)

    async def _serve_replay(self) -> None:
        assert self._replay is not None
        sock = self._replay
        # vLLM 0.32 (map encoding) repeats the topic frame in replies; the array-form
        # releases (<= 0.23) did not.
        head = (b"", self._topic) if self.config.encoding == WireEncoding.MAP else (b"",)
        while True:
            frames = await sock.recv_multipart()
            if len(frames) != 3 or len(frames[2]) != 8:
                log.warning("malformed KV-event replay request ignored (%d frames)", len(frames))
                continue
            client, start = frames[0], int.from_bytes(frames[2], "big")
            for seq, payload in list(self._buffer):
                if seq >= start:
                    await sock.send_multipart((client, *head, seq.to_bytes(8, "big"), payload))
            # The end marker puts an empty frame where the topic (if any) would be.
            await sock.send_multipart((client, *head[:-1], b"", END_OF_REPLAY_SEQ, b""))

    async def close(self) -> None:
        if self._replay_task is not None:
            self._replay_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replay_task
        self._pub.close(0)
        if self._replay is not None:
            self._replay.close(0)
