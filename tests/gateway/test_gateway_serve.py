"""`headway serve` as a real process: the quick form against a `headway sim` fleet,
SIGTERM draining, and the embedded simulated fleet."""

from __future__ import annotations

import http.client
import json
import threading
from pathlib import Path
from urllib.parse import urlsplit

from conftest import MODEL, Fleets
from gateway_harness import sim_counters, start_serve
from sim_harness import get, openai_client, poll

MESSAGES = [{"role": "user", "content": "hi"}]


def test_serve_quick_form_discovers_the_model(fleets: Fleets, tmp_path: Path) -> None:
    gw = start_serve(
        tmp_path, "--endpoints", ",".join(fleets.main.urls), "--profile", "round-robin"
    )
    try:
        assert gw.info["pools"][0]["model"] == MODEL  # asked the first endpoint
        client = openai_client(gw.url)
        out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
        assert out.choices[0].message.content
        chunks = list(client.completions.create(model=MODEL, prompt="a", max_tokens=4, stream=True))
        assert chunks and all(c.usage is None for c in chunks)
        assert get(gw.url, "/ready").status == 200
    finally:
        assert gw.stop() == 0, gw.stderr()
    assert "Traceback" not in gw.stderr()


def _stream(url: str, max_tokens: int, out: dict[str, object]) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    body = {
        "model": MODEL,
        "prompt": "x",
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    conn.request(
        "POST",
        "/v1/completions",
        body=json.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    out["started"] = True
    data = b""
    try:
        while chunk := resp.read1(65536):
            data += chunk
    except (http.client.IncompleteRead, ConnectionError) as exc:
        out["error"] = repr(exc)
    out["data"] = data
    conn.close()


def test_sigterm_drains_then_cancels(fleets: Fleets, tmp_path: Path) -> None:
    replica = fleets.main.urls[1]
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"pools:\n  - model: {MODEL}\n    endpoints: [{replica}]\ntimeouts:\n  drain_s: 0.7\n"
    )
    gw = start_serve(tmp_path, "--config", str(config))
    before = sim_counters(replica)
    short: dict[str, object] = {}
    long: dict[str, object] = {}
    threads = [
        threading.Thread(target=_stream, args=(gw.url, 1500, short)),  # ~0.3 s
        threading.Thread(target=_stream, args=(gw.url, 8000, long)),  # ~1.5 s: outlives the drain
    ]
    for t in threads:
        t.start()
    poll(
        lambda: sim_counters(replica)["running"],
        lambda n: n >= 2,
        deadline_s=5,
        what="both running",
    )
    rc = gw.stop()
    for t in threads:
        t.join(timeout=10)
    assert rc == 0, gw.stderr()
    assert b"data: [DONE]" in short["data"]
    assert b"data: [DONE]" not in long["data"]
    poll(
        lambda: sim_counters(replica),
        lambda c: c["aborted"] > before["aborted"] and c["running"] == 0,
        deadline_s=2,
        what="the cancelled stream aborted upstream",
    )
    assert "Traceback" not in gw.stderr()


def test_embedded_default_fleet(tmp_path: Path) -> None:
    gw = start_serve(tmp_path)  # no endpoints, no config
    try:
        assert gw.info["embedded_fleet"] is True
        assert len(gw.info["pools"][0]["endpoints"]) == 4
        client = openai_client(gw.url)
        out = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
        assert out.usage is not None and out.usage.completion_tokens == 3
    finally:
        assert gw.stop() == 0, gw.stderr()
