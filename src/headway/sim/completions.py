"""Serving one completion request on a replica: the OpenAI response shapes vLLM
produces, streamed (SSE) or whole, with usage, stop strings and disconnect handling.

A streamed request is written from the replica's engine loop (`StreamSink`): its
chunks are rendered before the step ends and written when it ends, straight to the
connection while its send buffer is empty (such a write never waits). When the buffer
is not empty (a slow reader) or the response is not open yet, chunks queue in order
and the request's handler writes them through aiohttp with backpressure.

The engine loop's writes are the simulator's hot path (one per stream per step, all at
a step's end): once the response's headers are out and aiohttp frames its body in
HTTP/1.1 chunks, a chunk is framed while it is rendered and handed to the transport in
one call, without aiohttp's per-write coroutine (about 30% of a write's cost here).

Rendering is per token too, so the common chunk (one token, no finish, no stop
strings, no per-chunk usage) is not encoded from dicts: each stream keeps its chunk
pre-encoded around two holes (`ChunkTemplate`, cut from msgspec's own encoding of the
same dict, so the bytes are identical), filled with the token's JSON string (encoded
once per token id, `TextAssembler.token_json`) and the step's `scheduled_at` (encoded
once per step). Any other chunk is encoded from its dict.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

from headway.core.engine import TokenOutput
from headway.core.sequence import FinishReason
from headway.sim import clock, trace
from headway.sim.protocol import ParsedRequest
from headway.sim.replica import Replica, RequestHandle

log = logging.getLogger(__name__)

SSE_DONE = b"data: [DONE]\n\n"
# Ending a stream (the last chunk of HTTP, the request's metrics, aiohttp's own
# bookkeeping) takes about 0.15 ms here; it waits at most this long for a gap.
STREAM_END_WORK_S = 0.00025
STREAM_END_MAX_DEFER_S = 0.002
# Opening one (after the request reached the engine) about 0.08 ms.
STREAM_OPEN_WORK_S = 0.00015
STREAM_OPEN_MAX_DEFER_S = 0.001
# Which replica served a response: lets tests and benchmarks see where a router sent it.
REPLICA_HEADER = "x-headway-replica"


class StreamDropped(ConnectionResetError):
    """Fault injection cut the connection mid-stream."""


@dataclass
class RequestState:
    """Text and timing assembled from a request's emissions."""

    parsed: ParsedRequest
    response_id: str
    created: int
    model: str
    # The text so far. A stream without stop strings never reads it: its token chunks
    # (`StreamSink.prepare`'s template) leave it alone.
    text: str = ""
    num_output_tokens: int = 0
    num_cached_tokens: int = 0
    finish_reason: str | None = None
    stop_reason: str | int | None = None  # the stop string or stop token that ended it
    # When the request reached the modeled API server (`clock.now()`), if it passed
    # through one (`--api-overhead-ms`); None: when the engine got it (the handle's).
    front_end_at: float | None = None

    def arrived_at(self, handle: RequestHandle) -> float:
        """Where TTFT and e2e latency start: vLLM's arrival time, the API server's."""
        return handle.arrived_at if self.front_end_at is None else self.front_end_at


def usage(state: RequestState, report_cached: bool) -> dict[str, Any]:
    n_prompt = len(state.parsed.prompt_token_ids)
    out: dict[str, Any] = {
        "prompt_tokens": n_prompt,
        "total_tokens": n_prompt + state.num_output_tokens,
        "completion_tokens": state.num_output_tokens,
        "prompt_tokens_details": (
            {"cached_tokens": state.num_cached_tokens} if report_cached else None
        ),
    }
    return out


class TextAssembler:
    """Turns emitted token ids into text, applying stop strings."""

    def __init__(self, token_text: Callable[[int], str], eos_token_id: int) -> None:
        self._token_text = token_text
        self._eos = eos_token_id
        # Token id -> its text as a JSON string (quoted, escaped) as msgspec encodes
        # it; never EOS (no text). Read directly by the stream sinks.
        self.token_json_cache: dict[int, bytes] = {}

    def token_json(self, token_id: int) -> bytes | None:
        """`token_id`'s text as a JSON string, encoded once per distinct id; None for
        EOS, which adds no text."""
        if token_id == self._eos:
            return None
        data = self.token_json_cache.get(token_id)
        if data is None:
            data = msgspec.json.encode(self._token_text(token_id))
            self.token_json_cache[token_id] = data
        return data

    def advance(self, state: RequestState, out: TokenOutput) -> str:
        """Apply one step's output; returns the new text to send (may be empty)."""
        state.num_output_tokens = out.num_output_tokens
        state.num_cached_tokens = out.num_cached_tokens
        new = "".join(self._token_text(t) for t in out.new_token_ids if t != self._eos)
        if out.finish_reason is not None:
            state.finish_reason = out.finish_reason.value
            last = out.new_token_ids[-1] if out.new_token_ids else None
            if last is not None and last in state.parsed.stop_token_ids:
                state.stop_reason = last
        if state.parsed.stop and new:
            combined = state.text + new
            # Search only where a stop string could newly appear.
            start = max(0, len(state.text) - max(len(s) for s in state.parsed.stop) + 1)
            cut = min(
                (i for s in state.parsed.stop if (i := combined.find(s, start)) >= 0),
                default=-1,
            )
            if cut >= 0:
                new = combined[len(state.text) : cut] if cut > len(state.text) else ""
                state.text = combined[:cut]
                state.finish_reason = FinishReason.STOP.value
                state.stop_reason = next(
                    s for s in state.parsed.stop if combined.find(s, cut) == cut
                )
                return new
        state.text += new
        return new


