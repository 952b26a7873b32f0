"""Incremental SSE handling for the streaming relay.

`SseRelayFilter.feed` takes upstream bytes as they arrive and returns the bytes to
send to the client now: every complete event (they end with a blank line), held back
only while an event is incomplete, so the relay never buffers more than one event.
It notes `data: [DONE]` and the last `usage` object it sees; with `strip_usage` it
drops the usage-only final chunk (empty `choices`) that the gateway asked for on the
client's behalf.
"""

from __future__ import annotations

from typing import Any

import msgspec

_DONE = b"data: [DONE]"
# An event longer than this is relayed without waiting for its end (a stream that
# never sends a blank line must not make the relay buffer it whole).
MAX_PENDING_BYTES = 1024 * 1024


class SseRelayFilter:
    def __init__(self, *, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.is_done = False
        self.usage: dict[str, Any] | None = None
        self._pending = b""
        self._sep: bytes | None = None  # b"\n\n", or b"\r\n\r\n" for CRLF streams

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        if self._sep is None:
            if b"\n" not in data:
                self._pending = data
                return b""
            self._sep = b"\r\n\r\n" if b"\r\n" in data else b"\n\n"
        sep = self._sep
        if data.endswith(sep):  # the usual read: whole events, nothing to hold back
            complete = data
            self._pending = b""
        else:
            end = data.rfind(sep)
            if end < 0:
                if len(data) > MAX_PENDING_BYTES:
                    self._pending = b""
                    return data
                self._pending = data
                return b""
            end += len(sep)
            complete, self._pending = data[:end], data[end:]
        if b'"usage"' not in complete and _DONE not in complete:
            return complete  # the common case: plain token chunks, no parsing
        kept: list[bytes] = []
        for event in complete.split(sep)[:-1]:
            if event.startswith(_DONE):
                self.is_done = True
            elif b'"usage"' in event and self._is_usage_only(event):
                continue
            kept.append(event + sep)
        return b"".join(kept)

    def _is_usage_only(self, event: bytes) -> bool:
        """Record the event's usage; True when it is the usage-only chunk to strip."""
        if not event.startswith(b"data: {"):
            return False
        try:
            obj = msgspec.json.decode(event[len(b"data: ") :])
        except msgspec.DecodeError:
            return False
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if not isinstance(usage, dict):
            return False
        self.usage = usage
        return self.strip_usage and obj.get("choices") == []

    @property
    def pending(self) -> bytes:
        """Bytes of an unfinished event (nothing when the stream ended cleanly)."""
        return self._pending
