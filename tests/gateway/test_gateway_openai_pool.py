"""The `openai` pool kind (hosted OpenAI-compatible providers): the upstream key from
an environment variable or a file, sent as `Authorization: Bearer`, never logged,
never in an error; no scraping, no KV events."""

from __future__ import annotations

import json
import logging
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from gateway_harness import InProcessGateway, ThreadedUpstream, self_signed_cert, start_serve
from sim_harness import get, post

from headway.gateway.accounting import ACCESS_LOGGER
from headway.gateway.config import GatewayConfigError, config_from_mapping

KEY = "sk-hosted-SECRET-0123456789"
ENV = "HEADWAY_TEST_PROVIDER_KEY"
MODEL = "gpt-test-mini"


class HostedProvider(ThreadedUpstream):
    """Answers like a hosted API: 401 quoting the key it got unless it is `KEY`
    (some providers echo it), 500 quoting it for requests with `user: boom`."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(ssl_context)
        self.authorizations: list[str | None] = []

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization")
        self.authorizations.append(auth)
        body = await request.json()
        if auth != f"Bearer {KEY}" or body.get("user") == "boom":
            status = 401 if auth != f"Bearer {KEY}" else 500
            message = f"Incorrect API key provided: {auth}"
            return web.json_response({"error": {"message": message}}, status=status)
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for text in ("a", "b"):
                chunk = {"choices": [{"index": 0, "text": text}], "usage": None}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            return resp
        return web.json_response({"choices": [{"index": 0, "text": "ab"}], "usage": usage})

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/completions", self._handle)
        app.router.add_get("/metrics", self._no_metrics)

    async def _no_metrics(self, request: web.Request) -> web.Response:
        raise AssertionError("an openai pool is never scraped")


@pytest.fixture(scope="module")
def provider() -> Iterator[HostedProvider]:
    p = HostedProvider().start()
    yield p
    p.stop()


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def all_logs() -> Iterator[_Lines]:
    """Every log line of the gateway and its access log, at every level."""
    handler = _Lines()
    root = logging.getLogger()
    loggers = [logging.getLogger("headway"), logging.getLogger(ACCESS_LOGGER)]
    levels = [lg.level for lg in loggers]
    root.addHandler(handler)  # both propagate to the root (nothing set them up here)
    for lg in loggers:
        lg.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _pool(url: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "engine": "openai", "endpoints": [url], **extra}


@pytest.mark.parametrize("source", ["env", "file"])
def test_key_sent_upstream_never_logged(
    provider: HostedProvider,
    all_logs: _Lines,
    source: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if source == "env":
        monkeypatch.setenv(ENV, KEY)
        extra = {"api_key_env": ENV}
    else:
        (tmp_path / "key").write_text(KEY + "\n")
        extra = {"api_key_file": str(tmp_path / "key")}
    config = config_from_mapping({"pools": [_pool(provider.url, **extra)]})
    assert KEY not in repr(config)
    gw = InProcessGateway(config).start()
    try:
        assert gw.gateway.scraper.endpoints == () and gw.gateway.kv_subscriber is None
        client_auth = {"Authorization": "Bearer client-key"}
        ok = post(gw.url, "/v1/completions", {"model": MODEL, "prompt": "x"}, headers=client_auth)
        assert ok.status == 200 and provider.authorizations[-1] == f"Bearer {KEY}"
        stream = post(gw.url, "/v1/completions", {"model": MODEL, "prompt": "x", "stream": True})
        assert stream.status == 200 and b"[DONE]" in stream.body
        # A 500 quoting the key: a 502 whose message must not carry it.
        failed = post(gw.url, "/v1/completions", {"model": MODEL, "prompt": "x", "user": "boom"})
        assert failed.status == 502 and "Incorrect API key" in failed.text
        assert get(gw.url, "/metrics").status == 200
        seen = [ok.text, stream.text, failed.text, get(gw.url, "/metrics").text, *all_logs.lines]
        assert all(KEY not in x for x in seen)
        access = [json.loads(x) for x in all_logs.lines if x.startswith('{"ts"')]
        assert [a["status"] for a in access] == [200, 200, 502]
        assert access[1]["completion_tokens"] == 2
    finally:
        gw.stop()


def test_provider_error_quoting_the_key_is_redacted(
    provider: HostedProvider, all_logs: _Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "sk-wrong-key-that-the-provider-echoes"
    monkeypatch.setenv(ENV, wrong)
    gw = InProcessGateway({"pools": [_pool(provider.url, api_key_env=ENV)]}).start()
    try:
        resp = post(gw.url, "/v1/completions", {"model": MODEL, "prompt": "x"})
        assert resp.status == 401  # relayed, with the quoted key taken out
        assert wrong not in resp.text and "[redacted]" in resp.text
        assert all(wrong not in line for line in all_logs.lines)
    finally:
        gw.stop()


@pytest.mark.parametrize(
    ("extra", "path", "message"),
    [
        (
            {"api_key_env": "HEADWAY_TEST_UNSET_VAR"},
            "pools[0].api_key_env",
            "HEADWAY_TEST_UNSET_VAR is unset",
        ),
        (
            {"api_key_file": "/nonexistent/key"},
            "pools[0].api_key_file",
            "cannot read /nonexistent/key",
        ),
        ({"api_key_env": ENV, "api_key_file": "/x"}, "pools[0].api_key_env", "not both"),
        ({"engine": "vllm", "api_key_env": ENV}, "pools[0].api_key_env", "engine: openai"),
        (
            {"endpoints": [{"url": "https://api.example.com", "kv_events": "tcp://a:1"}]},
            "pools[0].endpoints[0].kv_events",
            "no KV events",
        ),
    ],
    ids=["env-unset", "file-missing", "both", "not-openai", "kv-events"],
)
def test_key_config_errors(
    extra: dict[str, Any], path: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, KEY)
    monkeypatch.delenv("HEADWAY_TEST_UNSET_VAR", raising=False)
    with pytest.raises(GatewayConfigError) as err:
        config_from_mapping({"pools": [_pool("https://api.example.com", **extra)]})
    assert err.value.path == path and message in err.value.message
    assert KEY not in str(err.value)


def test_empty_key_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("\n")
    with pytest.raises(GatewayConfigError, match=r"^pools\[0\]\.api_key_file: .* is empty"):
        config_from_mapping({"pools": [_pool("https://x", api_key_file=str(tmp_path / "key"))]})


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_provider_from_a_real_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed_cert(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    provider = HostedProvider(tls).start()
    try:
        assert provider.url.startswith("https://")
        config = tmp_path / "gateway.yaml"
        config.write_text(json.dumps({"pools": [_pool(provider.url, api_key_env=ENV)]}))
        monkeypatch.setenv(ENV, KEY)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the gateway trusts the test's CA
        gw = start_serve(tmp_path, "--config", str(config), "--log-level", "DEBUG")
        try:
            resp = post(gw.url, "/v1/completions", {"model": MODEL, "prompt": "x", "stream": True})
            assert resp.status == 200 and b"[DONE]" in resp.body
            assert provider.authorizations[-1] == f"Bearer {KEY}"
        finally:
            assert gw.stop() == 0, gw.stderr()
        err = gw.stderr()  # the access log (stderr by default) and DEBUG logs
        assert '"status":200' in err and KEY not in err
    finally:
        provider.stop()
