"""The relay through the official `openai` client against a real `headway sim`
fleet: chat and completions, streamed and not, usage handling, request ids, routing."""

from __future__ import annotations

import http.client
import itertools
import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from conftest import MODEL, Fleets
from gateway_harness import InProcessGateway, pool
from openai import OpenAI
from sim_harness import get, openai_client, poll, post, scrape

MESSAGES = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def client(rr_gateway: InProcessGateway) -> OpenAI:
    return openai_client(rr_gateway.url)


def test_chat_non_streaming(client: OpenAI) -> None:
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert out.choices[0].message.content
    assert out.usage is not None and out.usage.completion_tokens == 8


def test_completion_non_streaming_via_alias(client: OpenAI) -> None:
    out = client.completions.create(model="llama", prompt="Once upon a time", max_tokens=6)
    assert out.choices[0].text
    assert out.usage is not None and out.usage.completion_tokens == 6


@pytest.mark.parametrize("is_chat", [True, False], ids=["chat", "completions"])
@pytest.mark.parametrize("wants_usage", [False, True], ids=["no-usage", "usage"])
def test_streaming_usage_stripped_unless_requested(
    client: OpenAI, is_chat: bool, wants_usage: bool
) -> None:
    opts = {"stream_options": {"include_usage": True}} if wants_usage else {}
    if is_chat:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=5,
            stream=True,
            **opts,
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        cstream = client.completions.create(
            model=MODEL,
            prompt="Hello",
            max_tokens=5,
            stream=True,
            **opts,
        )
        chunks = list(cstream)
        text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text
    with_usage = [c for c in chunks if c.usage is not None]
    if wants_usage:
        assert len(with_usage) == 1 and with_usage[0].usage.completion_tokens == 5
        assert chunks[-1].choices == []
    else:
        assert with_usage == []
        assert all(c.choices for c in chunks)


def test_gateway_counts_tokens_even_when_usage_stripped(rr_gateway: InProcessGateway) -> None:
    client = openai_client(rr_gateway.url)
    before = scrape(rr_gateway.url).get("headway_gateway_tokens_total", 0.0)
    list(client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, stream=True))
    after = scrape(rr_gateway.url)["headway_gateway_tokens_total"]
    assert after - before >= 4  # completion tokens at least


def test_request_id_propagated_both_ways(rr_gateway: InProcessGateway) -> None:
    resp = post(
        rr_gateway.url,
        "/v1/chat/completions",
        {"model": MODEL, "messages": MESSAGES, "max_tokens": 3},
        headers={
            "x-request-id": "gw-test-42",
            "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        },
    )
    assert resp.status == 200, resp.text
    assert resp.headers["x-request-id"] == "gw-test-42"
    assert resp.json()["id"] == "chatcmpl-gw-test-42"  # the sim used it as its request id


def test_request_id_generated_when_absent(rr_gateway: InProcessGateway) -> None:
    resp = post(rr_gateway.url, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2})
    assert resp.status == 200, resp.text
    rid = resp.headers["x-request-id"]
    assert len(rid) >= 16 and resp.json()["id"] == "cmpl-" + rid


def test_round_robin_spreads_over_both_replicas(rr_gateway: InProcessGateway) -> None:
    replicas = []
    for _ in range(6):
        resp = post(
            rr_gateway.url, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 1}
        )
        assert resp.status == 200, resp.text
        replicas.append(resp.headers["x-headway-replica"])
    assert sorted(set(replicas)) == ["0", "1"]
    # Strict alternation: round-robin advances once per committed decision.
    assert all(a != b for a, b in itertools.pairwise(replicas))


def _open_stream(
    url: str, body: dict[str, object]
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    assert resp.status == 200
    return conn, resp


LONG_STREAM = {
    "model": MODEL,
    "messages": MESSAGES,
    "max_tokens": 6000,
    "ignore_eos": True,
    "stream": True,
}


@pytest.fixture
def lr_gateway(fleets: Fleets) -> Iterator[InProcessGateway]:
    gw = InProcessGateway(
        {"pools": [pool(MODEL, fleets.main.urls, routing="least-request")]}
    ).start()
    yield gw
    gw.stop()


def test_least_request_prefers_the_idle_replica(lr_gateway: InProcessGateway) -> None:
    conn, resp = _open_stream(lr_gateway.url, LONG_STREAM)
    try:
        busy = resp.getheader("x-headway-replica")
        assert resp.readline()  # the stream is running
        assert lr_gateway.num_in_flight() == 1
        for _ in range(4):
            r = post(
                lr_gateway.url, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 1}
            )
            assert r.status == 200, r.text
            assert r.headers["x-headway-replica"] != busy
    finally:
        conn.close()
    poll(lr_gateway.num_in_flight, lambda n: n == 0, deadline_s=5, what="in-flight released")


def test_models_health_ready_metrics(rr_gateway: InProcessGateway) -> None:
    models = get(rr_gateway.url, "/v1/models").json()
    assert {m["id"] for m in models["data"]} == {MODEL, "llama"}
    assert get(rr_gateway.url, "/health").status == 200
    assert get(rr_gateway.url, "/ready").status == 200
    text = get(rr_gateway.url, "/metrics").text
    for name in (
        "headway_gateway_requests_total",
        "headway_gateway_in_flight_requests",
        "headway_gateway_ttft_seconds_bucket",
        "headway_gateway_e2e_seconds_bucket",
    ):
        assert name in text


def test_ready_is_503_when_a_pool_has_no_endpoint(fleets: Fleets) -> None:
    gw = InProcessGateway({"pools": [pool(MODEL, fleets.main.urls), pool("other", [])]}).start()
    try:
        resp = get(gw.url, "/ready")
        assert resp.status == 503
        assert resp.json()["pools_without_endpoints"] == ["other"]
    finally:
        gw.stop()


def test_fallback_pool_serves_when_a_pool_has_no_endpoint(fleets: Fleets) -> None:
    gw = InProcessGateway(
        {"pools": [pool(MODEL, fleets.main.urls), pool("spare", [], fallback=MODEL)]}
    ).start()
    try:
        resp = post(gw.url, "/v1/completions", {"model": "spare", "prompt": "x", "max_tokens": 1})
        assert resp.status == 200, resp.text
        assert resp.json()["model"] == MODEL
    finally:
        gw.stop()
