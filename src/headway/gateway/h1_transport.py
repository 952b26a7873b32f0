"""A lean HTTP/1.1 upstream transport for plain-HTTP engines (vLLM, SGLang, llama.cpp
on the cluster network): one asyncio protocol per keep-alive connection, responses
parsed by `httptools` (llhttp, the parser uvicorn uses), the request head written as
one buffer.

Why not aiohttp's client here: per upstream exchange it builds a `ClientRequest`,
a `ClientResponse`, a `StreamReader`, header multidicts and a connector lease, which
cost more CPU than the rest of the gateway's request path together (see
docs/decisions/0003-upstream-transport.md). HTTPS upstreams (hosted `openai` pools)
still go through aiohttp (`SchemeTransport` picks per URL).

Invariants:
* A connection carries one exchange at a time; it returns to the idle pool only when
  its response was read to the end, the upstream allowed keep-alive, and the caller
  called `finish(is_complete=True)`. Any other end closes it, so the upstream sees
  the disconnect and aborts the request (cancellation reaches the engine).
* An idle connection is never older than `idle_timeout_s` when reused (engines close
  idle keep-alive connections after ~5 s; reusing one as it closes would fail the
  request). A reused connection that the upstream closes before sending a single
  response byte is retried once on a fresh connection (it was closed while idle:
  the upstream never saw the request).
* Reading pauses the socket while more than `_MAX_BUFFERED_BYTES` wait unread, so a
  slow client cannot make the gateway buffer an upstream's whole stream.
* While `push` runs, body pieces go to its sink in the protocol callback and are never
  buffered; they are buffered again from `stop_push` on (or when `push` returns), so
  no piece is lost or reordered between the two ways of reading.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from headway.gateway.transport import (
    AiohttpTransport,
    UpstreamConnectError,
    UpstreamReadError,
    UpstreamResponse,
)

_MAX_BUFFERED_BYTES = 256 * 1024
_DEFAULT_IDLE_TIMEOUT_S = 4.0  # below uvicorn's (vLLM's) 5 s keep-alive timeout


class _Target:
    """A URL split once: where to connect and the request line's target."""

    __slots__ = ("host", "host_header", "key", "port", "target")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"not a plain http:// URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.key = (self.host, self.port)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        self.target = target.encode("ascii")
        self.host_header = (parts.netloc.rsplit("@", 1)[-1]).encode("ascii")


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an upstream and the exchange it carries."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: tuple[str, int]) -> None:
        self._loop = loop
        self.key = key  # the idle pool it returns to
        self.transport: asyncio.Transport | None = None
        self.is_closed = False
        self.idle_since = 0.0
        self.num_exchanges = 0
        # One parser per connection: llhttp parses a keep-alive connection's
        # responses one after another (a parse error closes the connection).
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self._header_pairs: list[tuple[str, str]] = []
        self._has_length = False  # Content-Length or chunked: the body's end is known
        self.status = 0
        self.is_keep_alive = False
        self.is_message_complete = False
        self.num_bytes_received = 0
        self.is_in_exchange = False
        self._buffer: list[bytes] = []
        self._num_buffered = 0
        self._is_paused = False
        self._error: str | None = None
        self._headers_future: asyncio.Future[None] | None = None
        self._data_waiter: asyncio.Future[None] | None = None
        self._sink: Callable[[bytes], None] | None = None  # set while `push` runs

    # ---------------------------------------------------------------- protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # each request head goes out at once
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self.is_in_exchange or self.is_message_complete:
            # Bytes nobody asked for (while idle, or after the response): the
            # connection's state is unknown; never reuse it.
            self.close()
            return
        self.num_bytes_received += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("the upstream switched protocols")
        except httptools.HttpParserError as exc:
            self._fail(f"malformed HTTP response: {exc}")

    def eof_received(self) -> bool | None:
        return False  # close the transport: no half-open connections

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_closed = True
        if exc is None and self.status and not self.is_message_complete and not self._has_length:
            # A body delimited by the end of the connection (no length, not chunked).
            self.is_keep_alive = False
            self.on_message_complete()
            return
        if not self.is_message_complete:
            self._fail(str(exc) if exc else "the upstream closed the connection")

    def pause_writing(self) -> None:  # request bodies are bounded; nothing to do
        pass

    def resume_writing(self) -> None:
        pass

    # ------------------------------------------------------- parser callbacks

    def on_status(self, status: bytes) -> None:
        pass

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1")
        lower = key.lower()
        if lower == "content-length" or (
            lower == "transfer-encoding" and b"chunked" in value.lower()
        ):
            self._has_length = True
        self._header_pairs.append((key, value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if 100 <= self.status < 200:  # an interim response: wait for the real one
            self._header_pairs = []
            self.status = 0
            return
        if self.status in (204, 304):
            self._has_length = True
        self.is_keep_alive = self._parser.should_keep_alive()
        future = self._headers_future
        if future is not None and not future.done():
            future.set_result(None)

    def on_body(self, body: bytes) -> None:
        sink = self._sink
        if sink is not None:
            sink(body)
            return
        self._buffer.append(body)
        self._num_buffered += len(body)
        if self._num_buffered > _MAX_BUFFERED_BYTES and not self._is_paused:
            assert self.transport is not None
            self.transport.pause_reading()
            self._is_paused = True
        self._wake()

    def on_message_complete(self) -> None:
        if self.status == 0:  # the end of an interim response
            return
        self.is_message_complete = True
        self.is_keep_alive = self.is_keep_alive and self._parser.should_keep_alive()
        self._wake()

    # ---------------------------------------------------------------- helpers

    def _fail(self, reason: str) -> None:
        if self._error is None:
            self._error = reason
        future = self._headers_future
        if future is not None and not future.done():
            future.set_exception(UpstreamConnectError(reason))
        self._wake()
        self.close()

    def _wake(self) -> None:
        waiter = self._data_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        self.is_closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.is_closed = True
        if self.transport is not None:
            self.transport.abort()

    # --------------------------------------------------------------- exchange

    async def send(self, head: bytes, body: bytes) -> None:
        """Write the request and wait for the response's head."""
        assert self.transport is not None
        self.num_exchanges += 1
        self.is_in_exchange = True
        future = self._headers_future = self._loop.create_future()
        self.transport.write(head + body if len(body) < 16384 else head)
        if len(body) >= 16384:
            self.transport.write(body)
        try:
            await future
        finally:
            self._headers_future = None

    def headers(self) -> CIMultiDictProxy[str]:
        return CIMultiDictProxy(CIMultiDict(self._header_pairs))

    async def read_chunk(self) -> bytes:
        while True:
            if self._buffer:
                data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
                self._buffer = []
                self._num_buffered = 0
                if self._is_paused and self.transport is not None:
                    self._is_paused = False
                    self.transport.resume_reading()
                return data
            if self.is_message_complete:
                return b""
            if self._error is not None:
                raise UpstreamReadError(self._error)
            waiter = self._data_waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._data_waiter = None

    async def push(self, sink: Callable[[bytes], None]) -> None:
        if self._buffer or self.is_message_complete or self._error is not None:
            return
        self._sink = sink
        try:
            while self._sink is not None and not self.is_message_complete and self._error is None:
                waiter = self._data_waiter = self._loop.create_future()
                try:
                    await waiter
                finally:
                    self._data_waiter = None
        finally:
            self._sink = None

    def stop_push(self) -> None:
        if self._sink is not None:
            self._sink = None
            self._wake()

    def prepare_reuse(self) -> None:
        self._reset()
        self.idle_since = time.monotonic()


class _H1Response:
    """One exchange's response; `finish` returns or closes its connection."""

    __slots__ = ("_conn", "_headers", "_pool", "status")

    def __init__(self, conn: _Connection, pool: H1Transport) -> None:
        self._conn = conn
        self._pool = pool
        self.status = conn.status
        self._headers: CIMultiDictProxy[str] | None = None

    @property
    def headers(self) -> Mapping[str, str]:
        if self._headers is None:
            self._headers = self._conn.headers()
        return self._headers

    async def read_chunk(self) -> bytes:
        return await self._conn.read_chunk()

    async def push(self, sink: Callable[[bytes], None]) -> None:
        await self._conn.push(sink)

    def stop_push(self) -> None:
        self._conn.stop_push()

    async def read_all(self, limit_bytes: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        while chunk := await self._conn.read_chunk():
            size += len(chunk)
            if size > limit_bytes:
                raise UpstreamReadError(f"response body larger than {limit_bytes} bytes")
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def finish(self, *, is_complete: bool) -> None:
        self._pool._finish(self._conn, is_complete=is_complete)


class H1Transport:
    """Keep-alive HTTP/1.1 to plain-http upstreams; see the module docstring."""

    def __init__(
        self,
        *,
        connect_timeout_s: float | None,
        idle_timeout_s: float = _DEFAULT_IDLE_TIMEOUT_S,
    ) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._targets: dict[str, _Target] = {}
        self._busy: set[_Connection] = set()

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            target = _Target(url)
            if len(self._targets) > 4096:  # URLs are endpoint + route: few; stay bounded
                self._targets.clear()
            self._targets[url] = target
        return target

    def _idle_connection(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        oldest_ok = time.monotonic() - self._idle_timeout_s
        while idle:
            conn = idle.pop()  # the most recently used: warmest, least likely closed
            if not conn.is_closed and conn.idle_since >= oldest_ok:
                return conn
            conn.close()
        return None

    async def _connect(self, target: _Target) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, target.key), target.host, target.port
                )
        except TimeoutError:
            raise UpstreamConnectError(
                f"connect timed out after {self._connect_timeout_s:g} s"
            ) from None
        except OSError as exc:
            raise UpstreamConnectError(str(exc) or type(exc).__name__) from None
        return conn

    async def open(self, url: str, body: bytes, headers: Mapping[str, str]) -> _H1Response:
        target = self._target(url)
        head = _request_head(target, headers, len(body))
        conn = self._idle_connection(target.key)
        is_reused = conn is not None
        while True:
            if conn is None:
                conn = await self._connect(target)
            self._busy.add(conn)
            try:
                await conn.send(head, body)
            except UpstreamConnectError:
                self._busy.discard(conn)
                conn.abort()
                if is_reused and conn.num_bytes_received == 0:
                    # Closed while idle, before it could have read the request.
                    conn, is_reused = None, False
                    continue
                raise
            except BaseException:  # cancelled (deadline, client gone): abort upstream
                self._busy.discard(conn)
                conn.abort()
                raise
            return _H1Response(conn, self)

    def _finish(self, conn: _Connection, *, is_complete: bool) -> None:
        self._busy.discard(conn)
        if (
            is_complete
            and conn.is_message_complete
            and conn.is_keep_alive
            and not conn.is_closed
            and conn.transport is not None
            and not conn.transport.is_closing()
        ):
            conn.prepare_reuse()
            self._idle.setdefault(conn.key, []).append(conn)
            return
        conn.abort()

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.abort()
        self._busy.clear()


def _request_head(target: _Target, headers: Mapping[str, str], num_body_bytes: int) -> bytes:
    lines = [
        b"POST ",
        target.target,
        b" HTTP/1.1\r\nHost: ",
        target.host_header,
        b"\r\nContent-Length: ",
        str(num_body_bytes).encode(),
        b"\r\n",
    ]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise UpstreamConnectError(f"header {name!r} holds a line break")
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    lines.append(b"\r\n")
    return b"".join(lines)


class SchemeTransport:
    """The gateway's default transport: plain-http upstreams through `H1Transport`,
    any other scheme (https: hosted providers) through aiohttp's client."""

    def __init__(self, *, connect_timeout_s: float | None) -> None:
        self.plain = H1Transport(connect_timeout_s=connect_timeout_s)
        self.other = AiohttpTransport(connect_timeout_s=connect_timeout_s)

    def open(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> Coroutine[Any, Any, UpstreamResponse]:
        # The chosen transport's coroutine itself (not awaited here): one coroutine less
        # on the request's await chain.
        if url.startswith("http://"):
            return self.plain.open(url, body, headers)
        return self.other.open(url, body, headers)

    async def close(self) -> None:
        await self.plain.close()
        await self.other.close()
