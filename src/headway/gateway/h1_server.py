"""A lean HTTP/1.1 server for the gateway's client-facing port: one `asyncio.Protocol`
per connection, requests parsed by `httptools` (llhttp, the parser uvicorn uses),
each request handled in a task of its own, responses written as one buffer (whole
bodies) or chunk by chunk (streams, chunked transfer encoding).

Why not aiohttp's server here: per request it builds a `BaseRequest`, a payload
`StreamReader`, a `Response` with its header multidict and a `StreamWriter`, and runs
the request through several coroutine layers, about 45% more CPU per plain completion
than the rest of the relay's HTTP work together (docs/decisions/0004-front-server.md).
The admin port, which is not on the request path, stays on aiohttp.

Invariants:
* One request per connection is handled at a time, in arrival order; requests a
  client pipelines behind it wait (parsed) until its response has ended. Reading
  never pauses while a request is handled, so a client that disconnects is noticed
  at once: `connection_lost` cancels the request's task unless its response has
  ended (cancellation then reaches the upstream, like aiohttp's
  `handler_cancellation`). Only a client that pipelines more than
  `_MAX_QUEUED_REQUESTS` requests has its reading paused.
* A body is handed to the handler whole, or not at all: a body over `max_body_bytes`
  (by `Content-Length` before any of it is read, or as a chunked body grows) reaches
  the handler as `is_body_too_large` with an empty body, and the connection closes
  after the response, so the rest of the body is never read.
* A connection is reused only when the request allowed keep-alive, its response
  ended, and the server is not stopping; otherwise it closes after the response
  (the bytes already written are flushed first). Malformed requests get a 400,
  oversized heads a 431, `Expect` values other than `100-continue` a 417, and the
  connection closes.
* Writes honour the transport's flow control: a stream's `write` waits while the
  client reads slower than the upstream produces.
* Idle keep-alive connections, and connections that started a request but did not
  finish sending it, close after `keepalive_timeout_s` (one sweep timer for the
  server, not a timer per request).
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import http
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from headway.openai_errors import error_body

log = logging.getLogger(__name__)

_MAX_QUEUED_REQUESTS = 8
_DEFAULT_KEEPALIVE_TIMEOUT_S = 75.0  # aiohttp's and nginx's default
_DEFAULT_MAX_HEAD_BYTES = 64 * 1024
_JSON = "application/json"
# How long a connection whose request body was refused is read (and discarded) after
# the answer, before it closes.
_LINGER_S = 2.0


class HttpRequest:
    """One request as the server read it, and the way to answer it: `respond` for a
    whole response, `start_stream` for one written piece by piece. Header names are
    case-insensitive; `path` is the target without its query string."""

    __slots__ = (
        "_conn",
        "body",
        "headers",
        "is_body_too_large",
        "is_keep_alive",
        "method",
        "path",
        "response_status",
        "server_error",
        "state",
        "target",
        "version",
    )

    def __init__(
        self,
        conn: _Connection,
        method: str,
        target: str,
        version: str,
        headers: CIMultiDictProxy[str],
        is_keep_alive: bool,
    ) -> None:
        self._conn = conn
        self.method = method
        self.target = target
        self.path = target.split("?", 1)[0]
        self.version = version
        self.headers = headers
        self.is_keep_alive = is_keep_alive
        self.body = b""
        self.is_body_too_large = False
        self.response_status: int | None = None  # set once the response has begun
        self.state = _NOT_STARTED
        # An error the server answers itself in this request's turn (e.g. 417).
        self.server_error: tuple[int, str] | None = None

    @property
    def is_response_started(self) -> bool:
        return self.state != _NOT_STARTED

    @property
    def is_response_ended(self) -> bool:
        return self.state == _ENDED

    def respond(
        self,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        content_type: str | None = None,
    ) -> None:
        """Write the whole response now (status, headers, `Content-Length`, body)."""
        if self.state != _NOT_STARTED:
            raise RuntimeError("the response has already started")
        conn = self._conn
        close = conn.must_close_after(self)
        head = _head(status, headers, content_type, b"Content-Length: %d\r\n" % len(body), close)
        self.response_status = status
        self.state = _ENDED
        conn.write(head if self.method == "HEAD" else head + body)

    def start_stream(self, status: int, headers: Mapping[str, str] | None = None) -> ResponseStream:
        """Write the head of a response whose body follows in pieces (chunked transfer
        encoding; an HTTP/1.0 client gets the raw bytes and the connection closes)."""
        if self.state != _NOT_STARTED:
            raise RuntimeError("the response has already started")
        conn = self._conn
        is_chunked = self.version != "1.0"
        close = conn.must_close_after(self) or not is_chunked
        framing = b"Transfer-Encoding: chunked\r\n" if is_chunked else b""
        self.response_status = status
        self.state = _STREAMING
        conn.write(_head(status, headers, None, framing, close))
        return ResponseStream(self, is_chunked)

    def json(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        """`respond` with a JSON body."""
        self.respond(status, body, headers, _JSON)

    def error(
        self,
        status: int,
        message: str,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """`respond` with an OpenAI-style error."""
        self.respond(status, error_body(status, message, param), headers, _JSON)


class ResponseStream:
    """The body of a streamed response: `write` each piece, then `end`. Both raise
    `ConnectionResetError` once the client has gone."""

    __slots__ = ("_is_chunked", "_request")

    def __init__(self, request: HttpRequest, is_chunked: bool) -> None:
        self._request = request
        self._is_chunked = is_chunked

    async def write(self, data: bytes) -> None:
        if self.write_now(data):
            await self._request._conn.drain()

    def write_now(self, data: bytes) -> bool:
        """`write` without waiting (from a callback): True when the client is not
        keeping up, so the caller must `await drain()` before writing more."""
        if not data:
            return False  # an empty chunk would end a chunked body
        conn = self._request._conn
        if conn.is_closed:
            raise ConnectionResetError("the client closed the connection")
        conn.write(b"%x\r\n%b\r\n" % (len(data), data) if self._is_chunked else data)
        return conn.drain_waiter is not None or conn.is_write_paused

    async def drain(self) -> None:
        """Until the client has taken what was written (`ConnectionResetError` if it
        went away meanwhile)."""
        await self._request._conn.drain()

    async def end(self) -> None:
        request = self._request
        if request.state == _ENDED:
            return
        conn = request._conn
        if conn.is_closed:
            raise ConnectionResetError("the client closed the connection")
        request.state = _ENDED
        if self._is_chunked:
            conn.write(b"0\r\n\r\n")


_NOT_STARTED, _STREAMING, _ENDED = 0, 1, 2
Handler = Callable[[HttpRequest], Awaitable[None]]


class _HeadTooLarge(Exception):
    pass


class _Connection(asyncio.Protocol):
    """One client connection: parses requests, runs them one at a time."""

    def __init__(self, server: H1Server) -> None:
        self._server = server
        self._loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.is_closed = False
        self.is_write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.last_active_at = self._loop.time()
        self._queue: collections.deque[HttpRequest] = collections.deque()
        self._active: HttpRequest | None = None
        self._task: asyncio.Task[None] | None = None
        self._is_reading_paused = False
        # The request being parsed.
        self._url = b""
        self._header_pairs: list[tuple[str, str]] = []
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._parsing: HttpRequest | None = None  # between headers and message end
        self._is_discarding = False  # its body is not kept (too large: answered already)
        self._is_lingering = False  # answered, half-closed, discarding what comes in

    # ------------------------------------------------------------- transport events
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Each relayed chunk goes out at once, not after Nagle's delay.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_active_at = self._loop.time()
        if self._is_lingering:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Answered already (`on_headers_complete`); what follows is not HTTP/1.1.
            self._is_lingering = True
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._reject(431, "request head is too large")
            else:
                log.exception("error while reading a request")
                self._reject(500, "internal gateway error")
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed HTTP request: {exc}")

    def eof_received(self) -> bool | None:
        return None  # the client is done: close (its request, if any, is cancelled)

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_closed = True
        self._server.connections.discard(self)
        active = self._active
        if active is not None and active.state != _ENDED and self._task is not None:
            self._task.cancel()  # the client went away: stop its upstream request
        self._queue.clear()
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client closed the connection"))

    def pause_writing(self) -> None:
        self.is_write_paused = True

    def resume_writing(self) -> None:
        self.is_write_paused = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its high-water mark."""
        while self.is_write_paused and not self.is_closed:
            if self.drain_waiter is None or self.drain_waiter.done():
                self.drain_waiter = self._loop.create_future()
            try:
                await self.drain_waiter
            finally:
                self.drain_waiter = None
        if self.is_closed:
            raise ConnectionResetError("the client closed the connection")

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.is_closed:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.is_closed:
            self.transport.close()

    def must_close_after(self, request: HttpRequest) -> bool:
        return not request.is_keep_alive or self._server.is_stopping

    @property
    def is_idle(self) -> bool:
        return self._active is None and self._parsing is None and not self._url

    # ------------------------------------------------------------- parser callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._header_pairs = []
        self._head_bytes = 0
        self._body = []
        self._body_bytes = 0
        self._is_discarding = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self._server.max_head_bytes:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self._server.max_head_bytes:
            raise _HeadTooLarge
        self._header_pairs.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        headers = CIMultiDictProxy(CIMultiDict(self._header_pairs))
        version = parser.get_http_version()
        request = HttpRequest(
            self,
            parser.get_method().decode("ascii", "replace"),
            self._url.decode("latin-1"),
            version,
            headers,
            # HTTP/1.0 connections close after one answer (no keep-alive negotiation).
            version != "1.0" and parser.should_keep_alive(),
        )
        self._parsing = request
        if parser.should_upgrade():  # llhttp reads no body after an upgrade's head
            self._answer_now(request, 400, "protocol upgrades are not supported")
            return
        length = headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > self._server.max_body_bytes:
            self._too_large(request)
            return
        expect = headers.get("Expect")
        if expect is not None:
            if expect.lower() != "100-continue":
                self._answer_now(request, 417, f"unsupported Expect value {expect!r}")
                return
            if self._active is None and not self._queue:
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._is_discarding:
            return
        self._body_bytes += len(body)
        if self._body_bytes > self._server.max_body_bytes:
            assert self._parsing is not None
            self._too_large(self._parsing)
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        request = self._parsing
        self._parsing = None
        self._url = b""
        if request is None or self._is_discarding:
            return  # answered already
        body = self._body
        request.body = body[0] if len(body) == 1 else b"".join(body)
        self._body = []
        self._dispatch(request)

    # ------------------------------------------------------------- request handling
    def _too_large(self, request: HttpRequest) -> None:
        """Hand `request` on without its body (which is not read): the handler answers
        413 in its own words (and counts it); the connection then closes."""
        request.is_body_too_large = True
        request.is_keep_alive = False
        self._body = []
        self._is_discarding = True
        self._parsing = None
        self._dispatch(request)

    def _answer_now(self, request: HttpRequest, status: int, message: str) -> None:
        """Answer `request` with an error in its turn, without the handler or its body;
        the connection then closes."""
        request.server_error = (status, message)
        request.is_keep_alive = False
        self._parsing = None
        self._is_discarding = True
        self._dispatch(request)

    def _dispatch(self, request: HttpRequest) -> None:
        if self._active is not None:
            self._queue.append(request)
            if len(self._queue) >= _MAX_QUEUED_REQUESTS and not self._is_reading_paused:
                assert self.transport is not None
                self.transport.pause_reading()
                self._is_reading_paused = True
            return
        self._start(request)

    def _start(self, request: HttpRequest) -> None:
        self._active = request
        self._task = self._loop.create_task(self._run(request))

    async def _run(self, request: HttpRequest) -> None:
        is_cancelled = False
        try:
            if request.server_error is not None:
                request.error(*request.server_error)
            else:
                await self._server.handler(request)
        except asyncio.CancelledError:
            is_cancelled = True  # the client went away, or a drain ran out of time
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            if not request.is_response_started and not self.is_closed:
                request.is_keep_alive = False
                request.error(500, "internal gateway error")
        finally:
            self._finish(request, is_cancelled)

    def _finish(self, request: HttpRequest, is_cancelled: bool = False) -> None:
        self._active = None
        self._task = None
        self.last_active_at = self._loop.time()
        if self.is_closed:
            return
        if request.state != _ENDED:
            if request.state == _NOT_STARTED and not is_cancelled:
                log.error("no response to %s %s", request.method, request.path)
                request.is_keep_alive = False
                request.error(500, "internal gateway error")
            # A stream cut short, or a request cancelled before its answer: the
            # client sees the connection end.
            self.close()
            return
        if request.is_body_too_large:
            self._linger()
            return
        if self.must_close_after(request):
            self.close()
            return
        if self._queue:
            self._start(self._queue.popleft())
        if self._is_reading_paused and len(self._queue) < _MAX_QUEUED_REQUESTS:
            assert self.transport is not None
            self.transport.resume_reading()
            self._is_reading_paused = False

    def _linger(self) -> None:
        """Half-close, then discard what the client still sends until it closes or
        `_LINGER_S` passed: closing with its refused body's bytes unread would reset
        the connection, and the client could lose the answer before reading it."""
        assert self.transport is not None
        self._is_lingering = True
        self._queue.clear()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._loop.call_later(_LINGER_S, self.close)

    def _reject(self, status: int, message: str) -> None:
        """Answer a request the server cannot read, then close."""
        self._parsing = None
        if self._active is None and not self.is_closed:
            self.write(_head(status, None, _JSON, b"", True, error_body(status, message)))
        self.close()