# Placeholders cut out of a chunk's encoding to make its template: plain ASCII, so
# msgspec writes them unchanged between quotes.
_TEXT_HOLE = "@@headway:text@@"
_SCHEDULED_AT_HOLE = "@@headway:scheduled_at@@"


@dataclass(frozen=True, slots=True)
class ChunkTemplate:
    """One stream's token chunk (`data: {...}` and the blank line), pre-encoded around
    the two values that change from token to token: the text (a JSON string) and,
    with debug timing, `headway_debug.scheduled_at` (a JSON number).

    Invariant: `data(msgspec.json.encode(text), msgspec.json.encode(t))` is the bytes
    of `b"data: " + msgspec.json.encode(chunk) + b"\n\n"` for the chunk dict the
    template was cut from with that text and time filled in (`cut` splits msgspec's
    own encoding of that dict, so key order and formatting are msgspec's).
    """

    before_text: bytes
    before_scheduled_at: bytes | None  # None: no debug timing, nothing after the text
    end: bytes
    num_fixed_bytes: int  # of the three pieces above

    @classmethod
    def cut(cls, chunk: dict[str, Any]) -> ChunkTemplate | None:
        """The template of `chunk`, whose text is `_TEXT_HOLE` and whose
        `headway_debug.scheduled_at`, if any, is `_SCHEDULED_AT_HOLE`; None if a hole
        (as a whole JSON string) is not found exactly once: a field such as the model
        name happened to be one."""
        encoded = b"data: " + msgspec.json.encode(chunk) + b"\n\n"
        text_hole, time_hole = (msgspec.json.encode(h) for h in (_TEXT_HOLE, _SCHEDULED_AT_HOLE))
        has_time = "headway_debug" in chunk
        if encoded.count(text_hole) != 1 or encoded.count(time_hole) != has_time:
            return None
        before_text, after_text = encoded.split(text_hole)
        before_scheduled_at: bytes | None = None
        if has_time:
            if time_hole not in after_text:
                return None
            before_scheduled_at, after_text = after_text.split(time_hole)
        fixed = len(before_text) + len(before_scheduled_at or b"") + len(after_text)
        return cls(before_text, before_scheduled_at, after_text, fixed)

    def data(self, text_json: bytes, scheduled_at_json: bytes) -> bytes:
        """The chunk with its holes filled."""
        if self.before_scheduled_at is None:
            return self.before_text + text_json + self.end
        return b"".join(
            (self.before_text, text_json, self.before_scheduled_at, scheduled_at_json, self.end)
        )

    def frame(self, text_json: bytes, scheduled_at_json: bytes) -> bytes:
        """`data(...)` framed as one HTTP/1.1 chunk, built in one go."""
        if self.before_scheduled_at is None:
            n = self.num_fixed_bytes + len(text_json)
            return b"%x\r\n%b%b%b\r\n" % (n, self.before_text, text_json, self.end)
        n = self.num_fixed_bytes + len(text_json) + len(scheduled_at_json)
        return b"%x\r\n%b%b%b%b%b\r\n" % (
            n,
            self.before_text,
            text_json,
            self.before_scheduled_at,
            scheduled_at_json,
            self.end,
        )


def _unframe(frame: bytes) -> bytes:
    """The data of one HTTP/1.1 chunk (`size CRLF data CRLF`)."""
    return frame[frame.index(b"\r\n") + 2 : -2]


def write_now(resp: web.StreamResponse, data: bytes) -> None:
    """`await resp.write(data)` run to completion without suspending.

    aiohttp's write hands the bytes to the transport first and only then may wait
    for a drain; with the transport's buffer empty there is nothing to wait for. If
    it ever does suspend, the bytes are already out: stop waiting, the next write
    sees a non-empty buffer and takes the handler's path.
    """
    coro = resp.write(data)
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()


