"""The gateway's lean HTTP/1.1 server (gateway/h1_server.py) on 127.0.0.1, driven by
raw sockets (what clients do byte for byte: keep-alive, pipelining, HTTP/1.0,
`Expect`, chunked bodies, garbage, disconnects, slow readers) and by the standard
library's `http.client` (an HTTP implementation we did not write) for responses."""

from __future__ import annotations

import asyncio
import http.client
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from headway.gateway.h1_server import H1Server, HttpRequest

DEADLINE_S = 5.0


@dataclass
class Seen:
    """What the test handler saw."""

    requests: list[tuple[str, str, bytes, bool]] = field(default_factory=list)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    chunks_written: int = 0


def make_handler(seen: Seen) -> Callable[[HttpRequest], Awaitable[None]]:
    async def handler(request: HttpRequest) -> None:
        seen.requests.append(
            (request.method, request.target, request.body, request.is_body_too_large)
        )
        if request.is_body_too_large:
            request.error(413, "too large")
        elif request.path == "/echo":
            request.respond(
                200,
                b"echo:" + request.body,
                {"X-Id": request.headers.get("x-id", "")},
                "text/plain",
            )
        elif request.path == "/stream":
            stream = request.start_stream(200, {"Content-Type": "text/event-stream"})
            for i in range(3):
                await stream.write(b"data: %d\n\n" % i)
            await stream.end()
        elif request.path == "/hold":
            try:
                await seen.release.wait()
            except asyncio.CancelledError:
                seen.cancelled.set()
                raise
            request.respond(200, b"released")
        elif request.path == "/firehose":  # 1 MiB pieces until told to stop
            stream = request.start_stream(200)
            piece = b"x" * (1024 * 1024)
            for _ in range(64):
                await stream.write(piece)
                seen.chunks_written += 1
            await stream.end()
        elif request.path == "/boom":
            raise RuntimeError("handler bug")
        elif request.path == "/silent":
            return  # a handler that forgot to answer
        else:
            request.error(404, "Not Found")

    return handler


@dataclass
class Server:
    server: H1Server
    seen: Seen

    @property
    def port(self) -> int:
        return self.server.port