def _head(
    status: int,
    headers: Mapping[str, str] | None,
    content_type: str | None,
    framing: bytes,
    close: bool,
    body: bytes | None = None,
) -> bytes:
    """A response head (and, when `body` is given, that body with its length)."""
    parts = [_status_line(status)]
    if content_type is not None:
        parts.append(f"Content-Type: {content_type}\r\n")
    if headers:
        parts.extend(f"{name}: {value}\r\n" for name, value in headers.items())
    parts.append(_date_header())
    if close:
        parts.append("Connection: close\r\n")
    if body is not None:
        parts.append(f"Content-Length: {len(body)}\r\n\r\n")
        return "".join(parts).encode("latin-1", "replace") + framing + body
    return "".join(parts).encode("latin-1", "replace") + framing + b"\r\n"


_status_lines: dict[int, str] = {}


def _status_line(status: int) -> str:
    line = _status_lines.get(status)
    if line is None:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        line = _status_lines[status] = f"HTTP/1.1 {status} {reason}\r\n"
    return line


_date_second = 0
_date_line = ""


def _date_header() -> str:
    """`Date:` (RFC 9110 wants it from a server with a clock), formatted once a second."""
    global _date_second, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_line = f"Date: {email.utils.formatdate(now, usegmt=True)}\r\n"
    return _date_line


