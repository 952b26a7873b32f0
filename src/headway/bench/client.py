"""The benchmark's streaming HTTP client: one chat-completions call -> one RequestRecord.

Timing follows vLLM's `vllm bench serve` (vllm/benchmarks/lib/endpoint_request_func.py):
the clock starts just before the POST and every SSE message is stamped as it is read.

* `first_choice_at`: the first message whose `choices` is non-empty, even when its
  content is empty (vLLM's opening role-only chunk counts): vLLM's TTFT end.
* `first_content_at`: the first chunk with non-empty text.
* Content chunks (`chunk_times`): every message with non-empty `choices` except a
  role-only opening chunk (role set, no text) and, when the target reports usage on
  every chunk, a chunk that carries no new token (e.g. a bare finish_reason). A chunk
  whose text is empty but whose usage shows new tokens (special tokens) is a content
  chunk. The usage-only chunk at the end (empty `choices`) is never one, so E2E ends at
  the last token, not at the usage chunk.
* `chunk_tokens`: per content chunk, the growth of `usage.completion_tokens` since the
  previous message (vLLM's `continuous_usage_stats`); None when any content chunk lacks
  usage.
* `output_tokens`: the final usage's `completion_tokens`; without usage, the sum of
  `chunk_tokens`, else the tokenizer's count of the streamed text.

Capabilities are learned per target: a 400 whose message names `continuous_usage_stats`
/ `stream_options` or `ignore_eos` makes the client retry the call without that field
and leave it out from then on (the rejected attempt is not timed).

A call never raises for a server or network failure: the record's `error` holds the
kind (`ErrorKind`). Cancellation records the call as `cancelled` in the sink and
re-raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiohttp
import msgspec

from headway.core.serving_metrics import RequestRecord
from headway.core.tokenizer import Tokenizer
from headway.core.workloads import Call, ChatMessage

DEFAULT_TIMEOUT_S = 600.0
DRAIN_TIMEOUT_S = 1.0  # reading the rest of a body after [DONE]
MAX_LINE_BYTES = 16 * 2**20  # an SSE line longer than this is not a completion stream


class ErrorKind(StrEnum):
    """Why a call failed (RequestRecord.error)."""

    HTTP_429 = "http_429"
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    INVALID_STREAM = "invalid_stream"  # not SSE JSON, no chunk with choices, no [DONE]
    STREAM_ERROR = "stream_error"  # the server sent an error object inside a 200 stream
    CANCELLED = "cancelled"


def http_error_kind(status: int) -> ErrorKind:
    if status == 429:
        return ErrorKind.HTTP_429
    if status >= 500:
        return ErrorKind.HTTP_5XX
    return ErrorKind.HTTP_4XX


# -- the SSE payloads, decoded with msgspec (unknown fields ignored) ------------------
class _Delta(msgspec.Struct):
    content: str | None = None
    role: str | None = None
    reasoning_content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    text: str | None = None  # /v1/completions shape, accepted too
    finish_reason: str | None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_tokens_details: _PromptDetails | None = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    error: Any = None


_CHUNK_DECODER = msgspec.json.Decoder(_Chunk)
_ENCODER = msgspec.json.Encoder()


@dataclass
class TargetCapabilities:
    """What a target was found to accept (learned from 400 answers)."""

    is_continuous_usage_accepted: bool = True
    is_ignore_eos_accepted: bool = True


@dataclass(frozen=True)
class CallResult:
    """A finished call: its record and the text the model answered."""

    record: RequestRecord
    answer_text: str


@dataclass
class _StreamState:
    first_choice_at: float | None = None
    first_content_at: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    chunk_tokens: list[int] = field(default_factory=list)
    is_chunk_tokens_known: bool = True
    last_completion_tokens: int = 0
    usage: _Usage | None = None
    text_parts: list[str] = field(default_factory=list)
    is_done: bool = False


def _now_s() -> float:
    return time.monotonic_ns() / 1e9


class _RejectedFeature(Exception):
    def __init__(self, feature: str) -> None:
        self.feature = feature


class StreamingClient:
    """Streams chat completions from one target (base URL without /v1).

    One aiohttp session with a connector sized to `max_connections`. Records of every
    call (also failed and cancelled ones) are appended to `sink`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        max_connections: int,
        tokenizer: Tokenizer | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        sink: list[RequestRecord] | None = None,
        clock: Callable[[], float] = _now_s,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/v1/chat/completions"
        self.model = model
        self.tokenizer = tokenizer
        self.timeout_s = timeout_s
        self.sink: list[RequestRecord] = sink if sink is not None else []
        self.capabilities = TargetCapabilities()
        self._clock = clock
        self._max_connections = max(0, max_connections)  # 0: no limit (aiohttp)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> StreamingClient:
        self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=self._max_connections
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                # Bodies are built with msgspec; aiohttp adds no headers we do not need.
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- one call ---------------------------------------------------------------
    def body(self, call: Call, messages: Sequence[ChatMessage]) -> dict[str, Any]:
        caps = self.capabilities
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": call.max_tokens,
            "stream": True,
            "stream_options": (
                {"include_usage": True, "continuous_usage_stats": True}
                if caps.is_continuous_usage_accepted
                else {"include_usage": True}
            ),
        }
        if caps.is_ignore_eos_accepted:
            body["ignore_eos"] = True
        return body

    async def call(
        self,
        call: Call,
        session_id: str,
        messages: Sequence[ChatMessage] | None = None,
        on_sent: Callable[[float], None] | None = None,
    ) -> CallResult:
        """Issue `call` (with `messages` in place of its own, if given) and stream the
        answer. `on_sent(sent_at)` is called once, just before the request goes out."""
        msgs = call.messages if messages is None else messages
        headers = {"Content-Type": "application/json", **dict(call.headers)}
        sent_at = self._clock()
        state = _StreamState()
        is_sent_reported = False
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    sent_at = self._clock()
                    if on_sent is not None and not is_sent_reported:
                        on_sent(sent_at)
                        is_sent_reported = True
                    try:
                        status = await self._attempt(
                            _ENCODER.encode(self.body(call, msgs)), headers, state
                        )
                    except _RejectedFeature as rejected:
                        if rejected.feature == "continuous_usage_stats":
                            self.capabilities.is_continuous_usage_accepted = False
                        else:
                            self.capabilities.is_ignore_eos_accepted = False
                        continue
                    break
        except asyncio.CancelledError:
            self.sink.append(self._record(call, session_id, sent_at, state, ErrorKind.CANCELLED))
            raise
        except TimeoutError:
            return self._finish(call, session_id, sent_at, state, ErrorKind.TIMEOUT, None)
        except _HttpError as exc:
            return self._finish(call, session_id, sent_at, state, exc.kind, exc.status)
        except (aiohttp.ClientError, OSError):
            return self._finish(call, session_id, sent_at, state, ErrorKind.CONNECTION, None)
        error: ErrorKind | None = None
        if state.first_choice_at is None or not state.is_done:
            error = ErrorKind.INVALID_STREAM
        return self._finish(call, session_id, sent_at, state, error, status)

    async def _attempt(self, data: bytes, headers: dict[str, str], state: _StreamState) -> int:
        session = self._open()
        async with session.post(self.url, data=data, headers=headers) as resp:
            if resp.status != 200:
                text = (await resp.read()).decode(errors="replace")
                if resp.status == 400:
                    caps = self.capabilities
                    if caps.is_continuous_usage_accepted and (
                        "continuous_usage_stats" in text or "stream_options" in text
                    ):
                        raise _RejectedFeature("continuous_usage_stats")
                    if caps.is_ignore_eos_accepted and "ignore_eos" in text:
                        raise _RejectedFeature("ignore_eos")
                raise _HttpError(resp.status)
            # Whatever bytes arrived, split into lines here: one await per network read
            # instead of one per SSE line (vLLM's client reads the same way).
            tail = b""
            async for data in resp.content.iter_any():
                lines = (tail + data).split(b"\n")
                tail = lines.pop()
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue  # blank separators, comments (":ping"), event/id fields
                    now = self._clock()
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        state.is_done = True
                        break
                    try:
                        chunk = _CHUNK_DECODER.decode(payload)
                    except msgspec.DecodeError:
                        raise _HttpError(200, ErrorKind.INVALID_STREAM) from None
                    if chunk.error is not None:
                        raise _HttpError(200, ErrorKind.STREAM_ERROR)
                    self._on_chunk(chunk, now, state)
                if state.is_done:
                    break
                if len(tail) > MAX_LINE_BYTES:
                    raise _HttpError(200, ErrorKind.INVALID_STREAM)
            if state.is_done:
                # Read the end of the body (normally nothing but the chunked terminator):
                # a connection whose body was not consumed is closed, not reused.
                with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                    async with asyncio.timeout(DRAIN_TIMEOUT_S):
                        await resp.content.read()
            return resp.status

    @staticmethod
    def _on_chunk(chunk: _Chunk, now: float, state: _StreamState) -> None:
        usage = chunk.usage
        if usage is not None:
            state.usage = usage
        if not chunk.choices:
            return
        if state.first_choice_at is None:
            state.first_choice_at = now
        choice = chunk.choices[0]
        delta = choice.delta
        text = (delta.content if delta is not None else choice.text) or ""
        new_tokens: int | None = None
        if usage is not None and usage.completion_tokens is not None:
            new_tokens = usage.completion_tokens - state.last_completion_tokens
            state.last_completion_tokens = usage.completion_tokens
        is_role_only = delta is not None and delta.role is not None and not text
        if is_role_only and not new_tokens:
            return
        if not text and new_tokens == 0:
            return  # continuous usage says nothing new came (e.g. a bare finish_reason)
        if text:
            state.text_parts.append(text)
            if state.first_content_at is None:
                state.first_content_at = now
        state.chunk_times.append(now)
        if new_tokens is None:
            state.is_chunk_tokens_known = False
        else:
            state.chunk_tokens.append(new_tokens)

    def _record(
        self,
        call: Call,
        session_id: str,
        sent_at: float,
        state: _StreamState,
        error: ErrorKind | None,
        status: int | None = None,
    ) -> RequestRecord:
        usage = state.usage
        text = "".join(state.text_parts)
        chunk_tokens = (
            tuple(state.chunk_tokens) if state.is_chunk_tokens_known and state.chunk_times else None
        )
        output_tokens: int | None = None
        if usage is not None and usage.completion_tokens is not None:
            output_tokens = usage.completion_tokens
        elif chunk_tokens is not None:
            output_tokens = sum(chunk_tokens)
        elif self.tokenizer is not None and (text or state.chunk_times):
            output_tokens = len(self.tokenizer.encode(text))
        details = usage.prompt_tokens_details if usage is not None else None
        return RequestRecord(
            call_id=call.call_id,
            session_id=session_id,
            sent_at=sent_at,
            first_choice_at=state.first_choice_at,
            first_content_at=state.first_content_at,
            chunk_times=tuple(state.chunk_times),
            chunk_tokens=chunk_tokens,
            last_token_at=state.chunk_times[-1] if state.chunk_times else None,
            prompt_tokens=usage.prompt_tokens if usage is not None else None,
            output_tokens=output_tokens,
            cached_tokens=details.cached_tokens if details is not None else None,
            error=None if error is None else str(error),
            status=status,
        )

    def _finish(
        self,
        call: Call,
        session_id: str,
        sent_at: float,
        state: _StreamState,
        error: ErrorKind | None,
        status: int | None,
    ) -> CallResult:
        record = self._record(call, session_id, sent_at, state, error, status)
        self.sink.append(record)
        return CallResult(record, "".join(state.text_parts))


class _HttpError(Exception):
    def __init__(self, status: int, kind: ErrorKind | None = None) -> None:
        self.status = status
        self.kind = kind if kind is not None else http_error_kind(status)