@pytest.fixture
async def srv() -> AsyncIterator[Server]:
    seen = Seen()
    server = H1Server(make_handler(seen), max_body_bytes=1000, keepalive_timeout_s=0.3)
    await server.start("127.0.0.1", 0)
    try:
        yield Server(server, seen)
    finally:
        seen.release.set()
        await server.close(0.5)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response off a raw connection (Content-Length or chunked body)."""
    async with asyncio.timeout(DEADLINE_S):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += data[:-2]
        else:
            body = await reader.read()
    return status, headers, body


def post(path: str, body: bytes, extra: str = "", version: str = "1.1") -> bytes:
    return (
        f"POST {path} HTTP/{version}\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


async def is_closed_by_server(reader: asyncio.StreamReader) -> bool:
    async with asyncio.timeout(DEADLINE_S):
        try:
            return await reader.read(1) == b""
        except ConnectionResetError:
            return True


async def test_keep_alive_serves_requests_one_after_another(srv: Server) -> None:
    reader, writer = await connect(srv.port)
    for i in range(3):
        writer.write(post("/echo", b"n%d" % i, f"X-Id: {i}\r\n"))
        status, headers, body = await read_response(reader)
        assert (status, body, headers["x-id"]) == (200, b"echo:n%d" % i, str(i))
        assert "connection" not in headers and headers["content-type"] == "text/plain"
        assert "date" in headers
    writer.close()
    assert [r[2] for r in srv.seen.requests] == [b"n0", b"n1", b"n2"]


async def test_pipelined_requests_are_answered_in_order(srv: Server) -> None:
    reader, writer = await connect(srv.port)
    # One write: a held request, then two more behind it.
    writer.write(post("/hold", b"") + post("/echo", b"a") + post("/echo", b"b"))
    await asyncio.sleep(0.1)
    assert len(srv.seen.requests) == 1  # the others wait for the first's response
    srv.seen.release.set()
    answers = [await read_response(reader) for _ in range(3)]
    assert [a[2] for a in answers] == [b"released", b"echo:a", b"echo:b"]
    writer.close()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET /echo HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431),
        (post("/echo", b"{}", "Expect: something\r\n"), 417),
    ],
    ids=["garbage", "bad-content-length", "head-too-large", "expect-other"],
)
async def test_unreadable_requests_get_an_error_and_the_connection_closes(
    srv: Server, raw: bytes, status: int
) -> None:
    reader, writer = await connect(srv.port)
    writer.write(raw)
    got, headers, body = await read_response(reader)
    assert got == status
    assert headers["connection"] == "close"
    assert b'"code":%d' % status in body.replace(b" ", b"")
    assert await is_closed_by_server(reader)
    assert srv.seen.requests == []  # the handler never saw them


async def test_upgrade_is_refused_and_the_connection_closes(srv: Server) -> None:
    reader, writer = await connect(srv.port)
    writer.write(
        b"POST /echo HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Length: 1\r\n\r\nz\x81\x05hello"
    )
    status, headers, body = await read_response(reader)
    assert (status, headers["connection"]) == (400, "close")
    assert b"upgrades are not supported" in body
    assert await is_closed_by_server(reader)
    assert srv.seen.requests == []


async def test_expect_continue_gets_100_before_the_body_is_sent(srv: Server) -> None:
    reader, writer = await connect(srv.port)
    writer.write(b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    async with asyncio.timeout(DEADLINE_S):
        interim = await reader.readuntil(b"\r\n\r\n")
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(b"ok")
    status, _, body = await read_response(reader)
    assert (status, body) == (200, b"echo:ok")
    writer.close()


@pytest.mark.parametrize(
    ("raw", "seen_body"),
    [
        (post("/echo", b"x" * 5000), b""),  # Content-Length over the limit: body not read
        (
            b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"200\r\n" + b"y" * 512 + b"\r\n" for _ in range(4))
            + b"0\r\n\r\n",
            b"",
        ),  # a chunked body that grows over it
    ],
    ids=["content-length", "chunked"],
)
async def test_body_over_the_limit_reaches_the_handler_flagged_and_the_connection_closes(
    srv: Server, raw: bytes, seen_body: bytes
) -> None:
    reader, writer = await connect(srv.port)
    writer.write(raw)
    status, headers, _ = await read_response(reader)
    assert (status, headers["connection"]) == (413, "close")
    assert srv.seen.requests == [("POST", "/echo", seen_body, True)]
    assert await is_closed_by_server(reader)


async def test_chunked_request_body_is_joined(srv: Server) -> None:
    reader, writer = await connect(srv.port)
    writer.write(
        b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    status, _, body = await read_response(reader)
    assert (status, body) == (200, b"echo:abcde")
    writer.close()


async def test_streamed_response_reads_back_with_http_client(srv: Server) -> None:
    def fetch() -> tuple[int, str | None, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=DEADLINE_S)
        try:
            conn.request("POST", "/stream", body=b"{}")
            resp = conn.getresponse()
            return resp.status, resp.getheader("Transfer-Encoding"), resp.read()
        finally:
            conn.close()

    status, encoding, body = await asyncio.to_thread(fetch)
    assert (status, encoding) == (200, "chunked")
    assert body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


@pytest.mark.parametrize("keep_alive", [False, True], ids=["plain", "asks-keep-alive"])
@pytest.mark.parametrize("path", ["/echo", "/stream"])
async def test_http_10_client_gets_an_unframed_answer_and_a_close(
    srv: Server, path: str, keep_alive: bool
) -> None:
    reader, writer = await connect(srv.port)
    extra = "Connection: keep-alive\r\n" if keep_alive else ""
    writer.write(post(path, b"q", extra, version="1.0"))
    status, headers, body = await read_response(reader)
    assert status == 200 and headers["connection"] == "close"
    assert "transfer-encoding" not in headers
    assert body == (b"echo:q" if path == "/echo" else b"data: 0\n\ndata: 1\n\ndata: 2\n\n")
    assert await is_closed_by_server(reader)


async def test_client_disconnect_cancels_its_request(srv: Server) -> None:
    _, writer = await connect(srv.port)
    writer.write(post("/hold", b""))
    async with asyncio.timeout(DEADLINE_S):
        while not srv.seen.requests:
            await asyncio.sleep(0.005)
    writer.close()
    async with asyncio.timeout(1.0):
        await srv.seen.cancelled.wait()


async def test_request_cancelled_by_the_server_closes_without_an_answer(srv: Server) -> None:
    reader, writer = await connect(srv.port)
    writer.write(post("/hold", b""))
    async with asyncio.timeout(DEADLINE_S):
        while not srv.seen.requests:
            await asyncio.sleep(0.005)
    (conn,) = srv.server.connections
    assert conn._task is not None
    conn._task.cancel()  # what a drain does to requests still running at its deadline
    async with asyncio.timeout(DEADLINE_S):
        assert await reader.read() == b""  # no 500: the connection just ends
    assert srv.seen.cancelled.is_set()
    writer.close()


async def test_slow_reader_pauses_the_stream(srv: Server) -> None:
    sock = socket.create_connection(("127.0.0.1", srv.port))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(post("/firehose", b""))
        await asyncio.sleep(0.3)
        # Not reading: the server's writes wait long before its 64 MiB are out.
        assert 0 < srv.seen.chunks_written < 32
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        total = 0
        async with asyncio.timeout(20):
            while True:
                data = await loop.sock_recv(sock, 1 << 20)
                total += len(data)
                if data.endswith(b"0\r\n\r\n") or not data:
                    break
        assert srv.seen.chunks_written == 64
        assert total > 64 * 1024 * 1024
    finally:
        sock.close()


@pytest.mark.parametrize("path", ["/boom", "/silent"])
async def test_handler_failure_is_a_500_and_the_connection_closes(srv: Server, path: str) -> None:
    reader, writer = await connect(srv.port)
    writer.write(post(path, b""))
    status, headers, body = await read_response(reader)
    assert status == 500 and b"internal gateway error" in body
    assert headers["connection"] == "close"
    assert await is_closed_by_server(reader)


async def test_idle_keep_alive_connection_closes_after_the_timeout(srv: Server) -> None:
    reader, writer = await connect(srv.port)
    writer.write(post("/echo", b"x"))
    assert (await read_response(reader))[0] == 200
    # keepalive_timeout_s=0.3; the sweep runs every 0.15 s.
    async with asyncio.timeout(2.0):
        assert await reader.read(1) == b""


async def test_stop_accepting_closes_idle_connections_and_finishes_running_ones(
    srv: Server,
) -> None:
    idle_reader, idle_writer = await connect(srv.port)
    idle_writer.write(post("/echo", b"x"))
    assert (await read_response(idle_reader))[0] == 200
    reader, writer = await connect(srv.port)
    writer.write(post("/hold", b""))
    async with asyncio.timeout(DEADLINE_S):
        while len(srv.seen.requests) < 2:
            await asyncio.sleep(0.005)
    srv.server.stop_accepting()
    assert await is_closed_by_server(idle_reader)
    with pytest.raises(OSError):
        await connect(srv.port)
    srv.seen.release.set()
    status, headers, body = await read_response(reader)
    assert (status, body, headers["connection"]) == (200, b"released", "close")
    assert await is_closed_by_server(reader)
