"""Client disconnects and injected faults: aborts free KV blocks at once; error rate,
dropped streams, hangs, crashes and slow-downs behave as a failing engine would."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from sim_harness import (
    MODEL,
    Fleet,
    chat_body,
    get,
    openai_client,
    poll,
    port_answers,
    post,
    scrape,
)

FAULT_FLEETS = {
    # name: args
    "cancel": ("--time-scale", "1"),
    "error": ("--replicas", "2", "--fault-error-rate", "1.0", "--fault-replicas", "1",
              "--time-scale", "20"),
    "drop": ("--fault-drop-stream-after", "3", "--time-scale", "5"),
    # Steps much shorter than opening a response: tokens queue before the handler writes.
    "drop_fast": ("--fault-drop-stream-after", "3", "--time-scale", "20"),
    "hang": ("--fault-hang",),
    "crash": ("--fault-crash-after", "2", "--time-scale", "20"),
    "slow": ("--fault-slowdown", "20", "--time-scale", "10"),
}  # fmt: skip


@pytest.fixture(scope="module")
def fleets(module_fleets: Any) -> dict[str, Fleet]:
    started = module_fleets(*FAULT_FLEETS.values())
    return dict(zip(FAULT_FLEETS, started, strict=True))


def _open_stream(url: str, body: dict[str, Any]) -> tuple[http.client.HTTPConnection, Any]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request(
        "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
    )
    resp = conn.getresponse()
    assert resp.status == 200
    return conn, resp


def _wait_aborted(url: str, num_aborted: float) -> dict[str, float]:
    return poll(
        lambda: scrape(url),
        lambda m: (
            m["headway_sim:aborted_requests_total"] >= num_aborted
            and m["vllm:num_requests_running"] == 0
            and m["vllm:num_requests_waiting"] == 0
        ),
        what="abort recorded and engine idle",
    )


def test_client_disconnect_mid_stream_aborts(fleets: dict[str, Fleet]) -> None:
    url = fleets["cancel"].url
    before = scrape(url)
    body = chat_body("tell me a very long story", max_tokens=2000, ignore_eos=True, stream=True)
    conn, resp = _open_stream(url, body)
    lines = []
    while len(lines) < 3:
        line = resp.readline()
        assert line, "stream ended early"
        if line.startswith(b"data: "):
            lines.append(line)
    running = scrape(url)["vllm:num_requests_running"]
    assert running == 1
    conn.sock.close()  # type: ignore[union-attr]
    conn.close()
    after = _wait_aborted(url, before["headway_sim:aborted_requests_total"] + 1)
    assert (
        after["headway_sim:aborted_freed_blocks_total"]
        > before["headway_sim:aborted_freed_blocks_total"]
    )
    assert after["vllm:kv_cache_usage_perc"] == 0.0
    # The aborted request produced far fewer than its 2000 tokens.
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] < 1000
    # A client going away is routine: no traceback in the simulator's log.
    assert "Traceback" not in fleets["cancel"].stderr()


def test_client_timeout_on_whole_response_aborts(fleets: dict[str, Fleet]) -> None:
    url = fleets["cancel"].url
    before = scrape(url)
    c = openai_client(url, timeout_s=0.3)
    with pytest.raises(openai.APITimeoutError):
        c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "slow whole answer"}],
            max_tokens=2000, extra_body={"ignore_eos": True},
        )  # fmt: skip
    after = _wait_aborted(url, before["headway_sim:aborted_requests_total"] + 1)
    assert (
        after["headway_sim:aborted_freed_blocks_total"]
        > before["headway_sim:aborted_freed_blocks_total"]
    )


def test_error_rate_applies_to_fault_replicas_only(fleets: dict[str, Fleet]) -> None:
    fleet = fleets["error"]
    ok = post(fleet.urls[0], "/v1/chat/completions", chat_body("fine", max_tokens=2))
    assert ok.status == 200, ok.text
    for _ in range(3):
        bad = post(fleet.urls[1], "/v1/chat/completions", chat_body("fails", max_tokens=2))
        assert bad.status == 500
        assert "Traceback" not in bad.text
        err = bad.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["code"] == 500
    assert scrape(fleet.urls[1])["headway_sim:injected_errors_total"] >= 3
    assert scrape(fleet.urls[0])["headway_sim:injected_errors_total"] == 0
    # Non-completion endpoints still answer on the failing replica.
    assert get(fleet.urls[1], "/health").status == 200
    assert get(fleet.urls[1], "/admin/faults").json()["error_rate"] == 1.0
    assert get(fleet.urls[0], "/admin/faults").json()["error_rate"] == 0.0


def test_error_rate_through_openai_client(fleets: dict[str, Fleet]) -> None:
    c = openai_client(fleets["error"].urls[1])
    with pytest.raises(openai.InternalServerError):
        c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2
        )


def test_admin_faults_set_at_run_time(fleets: dict[str, Fleet]) -> None:
    url = fleets["error"].urls[0]
    try:
        resp = post(url, "/admin/faults", {"error_rate": 1.0})
        assert resp.status == 200, resp.text
        assert resp.json()["error_rate"] == 1.0
        assert post(url, "/v1/chat/completions", chat_body("now failing")).status == 500
    finally:
        assert post(url, "/admin/faults", {"error_rate": 0.0}).status == 200
    assert post(url, "/v1/chat/completions", chat_body("fine again", max_tokens=2)).status == 200


@pytest.mark.parametrize(
    ("body", "word"),
    [
        ({"bogus_fault": 1}, "bogus_fault"),
        ({"slowdown": 0}, "slowdown"),
        ({"error_rate": 2}, "error_rate"),
        ({"hang": "yes"}, "hang"),
        ({"crash_after_requests": 1.5}, "crash_after_requests"),
    ],
    ids=["unknown", "slowdown-0", "error-rate-2", "hang-not-bool", "crash-not-int"],
)
def test_admin_faults_rejects_bad_fields(fleets: dict[str, Fleet], body: Any, word: str) -> None:
    url = fleets["error"].urls[0]
    resp = post(url, "/admin/faults", body)
    assert resp.status == 400
    assert word in resp.json()["error"]["message"]
    assert get(url, "/admin/faults").json()["error_rate"] == 0.0


@pytest.mark.parametrize(
    ("fleet", "max_tokens"),
    [("drop", 50), ("drop_fast", 4)],
    ids=["long-stream", "fast-steps-finish-right-after-the-drop"],
)
def test_drop_stream_after_tokens(fleets: dict[str, Fleet], fleet: str, max_tokens: int) -> None:
    """The stream ends after its third token without an end marker, also when the
    engine finishes the request one step later, before the handler has written
    what was queued (nothing the engine makes after the drop goes out)."""
    _check_dropped_stream(fleets[fleet].url, max_tokens)


def _check_dropped_stream(url: str, max_tokens: int) -> None:
    body = chat_body("drop me", max_tokens=max_tokens, ignore_eos=True, stream=True)
    conn, resp = _open_stream(url, body)
    data_lines: list[bytes] = []
    try:
        while True:
            line = resp.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                data_lines.append(line.strip())
    except (http.client.IncompleteRead, ConnectionError):
        pass
    finally:
        conn.close()
    assert b"data: [DONE]" not in data_lines
    # vLLM's role-only chunk, then three token chunks.
    assert len(data_lines) == 4
    finished = [json.loads(x[6:])["choices"][0]["finish_reason"] for x in data_lines]
    assert finished == [None] * len(data_lines)


def test_faults_log_no_tracebacks(fleets: dict[str, Fleet]) -> None:
    _check_dropped_stream(fleets["drop"].url, 50)
    assert "Traceback" not in fleets["drop"].stderr()


def test_drop_stream_openai_client_sees_incomplete_stream(fleets: dict[str, Fleet]) -> None:
    c = openai_client(fleets["drop"].url)
    chunks: list[Any] = []
    stream = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "drop me too"}],
        max_tokens=50, stream=True, extra_body={"ignore_eos": True},
    )  # fmt: skip
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            chunks.append(chunk)
    assert len(chunks) == 4  # the role chunk and three tokens
    assert all(ch.choices[0].finish_reason is None for ch in chunks)


def test_drop_whole_response(fleets: dict[str, Fleet]) -> None:
    url = fleets["drop"].url
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        post(url, "/v1/chat/completions", chat_body("drop whole", max_tokens=50, ignore_eos=True))
    # The replica keeps serving, and the dropped requests freed their blocks.
    poll(lambda: scrape(url)["vllm:num_requests_running"], lambda v: v == 0, what="idle")
    assert get(url, "/health").status == 200


def test_hang_times_out_client(fleets: dict[str, Fleet]) -> None:
    c = openai_client(fleets["hang"].url, timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello?"}], max_tokens=2
        )
    assert time.monotonic() - started < 5.0
    # Metrics still answer on a hung replica (a router needs to see it).
    assert "vllm:num_requests_running" in scrape(fleets["hang"].url)


def test_crash_after_requests(fleets: dict[str, Fleet]) -> None:
    fleet = fleets["crash"]
    url = fleet.url
    c = openai_client(url)
    for i in range(2):
        resp = c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"before crash {i}"}], max_tokens=2
        )
        assert resp.choices[0].message.content is not None
    with pytest.raises(openai.APIConnectionError):
        c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "the fatal one"}], max_tokens=2
        )
    poll(lambda: port_answers(url), lambda up: not up, what="port closed after crash")


def _e2e_sum(url: str) -> tuple[float, float]:
    m = scrape(url)
    return (
        m["vllm:e2e_request_latency_seconds_sum"],
        m["vllm:e2e_request_latency_seconds_count"],
    )


def _timed_request(url: str) -> float:
    sum0, n0 = _e2e_sum(url)
    body = chat_body("measure my latency", max_tokens=24, ignore_eos=True)
    assert post(url, "/v1/chat/completions", body).status == 200
    sum1, n1 = _e2e_sum(url)
    assert n1 == n0 + 1
    return sum1 - sum0


def test_slowdown_flag_and_admin_toggle(fleets: dict[str, Fleet]) -> None:
    url = fleets["slow"].url
    assert get(url, "/admin/faults").json()["slowdown"] == 20.0
    _timed_request(url)  # warm: the prompt is cached from now on, as in the fast runs
    slow = _timed_request(url)
    assert post(url, "/admin/faults", {"slowdown": 1}).status == 200
    fast = min(_timed_request(url) for _ in range(2))
    assert slow > 3 * fast, (slow, fast)
    assert post(url, "/admin/faults", {"slowdown": 20}).status == 200
    slow_again = _timed_request(url)
    assert slow_again > 3 * fast, (slow_again, fast)
