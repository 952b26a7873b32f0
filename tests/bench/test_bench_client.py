"""The streaming client against a tiny in-test aiohttp server whose chunks are known.

Timestamps come from a fake clock that ticks 1.0 per reading, so which SSE message
got which stamp is exact: the send is one tick, then each `data:` message one tick."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from headway.bench.client import StreamingClient
from headway.core.serving_metrics import RequestRecord
from headway.core.workloads import Call, ChatMessage

CALL = Call("c0", (ChatMessage("user", "hello there"),), max_tokens=5, prompt_tokens=10)


def usage(completion: int, cached: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt_tokens": 10, "completion_tokens": completion}
    if cached is not None:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def chunk(
    content: str | None = None,
    role: str | None = None,
    finish: str | None = None,
    u: dict[str, Any] | None = None,
) -> bytes:
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    body: dict[str, Any] = {
        "id": "x",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if u is not None:
        body["usage"] = u
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def usage_chunk(u: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps({"id": "x", "choices": [], "usage": u}).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


@dataclass
class Stub:
    """Answers each POST with `script(body)`: a status and a list of SSE writes."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    handler: Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]] | None = None


async def _stream(request: web.Request, parts: list[bytes]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for part in parts:
        await resp.write(part)
    await resp.write_eof()
    return resp


@pytest.fixture
async def stub() -> AsyncIterator[tuple[Stub, str]]:
    state = Stub()

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        state.bodies.append(body)
        assert state.handler is not None
        return await state.handler(request, body)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield state, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def ticking_clock() -> Callable[[], float]:
    counter = itertools.count()
    return lambda: float(next(counter))


class WordTokenizer:
    vocab_size = 100
    eos_token_id = 0

    def encode(self, text: str) -> list[int]:
        return [1] * len(text.split())

    def decode(self, token_ids: Any) -> str:
        return ""


def client(url: str, **kw: Any) -> StreamingClient:
    return StreamingClient(url, "m", max_connections=4, clock=ticking_clock(), **kw)


async def test_timing_of_role_empty_multi_token_and_usage_chunks(stub: tuple[Stub, str]) -> None:
    state, url = stub

    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await _stream(
            request,
            [
                b": ping\n\n",  # an SSE comment: not a message
                chunk(role="assistant", content="", u=usage(0)),  # tick 2: first choice
                chunk(content="Hello", u=usage(1)),  # tick 3: first content
                chunk(content="", u=usage(2)),  # tick 4: a special token, no text
                chunk(content=" big world", u=usage(5)),  # tick 5: three tokens
                chunk(content="", finish="length", u=usage(5)),  # tick 6: nothing new
                usage_chunk(usage(5, cached=7)),  # tick 7: usage only
                DONE,
            ],
        )

    state.handler = handler
    async with client(url) as c:
        result = await c.call(CALL, "s0")
    r = result.record
    # tick 0: the first stamp before the attempt, tick 1: the send.
    assert r.sent_at == 1.0
    assert (r.first_choice_at, r.first_content_at) == (2.0, 3.0)
    assert r.chunk_times == (3.0, 4.0, 5.0)
    assert r.chunk_tokens == (1, 1, 3)
    assert r.last_token_at == 5.0  # not the usage chunk
    assert (r.prompt_tokens, r.output_tokens, r.cached_tokens) == (10, 5, 7)
    assert (r.error, r.status) == (None, 200)
    assert result.answer_text == "Hello big world"
    sent = state.bodies[0]
    assert sent["stream"] is True and sent["max_tokens"] == 5 and sent["ignore_eos"] is True
    assert sent["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
    assert sent["messages"] == [{"role": "user", "content": "hello there"}]
    assert sent["model"] == "m"


@pytest.mark.parametrize(
    ("rejected", "message", "field_left_out"),
    [
        ("continuous", "stream_options.continuous_usage_stats is not supported", "continuous"),
        ("ignore_eos", "Unrecognized request argument supplied: ignore_eos", "ignore_eos"),
    ],
    ids=["continuous-usage", "ignore-eos"],
)
async def test_rejected_field_is_dropped_and_remembered(
    stub: tuple[Stub, str], rejected: str, message: str, field_left_out: str
) -> None:
    state, url = stub

    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        is_rejected = (
            body["stream_options"].get("continuous_usage_stats")
            if rejected == "continuous"
            else body.get("ignore_eos")
        )
        if is_rejected:
            return web.json_response({"error": {"message": message}}, status=400)
        return await _stream(
            request,
            [chunk(role="assistant", content=""), chunk(content="a b"), chunk(content=" c")]
            + ([usage_chunk(usage(3))] if rejected == "ignore_eos" else [])
            + [DONE],
        )

    state.handler = handler
    tokenizer = WordTokenizer()
    async with client(url, tokenizer=tokenizer) as c:
        first = (await c.call(CALL, "s0")).record
        second = (await c.call(CALL, "s0")).record
    assert len(state.bodies) == 3  # one rejected attempt, then two accepted calls
    for r in (first, second):
        assert r.error is None
        assert r.chunk_tokens is None  # no usage on the content chunks
        assert r.output_tokens == 3  # final usage, or the tokenizer's count of "a b c"
    if field_left_out == "continuous":
        assert state.bodies[2]["stream_options"] == {"include_usage": True}
        assert state.bodies[2]["ignore_eos"] is True
    else:
        assert "ignore_eos" not in state.bodies[2]
    # The rejected attempt is not timed: the call's send is the retry's.
    assert first.sent_at == 2.0


async def _hang(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(chunk(role="assistant", content=""))
    await asyncio.sleep(30)
    return resp


async def _drop(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    await resp.write(chunk(role="assistant", content="") + chunk(content="x"))
    assert request.transport is not None
    request.transport.close()
    return resp


def _status(status: int) -> Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"error": {"message": "no"}}, status=status)

    return handler


def _parts(*parts: bytes) -> Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await _stream(request, list(parts))

    return handler


@pytest.mark.parametrize(
    ("handler", "kind", "status", "num_chunks"),
    [
        (_status(429), "http_429", 429, 0),
        (_status(404), "http_4xx", 404, 0),
        (_status(503), "http_5xx", 503, 0),
        (_drop, "connection", None, 1),
        (
            _parts(
                chunk(role="assistant", content=""), b'data: {"error": {"message": "boom"}}\n\n'
            ),
            "stream_error",
            200,
            0,
        ),
        (_parts(chunk(content="a"), b"data: {not json\n\n"), "invalid_stream", 200, 1),
        (_parts(chunk(content="a")), "invalid_stream", 200, 1),  # no [DONE]
        (_parts(usage_chunk(usage(0)), DONE), "invalid_stream", 200, 0),  # no choices at all
        (_hang, "timeout", None, 0),
    ],
    ids=[
        "429",
        "4xx",
        "5xx",
        "dropped-mid-stream",
        "error-event",
        "bad-json",
        "no-done",
        "no-choices",
        "timeout",
    ],
)
async def test_failures_are_classified(
    stub: tuple[Stub, str],
    handler: Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]],
    kind: str,
    status: int | None,
    num_chunks: int,
) -> None:
    state, url = stub
    state.handler = handler
    sink: list[RequestRecord] = []
    async with StreamingClient(url, "m", max_connections=2, timeout_s=0.5, sink=sink) as c:
        result = await c.call(CALL, "s0")
    assert result.record.error == kind
    assert result.record.status == status
    assert len(result.record.chunk_times) == num_chunks
    assert sink == [result.record]


