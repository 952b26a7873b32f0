"""Every token of a streamed request reaches vLLM's histograms, the last one too: a
stream whose final chunk is also its first (max_tokens 1) records its TTFT and
prefill time, and an n-token stream records n - 1 inter-token latencies (vLLM counts
each gap between a request's tokens)."""

from __future__ import annotations

import pytest
from sim_harness import MODEL, FleetFactory, poll, post, scrape

HISTOGRAMS = (
    "vllm:time_to_first_token_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
)


def _counts(url: str) -> dict[str, float]:
    metrics = scrape(url)
    return {h: metrics.get(h + "_count", 0.0) for h in HISTOGRAMS}


@pytest.mark.parametrize(
    ("max_tokens", "stream"),
    [(1, True), (4, True), (1, False), (4, False)],
    ids=["stream-one-token", "stream-four-tokens", "whole-one-token", "whole-four-tokens"],
)
def test_each_token_is_counted(start_fleet: FleetFactory, max_tokens: int, stream: bool) -> None:
    fleet = start_fleet("--time-scale", "20")
    before = _counts(fleet.url)
    body = {
        "model": MODEL,
        "prompt": "count me",
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": stream,
    }
    assert post(fleet.url, "/v1/completions", body).status == 200
    expected = {
        "vllm:time_to_first_token_seconds": 1,
        "vllm:request_prefill_time_seconds": 1,
        "vllm:inter_token_latency_seconds": max_tokens - 1,
        "vllm:e2e_request_latency_seconds": 1,
    }
    # Histograms are observed just after the last write: wait for e2e (bounded).
    after = poll(
        lambda: _counts(fleet.url),
        lambda c: (
            c["vllm:e2e_request_latency_seconds"] > before["vllm:e2e_request_latency_seconds"]
        ),
        deadline_s=5.0,
        what="e2e histogram",
    )
    assert {h: after[h] - before[h] for h in HISTOGRAMS} == expected
