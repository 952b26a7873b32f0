"""Every error the gateway returns is OpenAI-shaped JSON with the right status."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import MODEL, Fleets
from gateway_harness import InProcessGateway, closed_port_url, pool
from sim_harness import post

MAX_BODY_BYTES = 4096
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gateway(fleets: Fleets) -> Iterator[InProcessGateway]:
    gw = InProcessGateway(
        {
            "pools": [
                pool(MODEL, fleets.main.urls),
                pool("empty-model", []),
                pool("dead-model", [closed_port_url()]),
                pool("error-model", fleets.error.urls),
                pool("hang-model", fleets.hang.urls),
            ],
            "limits": {"max_body_bytes": MAX_BODY_BYTES},
            "timeouts": {"connect_s": 2, "ttft_s": 0.3, "total_s": 0.6},
        }
    ).start()
    yield gw
    gw.stop()


@dataclass(frozen=True)
class Case:
    path: str
    body: Any  # bytes as they are; anything else JSON-encoded
    status: int
    message: str  # a substring of error.message
    param: str | None = None


def chat(model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, "max_tokens": 2, **extra}


CASES = {
    "malformed-json": Case(CHAT, b'{"model": ', 400, "malformed JSON"),
    "empty-body": Case(CHAT, b"", 400, "empty"),
    "body-not-object": Case(CHAT, [1, 2], 400, "must be a JSON object"),
    "missing-model": Case(CHAT, {"messages": MESSAGES}, 400, "model", "model"),
    "model-not-string": Case(CHAT, {"model": 3, "messages": MESSAGES}, 400, "model", "model"),
    "missing-messages": Case(CHAT, {"model": MODEL}, 400, "messages", "messages"),
    "messages-not-list": Case(
        CHAT, {"model": MODEL, "messages": "hi"}, 400, "messages", "messages"
    ),
    "missing-prompt": Case(COMPLETIONS, {"model": MODEL}, 400, "prompt", "prompt"),
    "stream-not-bool": Case(CHAT, chat(stream="yes"), 400, "stream", "stream"),
    "unknown-model": Case(CHAT, chat("no-such-model"), 404, "does not exist", "model"),
    "body-over-limit": Case(CHAT, chat(pad="x" * MAX_BODY_BYTES), 413, "over the limit"),
    "no-endpoint": Case(CHAT, chat("empty-model"), 503, "no endpoint"),
    "upstream-unreachable": Case(CHAT, chat("dead-model"), 502, "unreachable"),
    "upstream-5xx": Case(CHAT, chat("error-model"), 502, "answered 500"),
    "upstream-timeout": Case(CHAT, chat("hang-model"), 504, "did not answer in time"),
    "upstream-timeout-streaming": Case(
        CHAT, chat("hang-model", stream=True), 504, "did not answer in time"
    ),
    "upstream-4xx-passed-through": Case(
        COMPLETIONS, {"model": MODEL, "prompt": "x", "max_tokens": 100000}, 400, "context length"
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_error_table(gateway: InProcessGateway, case: Case) -> None:
    resp = post(
        gateway.url,
        case.path,
        case.body,
        headers={"Content-Type": "application/json", "x-request-id": "err-1"},
    )
    assert resp.status == case.status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert case.message in err["message"]
    if case.param is not None:
        assert err["param"] == case.param
    assert "Traceback" not in resp.text
    assert resp.headers["x-request-id"] == "err-1"
    assert gateway.num_in_flight() == 0


def test_unknown_route_and_method_are_openai_shaped(gateway: InProcessGateway) -> None:
    resp = post(gateway.url, "/v1/nope", {})
    assert resp.status == 404
    assert resp.json()["error"]["code"] == 404
    resp = post(gateway.url, "/v1/models", {})
    assert resp.status == 405
    assert resp.json()["error"]["code"] == 405
