"""What exactly goes upstream and comes back, checked against a stub upstream that
records every request: original bytes pass through untouched, the gateway changes the
body only to ask for usage or to resolve an alias, and forwards the tracing headers;
an upstream that stalls mid-stream ends the client's stream with an SSE error event."""

from __future__ import annotations

import asyncio
import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from gateway_harness import InProcessGateway, ThreadedUpstream, pool
from sim_harness import get, post

TOKEN = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
DONE = b"data: [DONE]\n\n"
ANSWER = {"id": "x", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}


class StubUpstream(ThreadedUpstream):
    """An OpenAI-ish upstream in its own thread that records what it receives."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[dict[str, str], bytes]] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(({k.lower(): v for k, v in request.headers.items()}, body))
        data = json.loads(body)
        if data.get("model") == "status-503":
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        if not data.get("stream"):
            return web.json_response(ANSWER)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(TOKEN)
        if data.get("model") == "stall":
            await asyncio.sleep(30)
        if (data.get("stream_options") or {}).get("include_usage"):
            await resp.write(USAGE)
        await resp.write(DONE)
        await resp.write_eof()
        return resp

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/completions", self._handle)


@pytest.fixture(scope="module")
def stub() -> Iterator[StubUpstream]:
    s = StubUpstream().start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def gateway(stub: StubUpstream) -> Iterator[InProcessGateway]:
    gw = InProcessGateway(
        {
            "pools": [
                pool("m", [stub.url], aliases=["m-alias"], lora_adapters=["m-sql-lora"]),
                pool("stall", [stub.url]),
                pool("status-503", [stub.url]),
            ],
            "timeouts": {"idle_s": 0.3},
        }
    ).start()
    yield gw
    gw.stop()


def send(gw: InProcessGateway, body: bytes, headers: dict[str, str] | None = None) -> Any:
    return post(gw.url, "/v1/chat/completions", body,
                headers={"Content-Type": "application/json", **(headers or {})})  # fmt: skip


def test_non_streaming_body_bytes_pass_through_untouched(
    stub: StubUpstream, gateway: InProcessGateway
) -> None:
    # Odd spacing, key order and fields the gateway does not know must survive.
    body = (
        b'{ "tools":[{"type":"function","function":{"name":"f"}}],  "model":"m",'
        b' "messages":[{"role":"user","content":"hi"}], "response_format":{"type":"json_object"},'
        b' "engine_specific": {"x": [1, 2.50, null]} }'
    )
    resp = send(gateway, body)
    assert resp.status == 200, resp.text
    assert resp.json() == ANSWER
    assert stub.received[-1][1] == body


def test_streaming_with_usage_requested_passes_through_untouched(
    stub: StubUpstream, gateway: InProcessGateway
) -> None:
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}'
    resp = send(gateway, body)
    assert resp.body == TOKEN + USAGE + DONE
    assert stub.received[-1][1] == body


def test_streaming_without_usage_asks_upstream_and_strips_it(
    stub: StubUpstream, gateway: InProcessGateway
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "tools": [{"type": "function"}], "stream_options": {"continuous_usage_stats": False}}  # fmt: skip
    resp = send(gateway, json.dumps(body).encode())
    assert resp.body == TOKEN + DONE
    sent = json.loads(stub.received[-1][1])
    assert sent == {
        **body,
        "stream_options": {"continuous_usage_stats": False, "include_usage": True},
    }


def test_alias_is_resolved_to_the_pool_model(stub: StubUpstream, gateway: InProcessGateway) -> None:
    body = {"model": "m-alias", "messages": [{"role": "user", "content": "hi"}], "seed": 7}
    assert send(gateway, json.dumps(body).encode()).status == 200
    assert json.loads(stub.received[-1][1]) == {**body, "model": "m"}


def test_tracing_headers_forwarded(stub: StubUpstream, gateway: InProcessGateway) -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    resp = send(gateway, body, {"traceparent": tp, "tracestate": "k=v", "x-request-id": "rid-9"})
    assert resp.headers["x-request-id"] == "rid-9"
    headers = stub.received[-1][0]
    assert headers["traceparent"] == tp and headers["tracestate"] == "k=v"
    assert headers["x-request-id"] == "rid-9"


def test_upstream_5xx_before_any_byte_is_502(gateway: InProcessGateway) -> None:
    resp = send(gateway, b'{"model":"status-503","messages":[{"role":"user","content":"hi"}]}')
    assert resp.status == 502
    assert "answered 503: overloaded" in resp.json()["error"]["message"]


def test_upstream_idle_mid_stream_ends_with_sse_error(gateway: InProcessGateway) -> None:
    parts = urlsplit(gateway.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("POST", "/v1/chat/completions",
                 body=b'{"model":"stall","messages":[{"role":"user","content":"hi"}],"stream":true}',
                 headers={"Content-Type": "application/json"})  # fmt: skip
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    assert raw.startswith(TOKEN)
    last = json.loads(raw.decode().split("\n\n")[-2].removeprefix("data: "))
    assert last["error"]["code"] == 504 and "next chunk" in last["error"]["message"]


def test_lora_adapter_is_forwarded_by_name_and_routed_as_such(
    stub: StubUpstream, gateway: InProcessGateway
) -> None:
    router = gateway.gateway.router.pool_router("m")
    seen: list[Any] = []
    decide = router.decide

    def recording(ctx: Any, snapshots: Any) -> Any:
        seen.append(ctx)
        return decide(ctx, snapshots)

    router.decide = recording  # type: ignore[method-assign]
    try:
        for model, adapter in (("m-sql-lora", "m-sql-lora"), ("m-alias", None)):
            body = json.dumps({"model": model, "messages": [{"role": "user", "content": "x"}]})
            resp = send(gateway, body.encode())
            assert resp.status == 200, resp.text
            upstream_model = json.loads(stub.received[-1][1])["model"]
            # An adapter keeps its name upstream (the engine serves it by that name);
            # an alias becomes the pool's model.
            assert upstream_model == (adapter or "m")
            assert seen[-1].lora_adapter == adapter and seen[-1].model == "m"
            assert seen[-1].block_hashes == ()  # LoRA extra keys unknown; no pool KV events
    finally:
        router.decide = decide  # type: ignore[method-assign]
    models = {m["id"] for m in json.loads(get(gateway.url, "/v1/models").body)["data"]}
    assert {"m", "m-alias", "m-sql-lora"} <= models


@pytest.mark.parametrize(
    "prompt",
    [[2**70, -5, 3] * 40, [{"weird": 1}], ["a", "b"], "x" * 5000],
    ids=["huge-and-negative-token-ids", "not-a-prompt", "batched", "long-text"],
)
def test_any_prompt_shape_is_forwarded_not_a_gateway_error(
    stub: StubUpstream, gateway: InProcessGateway, prompt: Any
) -> None:
    # Prefix keys are best effort: what the gateway cannot read, the engine judges.
    body = json.dumps({"model": "m", "prompt": prompt}).encode()
    resp = post(gateway.url, "/v1/completions", body, headers={"Content-Type": "application/json"})
    assert resp.status == 200, resp.text
    assert stub.received[-1][1] == body
