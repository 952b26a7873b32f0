"""The seam between the gateway and its upstreams: open one HTTP exchange, read its
body as it arrives, close it. `AiohttpTransport` uses one shared keep-alive
`ClientSession`; tests or embedders can plug in another `Transport`.

A response that was not read to its end is closed, not returned to the pool, so
that the upstream sees the disconnect and aborts its request at once.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

import aiohttp


class UpstreamResponse(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read_chunk(self) -> bytes:
        """The next bytes as they arrived; b"" at the end of the body."""
        ...

    async def read_all(self, limit_bytes: int) -> bytes: ...

    def finish(self, *, is_complete: bool) -> None:
        """Done with the exchange; an incomplete one is aborted (connection closed)."""
        ...


@runtime_checkable
class PushingResponse(UpstreamResponse, Protocol):
    """A response that can hand its body over as it arrives, from the connection's
    protocol callback: no task wake-up per piece (a paced engine stream sends one
    token per read)."""

    async def push(self, sink: Callable[[bytes], None]) -> None:
        """Call `sink(piece)` for each body piece as it arrives, until the body ends,
        the connection fails, or `stop_push` (which `sink` may call); then return.
        Returns at once when pieces are already buffered (read them with `read_chunk`
        first). What is left after it returns (the end, an error, later pieces) is
        read with `read_chunk`. `sink` must not raise."""
        ...

    def stop_push(self) -> None:
        """Pieces from now on are buffered for `read_chunk`; `push` returns."""
        ...


class Transport(Protocol):
    async def open(self, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        """Send a POST and return once the response headers are in. Raises
        `UpstreamConnectError` when the upstream cannot be reached."""
        ...

    async def close(self) -> None: ...


class UpstreamConnectError(Exception):
    """The upstream could not be reached, or dropped the connection before answering."""


class UpstreamReadError(Exception):
    """The upstream's connection broke while the body was being read."""


class _AiohttpResponse:
    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    @property
    def status(self) -> int:
        return self._resp.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._resp.headers

    async def read_chunk(self) -> bytes:
        try:
            return await self._resp.content.readany()
        except aiohttp.ClientPayloadError:
            raise UpstreamReadError("the connection closed before the response ended") from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise UpstreamReadError(str(exc) or type(exc).__name__) from None

    async def read_all(self, limit_bytes: int) -> bytes:
        parts: list[bytes] = []
        size = 0
        while chunk := await self.read_chunk():
            size += len(chunk)
            if size > limit_bytes:
                raise UpstreamReadError(f"response body larger than {limit_bytes} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def finish(self, *, is_complete: bool) -> None:
        if is_complete:
            self._resp.release()
        else:
            self._resp.close()


class AiohttpTransport:
    """One shared `ClientSession` for every upstream: keep-alive connections, no
    decompression (bytes pass through as the upstream sent them), no cookie jar (an
    upstream's cookie must not reach other clients' requests)."""

    def __init__(self, *, connect_timeout_s: float | None, limit_per_host: int = 0) -> None:
        self._connect_timeout_s = connect_timeout_s
        self._limit_per_host = limit_per_host
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=self._limit_per_host, enable_cleanup_closed=False
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=self._connect_timeout_s, connect=None
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def open(self, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        try:
            resp = await self._get_session().post(url, data=body, headers=headers)
        except aiohttp.ServerTimeoutError as exc:
            raise UpstreamConnectError(f"connect timed out: {exc}") from None
        except (aiohttp.ClientError, ConnectionError, socket.gaierror) as exc:
            raise UpstreamConnectError(str(exc) or type(exc).__name__) from None
        return _AiohttpResponse(resp)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