class H1Server:
    """The listening side: `start`, then `stop_accepting` (the listener closes, idle
    connections close, the rest close after their current response) and `close`."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body_bytes: int,
        keepalive_timeout_s: float = _DEFAULT_KEEPALIVE_TIMEOUT_S,
        max_head_bytes: int = _DEFAULT_MAX_HEAD_BYTES,
    ) -> None:
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.keepalive_timeout_s = keepalive_timeout_s
        self.max_head_bytes = max_head_bytes
        self.connections: set[_Connection] = set()
        self.is_stopping = False
        self._server: asyncio.Server | None = None
        self._sweep: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop = cast(asyncio.AbstractEventLoop, None)
        self.addresses: list[Any] = []  # where it listens (set by `start`)
        self.port = 0

    async def start(
        self, host: str, port: int, *, reuse_address: bool = True, reuse_port: bool | None = None
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(
            lambda: _Connection(self),
            host,
            port,
            reuse_address=reuse_address,
            reuse_port=reuse_port,
        )
        self.addresses = [s.getsockname() for s in self._server.sockets]
        self.port = int(next(a[1] for a in self.addresses if isinstance(a, tuple)))
        self._schedule_sweep()

    def stop_accepting(self) -> None:
        """Close the listener and the idle connections; connections with a request in
        hand close after its response."""
        self.is_stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            if conn.is_idle:
                conn.close()

    async def close(self, timeout_s: float = 1.0) -> None:
        """Stop accepting, then close every connection; requests still running after
        `timeout_s` are cancelled with their connections."""
        self.stop_accepting()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        deadline = self.loop.time() + timeout_s
        while any(not c.is_idle for c in self.connections) and self.loop.time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.sleep(0)  # let cancelled handlers run their cleanup

    def _schedule_sweep(self) -> None:
        self._sweep = self.loop.call_later(
            max(0.05, min(self.keepalive_timeout_s / 2, 5.0)), self._sweep_idle
        )

    def _sweep_idle(self) -> None:
        cutoff = self.loop.time() - self.keepalive_timeout_s
        for conn in list(self.connections):
            if conn._active is None and conn.last_active_at < cutoff:
                conn.close()
        self._schedule_sweep()
