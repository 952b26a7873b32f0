"""`--api-overhead-ms`: the modeled API server's latency per request. A request reaches
the engine that long (model time) after it arrived; TTFT and e2e latency count it,
queue time does not (vLLM's histograms), and the default 0 leaves the sim unchanged."""

from __future__ import annotations

import argparse
import http.client
import json
import time
from urllib.parse import urlsplit

import pytest
from sim_harness import MODEL, FleetFactory, poll, post, scrape

from headway.sim.cli import CliError, add_arguments, config_from_args

OVERHEAD_MS = 60.0
TIME_SCALE = 2.0  # the front end waits OVERHEAD_MS / TIME_SCALE = 30 wall ms


def _config(*argv: str) -> float:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return config_from_args(p.parse_args(list(argv))).api_overhead_s


@pytest.mark.parametrize(
    ("argv", "overhead_s"),
    [((), 0.0), (("--api-overhead-ms", "12.5"), 0.0125), (("--api-overhead-ms", "0"), 0.0)],
    ids=["default-off", "milliseconds", "zero"],
)
def test_flag_sets_overhead_in_seconds(argv: tuple[str, ...], overhead_s: float) -> None:
    assert _config(*argv) == pytest.approx(overhead_s)


@pytest.mark.parametrize("value", ["-1", "nan", "inf"], ids=["negative", "nan", "inf"])
def test_flag_rejects_bad_values_naming_the_flag(value: str) -> None:
    with pytest.raises(CliError, match="--api-overhead-ms"):
        _config("--api-overhead-ms", value)


def _deltas(before: dict[str, float], after: dict[str, float], name: str) -> tuple[float, float]:
    """(sum, count) of histogram `name` between two scrapes."""
    return (
        after[name + "_sum"] - before.get(name + "_sum", 0.0),
        after[name + "_count"] - before.get(name + "_count", 0.0),
    )


def _stream_ttft_s(url: str, body: dict[str, object]) -> float:
    """Client-side time to the first streamed chunk of one completion."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        t0 = time.perf_counter()
        conn.request(
            "POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        assert resp.status == 200
        while line := resp.readline():
            if line.startswith(b"data: {"):
                ttft = time.perf_counter() - t0
                resp.read()
                return ttft
        raise AssertionError("no chunk")
    finally:
        conn.close()


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_overhead_counts_in_ttft_and_e2e_not_queue_time(
    start_fleet: FleetFactory, stream: bool
) -> None:
    fleet = start_fleet(
        "--api-overhead-ms", str(OVERHEAD_MS), "--time-scale", str(TIME_SCALE)
    )  # fmt: skip
    assert fleet.info["api_overhead_ms"] == OVERHEAD_MS
    wall_s = OVERHEAD_MS / 1000 / TIME_SCALE
    body = {"model": MODEL, "prompt": "hello there", "max_tokens": 3, "ignore_eos": True}
    before = scrape(fleet.url)
    if stream:
        # The precise timer never wakes early: the first chunk cannot come sooner.
        assert _stream_ttft_s(fleet.url, {**body, "stream": True}) >= wall_s
    else:
        assert post(fleet.url, "/v1/completions", body).status == 200
    # The e2e histogram is observed after the last write: wait for it.
    after = poll(
        lambda: scrape(fleet.url),
        lambda m: (
            m["vllm:e2e_request_latency_seconds_count"]
            > before.get("vllm:e2e_request_latency_seconds_count", 0.0)
        ),
        deadline_s=5.0,
        what="e2e histogram",
    )
    ttft, n = _deltas(before, after, "vllm:time_to_first_token_seconds")
    e2e, _ = _deltas(before, after, "vllm:e2e_request_latency_seconds")
    queue, nq = _deltas(before, after, "vllm:request_queue_time_seconds")
    assert n == 1 and nq == 1
    assert ttft >= wall_s and e2e >= ttft
    # The request reached an idle engine after the front end: it did not queue.
    assert queue < wall_s / 2


def test_client_gone_during_front_end_never_reaches_engine(start_fleet: FleetFactory) -> None:
    fleet = start_fleet("--api-overhead-ms", "400")  # fmt: skip
    parts = urlsplit(fleet.url)
    body = {"model": MODEL, "prompt": "bye", "max_tokens": 4, "stream": True}
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    conn.close()  # gone while the front end waits
    # A request sent after it goes through; by then the first one's front end is over.
    ok = {"model": MODEL, "prompt": "hi", "max_tokens": 2}
    t0 = time.perf_counter()
    resp = post(fleet.url, "/v1/completions", ok)
    assert resp.status == 200
    assert time.perf_counter() - t0 >= 0.4
    metrics = scrape(fleet.url)
    # Only the second request's prompt was ever prefilled, and nothing was aborted.
    assert metrics["vllm:prompt_tokens_total"] == resp.json()["usage"]["prompt_tokens"]
    assert metrics["vllm:request_success_total"] == 1
    assert metrics["headway_sim:aborted_requests_total"] == 0
