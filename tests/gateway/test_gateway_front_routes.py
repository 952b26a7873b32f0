"""The gateway's routes on its lean front server (gateway/h1_server.py): which method
and target reach which handler, what is sent upstream, and the 404/405/417 answers,
through the standard library's HTTP client."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from gateway_harness import InProcessGateway, ThreadedUpstream, pool

MODEL = "direct-model"
_ANSWER = {
    "id": "cmpl-1",
    "object": "chat.completion",
    "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


class _Upstream(ThreadedUpstream):
    """Answers both completion routes and records the paths it was asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def add_routes(self, app: web.Application) -> None:
        async def answer(request: web.Request) -> web.Response:
            self.paths.append(request.path_qs)
            await request.read()
            return web.json_response(_ANSWER)

        app.router.add_post("/v1/chat/completions", answer)
        app.router.add_post("/v1/completions", answer)


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[InProcessGateway, _Upstream]]:
    upstream = _Upstream().start()
    gw = InProcessGateway(
        {
            "pools": [pool(MODEL, [upstream.url], routing="round-robin")],
            "access_log": {"enabled": False},
        }
    ).start()
    try:
        yield gw, upstream
    finally:
        gw.stop()
        upstream.stop()


def _request(
    url: str, method: str, target: str, body: dict[str, Any] | None, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(
            method, target, body=data, headers={"Content-Type": "application/json", **headers}
        )
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1}
_TEXT = {"model": MODEL, "prompt": "hello", "max_tokens": 1}


@pytest.mark.parametrize(
    ("method", "target", "body", "headers", "status", "upstream_path", "allow"),
    [
        ("POST", "/v1/chat/completions", _CHAT, {}, 200, "/v1/chat/completions", None),
        ("POST", "/v1/completions", _TEXT, {}, 200, "/v1/completions", None),
        # The query string is not part of the route, nor sent upstream.
        ("POST", "/v1/chat/completions?x=1", _CHAT, {}, 200, "/v1/chat/completions", None),
        (
            "POST",
            "/v1/chat/completions",
            _CHAT,
            {"Expect": "100-continue"},
            200,
            "/v1/chat/completions",
            None,
        ),
        ("POST", "/v1/chat/completions", _CHAT, {"Expect": "something-else"}, 417, None, None),
        ("POST", "/v1/chat%2Fcompletions", _CHAT, {}, 404, None, None),
        ("POST", "/v1/chat/completions/", _CHAT, {}, 404, None, None),
        ("GET", "/v1/chat/completions", None, {}, 405, None, "POST"),
        ("POST", "/v1/models", _CHAT, {}, 405, None, "GET, HEAD"),
        ("GET", "/v1/models", None, {}, 200, None, None),
        ("HEAD", "/health", None, {}, 200, None, None),
        ("GET", "/nowhere", None, {}, 404, None, None),
    ],
    ids=[
        "chat",
        "completions",
        "query-string",
        "expect-continue",
        "expect-other",
        "escaped-slash",
        "trailing-slash",
        "get-completions",
        "post-to-models",
        "models",
        "head-health",
        "unknown-path",
    ],
)
def test_routes(
    gateway: tuple[InProcessGateway, _Upstream],
    method: str,
    target: str,
    body: dict[str, Any] | None,
    headers: dict[str, str],
    status: int,
    upstream_path: str | None,
    allow: str | None,
) -> None:
    gw, upstream = gateway
    upstream.paths.clear()
    got_status, got_headers, data = _request(gw.url, method, target, body, headers)
    assert got_status == status, data
    assert upstream.paths == ([] if upstream_path is None else [upstream_path])
    assert got_headers.get("Allow") == allow
    if method == "HEAD":
        assert data == b""
    elif status == 200 and upstream_path is not None:
        assert json.loads(data)["choices"][0]["message"]["content"] == "hi"
    elif status == 200:
        assert json.loads(data)["data"][0]["id"] == MODEL
    else:
        assert json.loads(data)["error"]["code"] == status
