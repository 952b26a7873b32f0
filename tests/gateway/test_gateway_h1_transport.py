"""The lean HTTP/1.1 upstream transport (gateway/h1_transport.py) against real servers
on 127.0.0.1: aiohttp's server for well-formed exchanges, raw asyncio servers for what
engines and networks do wrong (bodies cut short, EOF-delimited bodies, interim
responses, connections closed while idle, garbage)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from headway.gateway.h1_transport import H1Transport, SchemeTransport
from headway.gateway.transport import UpstreamConnectError, UpstreamReadError

JSON = {"Content-Type": "application/json"}


@dataclass
class AiohttpUpstream:
    url: str
    peers: list[int] = field(default_factory=list)  # client port of each request
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def upstream() -> AsyncIterator[AiohttpUpstream]:
    state = AiohttpUpstream("")

    async def echo(request: web.Request) -> web.Response:
        state.peers.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        body = await request.read()
        return web.Response(body=b"echo:" + body, headers={"X-Seen-Id": request.headers["x-id"]})

    async def stream(request: web.Request) -> web.StreamResponse:
        state.peers.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: 1\n\n")
        try:
            await state.release.wait()  # the second event only when the test says so
            await resp.write(b"data: 2\n\n")
            await resp.write_eof()
        except (asyncio.CancelledError, ConnectionError):
            state.disconnected.set()
            raise
        return resp

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * (2 * 1024 * 1024))

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_post("/stream", stream)
    app.router.add_post("/big", big)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    yield state
    state.release.set()
    await runner.cleanup()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Starts a raw TCP server with the given connection handler; returns its URL."""
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for s in servers:
        s.close()
        await s.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    """One request's head and its Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


async def _expect_ok(url: str, num_requests: int, pause_s: float = 0.0) -> None:
    """`num_requests` requests one after another through one transport, each answered
    "ok" (a pause after each lets the upstream close the idle connection first)."""
    t = H1Transport(connect_timeout_s=5)
    try:
        for _ in range(num_requests):
            resp = await t.open(url + "/x", b"", {})
            assert await resp.read_all(10) == b"ok"
            resp.finish(is_complete=True)
            await asyncio.sleep(pause_s)
    finally:
        await t.close()


async def test_keep_alive_connection_is_reused_and_request_is_well_formed(
    upstream: AiohttpUpstream,
) -> None:
    t = H1Transport(connect_timeout_s=5)
    try:
        for i in range(3):
            resp = await t.open(upstream.url + "/echo", b'{"n": %d}' % i, {**JSON, "x-id": str(i)})
            assert resp.status == 200
            assert resp.headers["x-seen-id"] == str(i)  # case-insensitive lookup
            assert await resp.read_all(1 << 20) == b'echo:{"n": %d}' % i
            resp.finish(is_complete=True)
    finally:
        await t.close()
    assert len(upstream.peers) == 3
    assert len(set(upstream.peers)) == 1, "one keep-alive connection for all three"


async def test_stream_chunks_arrive_as_sent_and_abort_reaches_the_upstream(
    upstream: AiohttpUpstream,
) -> None:
    t = H1Transport(connect_timeout_s=5)
    try:
        resp = await t.open(upstream.url + "/stream", b"{}", JSON)
        assert resp.headers["content-type"] == "text/event-stream"
        # The first event arrives while the upstream still holds the second back.
        assert await asyncio.wait_for(resp.read_chunk(), 5) == b"data: 1\n\n"
        resp.finish(is_complete=False)  # the client went away
        await asyncio.wait_for(upstream.disconnected.wait(), 5)
        # The aborted connection is not reused: the next request opens another.
        resp = await t.open(upstream.url + "/echo", b"a", {"x-id": "1"})
        assert await resp.read_all(100) == b"echo:a"
        resp.finish(is_complete=True)
    finally:
        await t.close()
    assert upstream.peers[0] != upstream.peers[1]


async def test_stream_read_to_its_end(upstream: AiohttpUpstream) -> None:
    t = H1Transport(connect_timeout_s=5)
    try:
        resp = await t.open(upstream.url + "/stream", b"{}", JSON)
        assert await resp.read_chunk() == b"data: 1\n\n"
        upstream.release.set()
        rest = b""
        while chunk := await asyncio.wait_for(resp.read_chunk(), 5):
            rest += chunk
        assert rest == b"data: 2\n\n"
        resp.finish(is_complete=True)
    finally:
        await t.close()


async def test_reading_pauses_while_the_reader_lags(upstream: AiohttpUpstream) -> None:
    t = H1Transport(connect_timeout_s=5)
    try:
        resp = await t.open(upstream.url + "/big", b"", {})
        await asyncio.sleep(0.2)  # the body keeps coming; nobody reads it
        conn = resp._conn  # type: ignore[attr-defined]
        assert conn._is_paused
        assert conn._num_buffered < 2 * 1024 * 1024
        assert len(await resp.read_all(4 << 20)) == 2 * 1024 * 1024
        resp.finish(is_complete=True)
    finally:
        await t.close()


async def test_eof_delimited_body_and_connection_close(
    raw_server: Callable[[Handler], Awaitable[str]],
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nno length, ")
        await writer.drain()
        writer.write(b"ends with the connection")
        writer.close()

    url = await raw_server(handler)
    t = H1Transport(connect_timeout_s=5)
    try:
        resp = await t.open(url + "/x", b"", {})
        assert await resp.read_all(1000) == b"no length, ends with the connection"
        resp.finish(is_complete=True)
        assert not t._idle.get(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    finally:
        await t.close()


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b",
            UpstreamReadError,
            "closed",
            id="body-cut-short",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            UpstreamReadError,
            "closed",
            id="chunked-stream-cut-short",
        ),
        pytest.param(b"", UpstreamConnectError, "closed", id="closed-before-answering"),
        pytest.param(b"SMTP ready\r\n\r\n", UpstreamConnectError, "malformed", id="not-http"),
    ],
)
async def test_broken_upstreams_raise_the_transport_errors(
    raw_server: Callable[[Handler], Awaitable[str]],
    reply: bytes,
    error: type[Exception],
    message: str,
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(reply)
        await writer.drain()
        writer.close()

    url = await raw_server(handler)
    t = H1Transport(connect_timeout_s=5)
    try:
        with pytest.raises(error, match=message):
            resp = await t.open(url + "/x", b"{}", JSON)
            await resp.read_all(1000)
    finally:
        await t.close()


async def test_interim_response_is_skipped(raw_server: Callable[[Handler], Awaitable[str]]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    url = await raw_server(handler)
    t = H1Transport(connect_timeout_s=5)
    try:
        resp = await t.open(url + "/x", b"", {})
        assert resp.status == 201
        assert await resp.read_all(10) == b"ok"
        resp.finish(is_complete=True)
    finally:
        await t.close()


async def test_connection_closed_while_idle_is_replaced_transparently(
    raw_server: Callable[[Handler], Awaitable[str]],
) -> None:
    """An upstream that closes each keep-alive connection right after answering,
    without saying so: the next request must not fail."""
    served: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _read_request(reader)
        except asyncio.IncompleteReadError:
            writer.close()
            return
        served.append(writer.get_extra_info("peername")[1])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    await _expect_ok(await raw_server(handler), num_requests=3, pause_s=0.05)
    assert len(served) == 3 and len(set(served)) == 3


async def test_stale_pooled_connection_is_retried_once_on_a_fresh_one(
    raw_server: Callable[[Handler], Awaitable[str]],
) -> None:
    """The upstream closes a reused connection as the request arrives (its keep-alive
    timer won the race): the request goes out again on a new connection."""
    num_requests_by_conn: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        num_requests_by_conn.append(0)
        i = len(num_requests_by_conn) - 1
        while True:
            try:
                await _read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            num_requests_by_conn[i] += 1
            if num_requests_by_conn[i] == 2:  # the second request on a connection
                writer.transport.abort()
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()

    await _expect_ok(await raw_server(handler), num_requests=2)
    assert num_requests_by_conn == [2, 1]


async def test_idle_connections_expire_before_the_engines_timeout(
    upstream: AiohttpUpstream,
) -> None:
    t = H1Transport(connect_timeout_s=5, idle_timeout_s=0.05)
    try:
        for _ in range(2):
            resp = await t.open(upstream.url + "/echo", b"", {"x-id": "1"})
            await resp.read_all(100)
            resp.finish(is_complete=True)
            await asyncio.sleep(0.1)
    finally:
        await t.close()
    assert upstream.peers[0] != upstream.peers[1]


@pytest.mark.parametrize(
    ("url", "headers", "error"),
    [
        pytest.param("http://127.0.0.1:9/x", {}, "refused|connect", id="refused"),
        pytest.param(None, {"x-evil": "a\r\nInjected: 1"}, "line break", id="header-injection"),
    ],
)
async def test_requests_that_cannot_be_sent(
    upstream: AiohttpUpstream, url: str | None, headers: dict[str, str], error: str
) -> None:
    t = H1Transport(connect_timeout_s=5)
    try:
        with pytest.raises(UpstreamConnectError, match=f"(?i){error}"):
            await t.open(url or upstream.url + "/echo", b"", headers)
    finally:
        await t.close()


async def test_scheme_transport_sends_plain_http_through_h1(upstream: AiohttpUpstream) -> None:
    t = SchemeTransport(connect_timeout_s=5)
    try:
        resp = await t.open(upstream.url + "/echo", b"z", {"x-id": "9"})
        assert await resp.read_all(100) == b"echo:z"
        resp.finish(is_complete=True)
        assert t.plain._idle and not t.other._session  # aiohttp's client never started
    finally:
        await t.close()
