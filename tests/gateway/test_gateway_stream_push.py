"""The streaming relay's push path (`_SseRelay.on_pushed`: pieces written from the
upstream connection's protocol callback) against a real upstream that paces its
events, and a raw-socket client: every byte arrives, in order, whether the client keeps
up or not; a client that stops reading makes the relay fall back to reading and
draining, then pushing again; a client that leaves mid-push stops the upstream."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from gateway_harness import InProcessGateway, ThreadedUpstream, pool

from headway.gateway import server as gateway_server

DONE = b"data: [DONE]\n\n"


def event(i: int, pad_bytes: int = 0) -> bytes:
    return b'data: {"choices":[{"index":0,"delta":{"content":"t%d%s"}}]}\n\n' % (
        i,
        b"x" * pad_bytes,
    )


def expected_body(num_events: int, pad_bytes: int) -> bytes:
    return b"".join(event(i, pad_bytes) for i in range(num_events)) + DONE


class PacedUpstream(ThreadedUpstream):
    """Streams `n` events (`pad` bytes of padding each), `gap_s` apart after the first
    (so the relay is pushing by then), then `[DONE]`; notes streams that broke off."""

    def __init__(self) -> None:
        super().__init__()
        self.num_broken = 0
        self.num_complete = 0
        self.num_written = 0  # events written by the latest stream

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        data = json.loads(await request.read())
        n, pad, gap_s = data["n"], data["pad"], data["gap_s"]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        self.num_written = 0
        try:
            for i in range(n):
                await resp.write(event(i, pad))
                self.num_written = i + 1
                if i == 0 or gap_s:
                    await asyncio.sleep(gap_s or 0.05)
            await resp.write(DONE)
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            self.num_broken += 1
            raise
        self.num_complete += 1
        return resp

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._handle)


@pytest.fixture(scope="module")
def upstream() -> Iterator[PacedUpstream]:
    u = PacedUpstream().start()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def gateway(upstream: PacedUpstream) -> Iterator[InProcessGateway]:
    gw = InProcessGateway({"pools": [pool("m", [upstream.url])]}).start()
    yield gw
    gw.stop()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often the relay pushed a piece and drained the client (the gateway runs in
    this process)."""
    counts: Counter[str] = Counter()

    def counting(name: str) -> Callable[..., Any]:
        original = getattr(gateway_server._SseRelay, name)

        def wrapper(self: Any, *args: Any) -> Any:
            counts[name] += 1
            return original(self, *args)

        return wrapper

    monkeypatch.setattr(gateway_server._SseRelay, "on_pushed", counting("on_pushed"))
    monkeypatch.setattr(gateway_server._SseRelay, "drain", counting("drain"))
    return counts


def request_bytes(n: int, pad_bytes: int, gap_s: float) -> bytes:
    body = json.dumps(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            # Asked by the client: the gateway passes the stream through untouched.
            "stream_options": {"include_usage": True},
            "n": n,
            "pad": pad_bytes,
            "gap_s": gap_s,
        }
    ).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    )


def dechunk(raw: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 response."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:80]
    out = bytearray()
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out += rest[:size]
        rest = rest[size + 2 :]


def stream(
    gw: InProcessGateway,
    n: int,
    pad_bytes: int,
    gap_s: float,
    *,
    rcvbuf_bytes: int | None = None,
    before_reading: Callable[[], None] | None = None,
) -> bytes:
    """Send one streamed request on a raw socket; read everything (after
    `before_reading` returns) until the server closes."""
    port = int(gw.url.rsplit(":", 1)[1])
    sock = socket.socket()
    try:
        if rcvbuf_bytes is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf_bytes)
        sock.settimeout(20)
        sock.connect(("127.0.0.1", port))
        sock.sendall(request_bytes(n, pad_bytes, gap_s))
        if before_reading is not None:
            before_reading()
        parts = []
        while data := sock.recv(1 << 16):
            parts.append(data)
        return b"".join(parts)
    finally:
        sock.close()


def wait_until_held_back(upstream: PacedUpstream, still_s: float = 0.3) -> int:
    """Until the upstream has written nothing more for `still_s` (at most 10 s): the
    backpressure of a client that does not read has reached it. Its events written."""
    deadline = time.monotonic() + 10
    last, last_change_at = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_written = upstream.num_written
        if now_written != last:
            last, last_change_at = now_written, time.monotonic()
        elif time.monotonic() - last_change_at >= still_s:
            break
        time.sleep(0.02)
    return last


def test_paced_stream_is_pushed_and_arrives_whole(
    gateway: InProcessGateway, calls: Counter[str]
) -> None:
    body = dechunk(stream(gateway, n=30, pad_bytes=0, gap_s=0.01))
    assert body == expected_body(30, 0)
    # The first event is read (the response starts with it); the rest, paced, are
    # pushed one by one ([DONE] may come in the last event's read).
    assert calls["on_pushed"] >= 25
    assert calls["drain"] == 0


def test_client_that_stops_reading_gets_every_byte_after_draining(
    gateway: InProcessGateway, upstream: PacedUpstream, calls: Counter[str]
) -> None:
    # 200 events of ~64 KiB after the first, sent back to back, to a client with a
    # small receive buffer that reads nothing until the upstream is held back: the
    # client's socket fills, the relay stops pushing, the upstream connection's
    # buffer fills and pauses reading; then the client reads, the relay drains and
    # goes on, and every byte arrives in order.
    n, pad = 200, 64 * 1024
    held_back_at: list[int] = []
    raw = stream(
        gateway,
        n=n,
        pad_bytes=pad,
        gap_s=0.0,
        rcvbuf_bytes=32 * 1024,
        before_reading=lambda: held_back_at.append(wait_until_held_back(upstream)),
    )
    assert dechunk(raw) == expected_body(n, pad)
    assert 0 < held_back_at[0] < n  # the upstream waited for the client
    assert calls["on_pushed"] >= 1
    assert calls["drain"] >= 1


def test_client_gone_mid_push_stops_the_upstream(
    gateway: InProcessGateway, upstream: PacedUpstream
) -> None:
    port = int(gateway.url.rsplit(":", 1)[1])
    broken_before = upstream.num_broken
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request_bytes(n=400, pad_bytes=0, gap_s=0.01))
        seen = b""
        while b'"t5"' not in seen:  # well into the pushed part of the stream
            data = sock.recv(1 << 16)
            assert data, "the stream ended early"
            seen += data
    deadline = time.monotonic() + 5
    while upstream.num_broken == broken_before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.num_broken == broken_before + 1
    assert gateway.num_in_flight() == 0