class StreamSink:
    """One streamed request's chunks, rendered and written by the replica's loop.

    Invariant: chunks reach the response in emission order. A chunk is written
    directly only when nothing is queued and the transport's buffer is empty;
    otherwise it is queued for the handler, which is woken for the queue, the end
    of the stream, or an error. The handler ends the stream only once the last
    chunk is settled (its timing recorded after the step's writes), so the last
    token's inter-token latency, and a one-chunk stream's TTFT, are counted.
    """

    def __init__(
        self,
        writer: CompletionWriter,
        handle: RequestHandle,
        state: RequestState,
        drop_after_tokens: int | None,
        head: bytes,
        template: ChunkTemplate | None = None,
    ) -> None:
        self._writer = writer
        self._handle = handle
        self.state = state
        self._drop_after = drop_after_tokens
        self._head = head  # written before the first token (the chat role chunk)
        # The common token chunk pre-encoded (None: every chunk from its dict); a
        # stream with stop strings needs its text, so it never takes the template.
        self._template = template if not state.parsed.stop else None
        # What `prepare` fills in, once the head is out.
        self._fast = self._template if not head else None
        self._token_json = writer.assembler.token_json_cache
        self._resp: web.StreamResponse | None = None
        self._transport: asyncio.Transport | None = None
        # Rendered by prepare, written by emit: the chunk, framed as an HTTP/1.1
        # chunk for the transport once `_is_framed` (then `_out_is_frame`).
        self._out: bytes | None = None
        self._out_is_frame = False
        self._is_chunked = False  # aiohttp frames this response's body in chunks
        # The headers are out and the body is chunked: emit may write framed chunks
        # to the transport itself (`_out`, framed by prepare) instead of via aiohttp.
        self._is_framed = False
        self.queue: deque[bytes] = deque()
        self._is_last = False  # the chunk rendered carries the finish reason
        self.is_finished = False  # the chunk with the finish reason went out
        self.is_settled = True  # the last chunk emitted has its timing recorded
        self.error: BaseException | None = None  # raised in the handler
        self._waiter: asyncio.Future[None] | None = None

    def open(
        self,
        resp: web.StreamResponse,
        transport: asyncio.Transport | None,
        is_chunked: bool = False,
    ) -> None:
        """The response is prepared: chunks may be written directly from now on.
        `is_chunked`: aiohttp sends its body in HTTP/1.1 chunks (its headers say so)."""
        self._resp, self._transport = resp, transport
        self._is_chunked = is_chunked

    def close(self) -> None:
        """The handler is gone: write nothing more."""
        self._resp = self._transport = None
        self._out = None

    def detach(self) -> None:
        """Unlink from the request's handle (no reference cycle left for the GC)."""
        if self._handle.sink is self:
            self._handle.sink = None

    def prepare(self, output: TokenOutput, scheduled_at: float) -> None:
        """Render the chunk of `output` (due at `scheduled_at`, wall clock) for `emit`.

        Per token, in the replica's engine loop: the common chunk (one token with
        text, no finish) is filled into the stream's template, touching as few
        objects as it can; any other is encoded from its dict (`_render`). A failure
        here must end this request (in its handler), never the loop."""
        try:
            template = self._fast
            if template is not None and output.finish_reason is None:
                ids = output.new_token_ids
                if len(ids) == 1:
                    text_json = self._token_json.get(ids[0])
                    if text_json is None:  # not seen yet, or EOS
                        text_json = self._writer.assembler.token_json(ids[0])
                    if text_json is not None:
                        state = self.state
                        state.num_output_tokens = output.num_output_tokens
                        state.num_cached_tokens = output.num_cached_tokens
                        time_json = self._writer.scheduled_at_json(scheduled_at)
                        if self._is_framed:
                            self._out = template.frame(text_json, time_json)
                            self._out_is_frame = True
                        else:
                            self._out = template.data(text_json, time_json)
                            self._out_is_frame = False
                        return
            self._render(output, scheduled_at)
        except Exception as exc:
            log.exception("rendering a chunk of %s failed", self._handle.request_id)
            self._fail(exc)

    def _render(self, output: TokenOutput, scheduled_at: float) -> None:
        writer = self._writer
        state = self.state
        text = writer.assembler.advance(state, output)
        choice = writer._choice(state, text)
        if state.finish_reason is not None:
            choice["finish_reason"] = state.finish_reason
            choice["stop_reason"] = state.stop_reason
            if output.finish_reason is None:
                # A stop string ended it: the engine still holds the sequence.
                writer.replica.finish(self._handle.request_id, FinishReason.STOP)
        parsed = state.parsed
        chunk = writer._chunk(state, [choice])
        if parsed.continuous_usage_stats:
            chunk["usage"] = usage(state, writer.report_cached)
        if parsed.debug_timing:
            chunk["headway_debug"] = {"scheduled_at": scheduled_at}
        data = self._head + b"data: " + msgspec.json.encode(chunk) + b"\n\n"
        if self._head:
            self._head = b""
            self._fast = self._template
        if state.finish_reason is not None:
            self._is_last = True
            if parsed.include_usage:
                final = writer._chunk(state, [])
                final["usage"] = usage(state, writer.report_cached)
                data += b"data: " + msgspec.json.encode(final) + b"\n\n"
            data += SSE_DONE
        if self._is_framed:
            self._out = b"%x\r\n%b\r\n" % (len(data), data)
            self._out_is_frame = True
        else:
            self._out = data
            self._out_is_frame = False

    def emit(self) -> None:
        out = self._out
        if out is None:
            return
        self._out = None
        if self.error is not None:
            # After a failure (a dropped stream, a lost client) nothing more goes out,
            # though the engine may still produce tokens until the handler aborts it.
            return
        self.is_settled = False
        resp, transport = self._resp, self._transport
        if resp is None or self.queue or transport is None or transport.get_write_buffer_size():
            # aiohttp frames what the handler writes.
            self.queue.append(_unframe(out) if self._out_is_frame else out)
            self._wake()
        else:
            try:
                if not self._out_is_frame:
                    write_now(resp, out)
                    # aiohttp sends the headers with the first chunk at the latest.
                    self._is_framed = self._is_chunked
                elif transport.is_closing():
                    raise ConnectionResetError("the connection is closing")
                else:
                    transport.write(out)
            except ConnectionResetError as exc:
                self._fail(exc)
                return
            except Exception as exc:  # never let one stream end the engine loop
                log.exception("writing a chunk of %s failed", self._handle.request_id)
                self._fail(exc)
                return
        if self._is_last:
            self.is_finished = True
            self._wake()
        elif self._drop_after is not None and self.state.num_output_tokens >= self._drop_after:
            self._fail(StreamDropped("fault injection: stream dropped"))

    def settle(self, now: float) -> None:
        self._writer._record_timing(self._handle, self.state, now)
        self.is_settled = True
        if self.is_finished:
            self._wake()

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        self.close()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until there is something for the handler: queued chunks, the settled end,
        an error."""
        while not (self.queue or self.error or (self.is_finished and self.is_settled)):
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class CompletionWriter:
    """Writes one request's response, streaming or not."""

    def __init__(
        self,
        replica: Replica,
        assembler: TextAssembler,
        report_cached_tokens: bool,
        on_first_token: Callable[[float], None],
        on_token_gap: Callable[[float], None],
    ) -> None:
        self.replica = replica
        self.assembler = assembler
        self.report_cached = report_cached_tokens
        self._on_first_token = on_first_token
        self._on_token_gap = on_token_gap
        # The last `scheduled_at` encoded: every stream of a step shares it.
        self._scheduled_at = float("nan")
        self._scheduled_at_json = b""

    def scheduled_at_json(self, scheduled_at: float) -> bytes:
        """`scheduled_at` as JSON (msgspec's float format), encoded once per step."""
        if scheduled_at != self._scheduled_at:
            self._scheduled_at = scheduled_at
            self._scheduled_at_json = msgspec.json.encode(scheduled_at)
        return self._scheduled_at_json

    def _record_timing(self, handle: RequestHandle, state: RequestState, now: float) -> None:
        if handle.first_token_at is None:
            handle.first_token_at = now
            self._on_first_token(now - state.arrived_at(handle))
        elif handle.last_token_at is not None:
            self._on_token_gap(now - handle.last_token_at)
        handle.last_token_at = now

    def _choice(self, state: RequestState, text: str) -> dict[str, Any]:
        if state.parsed.is_chat:
            return {
                "index": 0,
                "delta": {"content": text},
                "logprobs": None,
                "finish_reason": None,
                "stop_reason": None,
            }
        return {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": None,
            "stop_reason": None,
        }

    def _chunk(self, state: RequestState, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": state.response_id,
            "object": "chat.completion.chunk" if state.parsed.is_chat else "text_completion",
            "created": state.created,
            "model": state.model,
            "choices": choices,
        }

    def open_stream(self, handle: RequestHandle) -> web.StreamResponse:
        """The SSE response for a streamed request (prepared by `stream`)."""
        return web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "x-request-id": handle.request_id,
                REPLICA_HEADER: str(self.replica.index),
            },
        )

    def attach_stream(
        self, handle: RequestHandle, state: RequestState, drop_after_tokens: int | None
    ) -> StreamSink:
        """Route `handle`'s emissions to a new sink (before the handler first yields)."""
        parsed = state.parsed
        # vLLM opens a chat stream, when the first token is ready, with a chunk that
        # carries only the assistant role.
        head = b""
        if parsed.is_chat:
            role = self._chunk(state, [self._choice(state, "")])
            role["choices"][0]["delta"] = {"role": "assistant", "content": ""}
            if parsed.continuous_usage_stats:
                role["usage"] = usage(state, self.report_cached)  # 0 completion tokens yet
            head = b"data: " + msgspec.json.encode(role) + b"\n\n"
        template = None
        if not parsed.continuous_usage_stats:  # usage changes with every chunk
            chunk = self._chunk(state, [self._choice(state, _TEXT_HOLE)])
            if parsed.debug_timing:
                chunk["headway_debug"] = {"scheduled_at": _SCHEDULED_AT_HOLE}
            template = ChunkTemplate.cut(chunk)
        sink = StreamSink(self, handle, state, drop_after_tokens, head, template)
        handle.sink = sink
        return sink

    async def stream(
        self, request: web.Request, resp: web.StreamResponse, sink: StreamSink
    ) -> None:
        """Open the SSE response; the replica's loop writes the tokens into it."""
        try:
            # Opening the response (headers, socket options) can wait for a gap between
            # step ends too, though less than a step: tokens emitted meanwhile queue.
            await self.replica.wait_for_gap(
                STREAM_OPEN_WORK_S, min(STREAM_OPEN_MAX_DEFER_S, self.replica.max_defer_s)
            )
            if trace.ON:
                trace.ev("o0", self.replica.index)
            await resp.prepare(request)
            transport = request.transport
            sock = transport.get_extra_info("socket") if transport else None
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            parsed = sink.state.parsed
            if parsed.echo_prompt:
                chunk = self._chunk(sink.state, [self._choice(sink.state, parsed.echo_prompt)])
                await resp.write(b"data: " + msgspec.json.encode(chunk) + b"\n\n")
            while sink.queue:  # emitted while the response was being opened
                await resp.write(sink.queue.popleft())
            sink.open(resp, transport, resp.headers.get("Transfer-Encoding") == "chunked")
            if trace.ON:
                trace.ev("o1", self.replica.index)
            while True:
                await sink.wait()
                if trace.ON and sink.queue:
                    trace.ev("q", self.replica.index, len(sink.queue))
                while sink.queue:
                    await resp.write(sink.queue.popleft())
                if sink.error is not None:
                    raise sink.error
                if sink.is_finished and sink.is_settled and not sink.queue:
                    break
            # Every token is out: closing the response (and the handler's bookkeeping
            # after it) can wait for a gap between the replicas' step ends.
            await self.replica.wait_for_gap(STREAM_END_WORK_S, STREAM_END_MAX_DEFER_S)
            if trace.ON:
                trace.ev("e0", self.replica.index)
        finally:
            sink.close()
            sink.detach()
        await resp.write_eof()

    async def whole(
        self, handle: RequestHandle, state: RequestState, drop_after_tokens: int | None
    ) -> web.Response:
        while state.finish_reason is None:
            emission = await handle.next()
            self._record_timing(handle, state, clock.now())
            self.assembler.advance(state, emission.output)
            if state.finish_reason is not None and emission.output.finish_reason is None:
                self.replica.finish(handle.request_id, FinishReason.STOP)
            if drop_after_tokens is not None and state.num_output_tokens >= drop_after_tokens:
                raise StreamDropped("fault injection: connection dropped")
        parsed = state.parsed
        if parsed.is_chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": state.text, "tool_calls": []},
                "logprobs": None,
                "finish_reason": state.finish_reason,
                "stop_reason": state.stop_reason,
            }
            obj = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": parsed.echo_prompt + state.text,
                "logprobs": None,
                "finish_reason": state.finish_reason,
                "stop_reason": state.stop_reason,
            }
            obj = "text_completion"
        body = {
            "id": state.response_id,
            "object": obj,
            "created": state.created,
            "model": state.model,
            "choices": [choice],
            "usage": usage(state, self.report_cached),
        }
        return web.Response(
            body=msgspec.json.encode(body),
            content_type="application/json",
            headers={"x-request-id": handle.request_id, REPLICA_HEADER: str(self.replica.index)},
        )
