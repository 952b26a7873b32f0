"""The completion routes' shortcut past aiohttp's router (`_route_completions_directly`):
exactly `POST /v1/chat/completions` and `POST /v1/completions` skip it; every other
request (query string, %-escapes, other methods and paths, `Expect`) is answered as
the router answers it."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from gateway_harness import InProcessGateway, ThreadedUpstream, pool

from headway.gateway import server

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
) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(
            method, target, body=data, headers={"Content-Type": "application/json", **headers}
        )
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


_CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1}
_TEXT = {"model": MODEL, "prompt": "hello", "max_tokens": 1}


@pytest.mark.parametrize(
    ("method", "target", "body", "headers", "status", "is_direct", "upstream_path"),
    [
        ("POST", "/v1/chat/completions", _CHAT, {}, 200, True, "/v1/chat/completions"),
        ("POST", "/v1/completions", _TEXT, {}, 200, True, "/v1/completions"),
        # The router's answers, as before the shortcut.
        ("POST", "/v1/chat/completions?x=1", _CHAT, {}, 200, False, "/v1/chat/completions"),
        (
            "POST",
            "/v1/chat/completions",
            _CHAT,
            {"Expect": "100-continue"},
            200,
            False,
            "/v1/chat/completions",
        ),
        ("POST", "/v1/chat/completions", _CHAT, {"Expect": "something-else"}, 417, False, None),
        ("POST", "/v1/chat%2Fcompletions", _CHAT, {}, 405, False, None),  # as before
        ("POST", "/v1/chat/completions/", _CHAT, {}, 404, False, None),
        ("GET", "/v1/chat/completions", None, {}, 405, False, None),
        ("POST", "/v1/models", _CHAT, {}, 405, False, None),
    ],
    ids=[
        "chat",
        "completions",
        "query-string",
        "expect-continue",
        "expect-other",
        "escaped-slash",
        "trailing-slash",
        "get",
        "post-to-models",
    ],
)
def test_only_exact_completion_posts_skip_the_router(
    gateway: tuple[InProcessGateway, _Upstream],
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    target: str,
    body: dict[str, Any] | None,
    headers: dict[str, str],
    status: int,
    is_direct: bool,
    upstream_path: str | None,
) -> None:
    gw, upstream = gateway
    resolved: list[str] = []
    original = web.UrlDispatcher.resolve
    gateway_host = urlsplit(gw.url).netloc

    async def counting_resolve(self: web.UrlDispatcher, request: web.Request) -> Any:
        if request.host == gateway_host:  # not the upstream's (same process)
            resolved.append(request.raw_path)
        return await original(self, request)

    monkeypatch.setattr(web.UrlDispatcher, "resolve", counting_resolve)
    upstream.paths.clear()
    got_status, data = _request(gw.url, method, target, body, headers)
    assert got_status == status, data
    assert resolved == ([] if is_direct else [target])
    assert upstream.paths == ([] if upstream_path is None else [upstream_path])
    if status == 200:
        assert json.loads(data)["choices"][0]["message"]["content"] == "hi"
    elif status != 417:  # aiohttp's expect handler answers without a body
        assert json.loads(data)["error"]["code"] == status


@web.middleware
async def _passthrough(request: web.Request, handler: Any) -> web.StreamResponse:
    return await handler(request)  # type: ignore[no-any-return]


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    pass


@pytest.mark.parametrize(
    ("middlewares", "with_signal", "is_shortcut"),
    [((), False, True), ((_passthrough,), False, False), ((), True, False)],
    ids=["plain-app", "middleware", "response-prepare-signal"],
)
def test_no_shortcut_past_a_middleware_or_signal(
    middlewares: tuple[Any, ...], with_signal: bool, is_shortcut: bool
) -> None:
    app = web.Application(middlewares=middlewares)
    if with_signal:
        app.on_response_prepare.append(_on_prepare)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response()

    server._route_completions_directly(app, {"/v1/completions": handler})
    assert ("_handle" in vars(app)) is is_shortcut
