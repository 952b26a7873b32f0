"""Per-request accounting: one `RequestRecord` per completion request, filled in as
the request goes, written as one JSON line to the `headway.access` logger when the
request ends, and fed to the Prometheus histograms (metrics.py).

Invariants:
* Exactly one record per completion request, emitted once, in the handler's
  `finally` (success, error, rejection, client gone alike).
* A record holds no request or response body and no header other than the request
  id, tenant and session: never an API key (the client's `Authorization` is not
  read, an upstream key is never put in one).
* Token counts come from the upstream's `usage` (None when it sent none); latencies
  are measured by the gateway: TTFT to the first relayed byte of a stream, e2e to
  the end of the handler, TPOT = (e2e - TTFT) / (completion_tokens - 1) as in
  core.serving_metrics (streams with more than one completion token only).
* Per relayed chunk only a timestamp difference is appended (`chunk_gaps_s`); the
  inter-token histogram is fed from it when the request ends, or earlier in batches
  of 512 on a long stream (the list stays bounded; each gap is counted once).
* Lines are written in batches (`BufferedLineHandler`): a line reaches its file at
  most `flush_after_s` (0.1 s) after its request ended, or when the batch is full
  (4 KiB), or when the handler is flushed or closed (gateway shutdown, interpreter
  exit). A batch is one write of whole lines, at most PIPE_BUF bytes, so the lines
  of several worker processes sharing stderr never interleave.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

import msgspec

from headway.gateway.config import AccessLogConfig

ACCESS_LOGGER = "headway.access"
# Request headers naming a tenant, first match wins (llm-d's fairness id, both spellings).
TENANT_HEADERS = (
    "x-tenant-id",
    "x-llm-d-inference-fairness-id",
    "x-gateway-inference-fairness-id",
)
_MS_PER_S = 1000.0
# A batch of lines is written at once when it would grow past this (PIPE_BUF: a write
# to a pipe of at most this many bytes is atomic), else at most this long after its
# first line.
_MAX_BATCH_BYTES = 4096
_FLUSH_AFTER_S = 0.1

log = logging.getLogger(ACCESS_LOGGER)


class RequestRecord:
    """What the gateway knows about one request; see the module invariants."""

    __slots__ = (
        "api",
        "arrived_at",
        "arrived_wall_s",
        "chunk_gaps_s",
        "endpoint",
        "error",
        "finished_at",
        "first_byte_at",
        "is_stream",
        "model",
        "num_cached_tokens",
        "num_completion_tokens",
        "num_prompt_tokens",
        "num_retries",
        "outcome",
        "pool",
        "request_id",
        "retry_reasons",
        "sent_at",
        "session",
        "status",
        "tenant",
    )

    def __init__(self, request_id: str, api: str, arrived_at: float) -> None:
        self.request_id = request_id
        self.api = api  # "chat" (/v1/chat/completions) or "completions"
        self.model = ""  # as the client named it
        self.pool = ""  # the pool that served it
        self.endpoint = ""  # the last upstream tried
        self.tenant: str | None = None
        self.session: str | None = None
        self.is_stream = False
        self.status = 500
        self.outcome = "error"
        self.error: str | None = None
        self.num_prompt_tokens: int | None = None
        self.num_cached_tokens: int | None = None
        self.num_completion_tokens: int | None = None
        self.arrived_at = arrived_at  # time.monotonic()
        self.arrived_wall_s = time.time()
        self.sent_at: float | None = None  # the first upstream request began
        self.first_byte_at: float | None = None
        self.finished_at: float | None = None
        self.num_retries = 0
        self.retry_reasons: list[str] = []
        self.chunk_gaps_s: list[float] = []

    def set_usage(self, usage: Mapping[str, Any] | None) -> None:
        """Token counts from an OpenAI `usage` object (what the upstream reported)."""
        if not usage:
            return
        self.num_prompt_tokens = _count(usage.get("prompt_tokens"))
        self.num_completion_tokens = _count(usage.get("completion_tokens"))
        details = usage.get("prompt_tokens_details")
        if type(details) is dict or isinstance(details, Mapping):  # (an ABC check: slow)
            self.num_cached_tokens = _count(details.get("cached_tokens"))

    @property
    def ttft_s(self) -> float | None:
        if self.first_byte_at is None or not self.is_stream:
            return None
        return self.first_byte_at - self.arrived_at

    @property
    def e2e_s(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.arrived_at

    @property
    def tpot_s(self) -> float | None:
        ttft, e2e, n = self.ttft_s, self.e2e_s, self.num_completion_tokens
        if ttft is None or e2e is None or n is None or n < 2:
            return None
        return (e2e - ttft) / (n - 1)

    def line(self, worker: int | None = None) -> AccessLine:
        """The access-log line (latencies in milliseconds); `worker`: the process's
        index under `--workers`."""
        # The properties' arithmetic inlined: this runs once per request.
        arrived_at, first_byte_at, finished_at, sent_at = (
            self.arrived_at,
            self.first_byte_at,
            self.finished_at,
            self.sent_at,
        )
        ttft_ms = tpot_ms = e2e_ms = routed_ms = None
        if sent_at is not None:
            routed_ms = round((sent_at - arrived_at) * _MS_PER_S, 3)
        if finished_at is not None:
            e2e_ms = round((finished_at - arrived_at) * _MS_PER_S, 3)
        if first_byte_at is not None and self.is_stream:
            ttft_ms = round((first_byte_at - arrived_at) * _MS_PER_S, 3)
            tpot_s = self.tpot_s
            if tpot_s is not None:
                tpot_ms = round(tpot_s * _MS_PER_S, 3)
        return AccessLine(
            round(self.arrived_wall_s, 3),
            self.request_id,
            self.api,
            self.model,
            self.pool,
            self.endpoint,
            self.tenant,
            self.session,
            self.is_stream,
            self.status,
            self.outcome,
            self.error,
            self.num_prompt_tokens,
            self.num_cached_tokens,
            self.num_completion_tokens,
            ttft_ms,
            tpot_ms,
            e2e_ms,
            routed_ms,
            self.num_retries,
            self.retry_reasons,
            worker,
        )


class AccessLine(msgspec.Struct):
    """One access-log line's fields, in the line's order. A struct, not a dict: it is
    built and encoded once per request, and msgspec encodes a struct's fields without
    hashing keys (a third of the line's cost as a dict)."""

    ts: float  # wall clock at arrival, seconds
    request_id: str
    api: str
    model: str
    pool: str
    endpoint: str
    tenant: str | None
    session: str | None
    stream: bool
    status: int
    outcome: str
    error: str | None
    prompt_tokens: int | None
    cached_tokens: int | None
    completion_tokens: int | None
    ttft_ms: float | None
    tpot_ms: float | None
    e2e_ms: float | None
    routed_ms: float | None  # arrival to the first upstream request: the gateway's own delay
    retries: int
    retry_reasons: list[str]
    worker: int | None


def outcome_of(status: int, is_stream_complete: bool = True) -> str:
    """The record's `outcome` for an HTTP status sent to the client."""
    if status == 499:
        return "cancelled"  # the client went away
    if status == 429:
        return "rejected"  # admission: queue full or wait ran out
    if status < 400:
        return "ok" if is_stream_complete else "stream_error"
    if status < 500:
        return "client_error"
    if status == 503:
        return "no_endpoint"
    return "upstream_error" if status in (502, 504) else "error"


class AccessLog:
    """Writes records as JSON lines to the `headway.access` logger (when enabled)."""

    def __init__(self, config: AccessLogConfig, worker: int | None = None) -> None:
        self.is_enabled = config.enabled
        self.worker = worker  # the process's index under `--workers`, else None
        self._encoder = msgspec.json.Encoder()

    def emit(self, record: RequestRecord) -> None:
        if not self.is_enabled or not log.isEnabledFor(logging.INFO):
            return
        line = self._encoder.encode(record.line(self.worker)).decode()
        handlers = log.handlers
        if len(handlers) == 1 and not log.propagate and not log.filters:
            handler = handlers[0]
            if (
                type(handler) is BufferedLineHandler
                and handler.level <= logging.INFO
                and not handler.filters
            ):
                # The logger as `setup_access_log` left it: the line as its formatter
                # would write it, without building a LogRecord.
                handler.write_line(line)
                return
        # makeRecord + handle: what `log.info` does, without looking up the caller's
        # frame (a third of its cost, and meaningless for an access log).
        log.handle(log.makeRecord(ACCESS_LOGGER, logging.INFO, __file__, 0, line, (), None))

    def flush(self) -> None:
        """Write out buffered lines now (the gateway's shutdown)."""
        for handler in log.handlers:
            handler.flush()


class BufferedLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record's message as one line, in batches (see the module
    invariants): one write per batch instead of one per request. Batches are
    flushed by a timer on the running event loop; without one, every line is
    written at once."""

    def __init__(
        self, stream: TextIO, *, owns_stream: bool = False, flush_after_s: float = _FLUSH_AFTER_S
    ) -> None:
        super().__init__(stream)
        self.setFormatter(logging.Formatter("%(message)s"))
        self.flush_after_s = flush_after_s
        self._owns_stream = owns_stream
        self._lines: list[str] = []
        self._num_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.write_line(self.format(record))
        except Exception:
            self.handleError(record)

    def write_line(self, line: str) -> None:
        """Queue one line (without its newline) for the next batch."""
        size = len(line) + 1  # characters: bytes for the ASCII msgspec writes
        with self.lock:  # type: ignore[union-attr]
            if self._lines and self._num_bytes + size > _MAX_BATCH_BYTES:
                self._write_batch()
            self._lines.append(line)
            self._num_bytes += size
            timer_loop = self._timer_loop
            if self._timer is None or (timer_loop is not None and timer_loop.is_closed()):
                # (A timer on a loop closed since will never run: arm a new one.)
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:  # no loop to flush later: write now
                    self._timer = None
                    self._write_batch()
                    return
                self._timer = loop.call_later(self.flush_after_s, self._on_timer)
                self._timer_loop = loop

    def _on_timer(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._timer = None
            self._write_batch()

    def _write_batch(self) -> None:
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        self._num_bytes = 0
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:
            # As logging does for a record it cannot write: report, keep serving.
            self.handleError(logging.makeLogRecord({"msg": "access log write failed"}))

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._write_batch()
            super().flush()

    def close(self) -> None:
        try:
            self.flush()
            if self._owns_stream:
                self.stream.close()
        finally:
            super().close()


def setup_access_log(config: AccessLogConfig) -> logging.Handler | None:
    """Point the `headway.access` logger at stderr or `config.path` (one bare JSON line
    per record, written in batches, not propagated to the root logger); returns the
    handler added."""
    logger = logging.getLogger(ACCESS_LOGGER)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if not config.enabled:
        logger.propagate = False
        logger.setLevel(logging.CRITICAL + 1)
        return None
    added: BufferedLineHandler
    if config.path is None:
        added = BufferedLineHandler(sys.stderr)
    else:
        Path(config.path).parent.mkdir(parents=True, exist_ok=True)
        added = BufferedLineHandler(open(config.path, "a", encoding="utf-8"), owns_stream=True)  # noqa: SIM115
    logger.addHandler(added)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return added


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