async def test_connection_refused_is_a_connection_failure() -> None:
    # A port that was just free: bind, read the port, close.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with StreamingClient(f"http://127.0.0.1:{port}", "m", max_connections=1) as c:
        result = await c.call(CALL, "s0")
    assert result.record.error == "connection"


async def test_cancelled_call_is_recorded_then_cancellation_propagates(
    stub: tuple[Stub, str],
) -> None:
    state, url = stub
    state.handler = _hang
    sink: list[RequestRecord] = []
    async with StreamingClient(url, "m", max_connections=1, sink=sink) as c:
        task = asyncio.ensure_future(c.call(CALL, "s7"))
        while not state.bodies:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [(r.call_id, r.session_id, r.error) for r in sink] == [("c0", "s7", "cancelled")]


async def test_messages_split_across_network_reads(stub: tuple[Stub, str]) -> None:
    state, url = stub

    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        whole = chunk(content="ab", u=usage(1)) + chunk(content="cd", u=usage(2)) + DONE
        for i in range(0, len(whole), 7):  # cut mid-line, mid-JSON, mid-separator
            await resp.write(whole[i : i + 7])
            await asyncio.sleep(0.002)
        await resp.write_eof()
        return resp

    state.handler = handler
    async with client(url) as c:
        result = await c.call(CALL, "s0")
    assert result.record.error is None
    assert result.answer_text == "abcd"
    assert result.record.chunk_tokens == (1, 1)


async def test_headers_of_the_call_are_sent(stub: tuple[Stub, str]) -> None:
    state, url = stub
    seen: list[str | None] = []

    async def handler(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        seen.append(request.headers.get("x-session-id"))
        return await _stream(request, [chunk(content="a", u=usage(1)), DONE])

    state.handler = handler
    call = Call("c1", CALL.messages, 1, 10, headers=(("x-session-id", "abc"),))
    async with client(url) as c:
        r = (await c.call(call, "s0")).record
    assert seen == ["abc"]
    assert r.error is None and r.first_choice_at == r.first_content_at
