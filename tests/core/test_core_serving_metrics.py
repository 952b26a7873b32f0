"""summarize(): vLLM's serving-metric maths on hand-made timings."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from headway.core.serving_metrics import (
    CostInputs,
    GoodputSlo,
    RequestRecord,
    per_token_gaps,
    request_timings,
    summarize,
)


def rec(
    chunks: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4),
    *,
    sent_at: float = 0.0,
    first_choice_at: float | None = -1.0,
    output_tokens: int | None = None,
    chunk_tokens: tuple[int, ...] | None = None,
    prompt_tokens: int | None = 10,
    cached_tokens: int | None = 0,
    error: str | None = None,
    call_id: str = "c",
) -> RequestRecord:
    """A record whose first choice and first content arrive with the first chunk (unless
    given) and whose E2E ends at the last chunk."""
    first = chunks[0] if chunks else None
    return RequestRecord(
        call_id=call_id,
        session_id="s",
        sent_at=sent_at,
        first_choice_at=first if first_choice_at == -1.0 else first_choice_at,
        first_content_at=first,
        chunk_times=chunks,
        chunk_tokens=chunk_tokens,
        last_token_at=chunks[-1] if chunks else None,
        prompt_tokens=prompt_tokens,
        output_tokens=len(chunks) if output_tokens is None else output_tokens,
        cached_tokens=cached_tokens,
        error=error,
    )


@pytest.mark.parametrize(
    ("records", "duration_s", "expected"),
    [
        (
            [rec(prompt_tokens=10, cached_tokens=5)],
            2.0,
            {
                "completed": 1,
                "failed": 0,
                "total_input_tokens": 10,
                "total_output_tokens": 4,
                "request_throughput": 0.5,
                "output_throughput": 2.0,
                "total_token_throughput": 7.0,
                "mean_ttft_ms": 100.0,
                "mean_ttft_content_ms": 100.0,
                "mean_e2el_ms": 400.0,
                "mean_tpot_ms": 100.0,  # (400 - 100) / (4 - 1)
                "mean_ntpot_ms": 100.0,  # 400 / 4
                "mean_itl_ms": 100.0,
                "p99_itl_ms": 100.0,
                "cached_token_share": 0.5,
                "mean_itl_per_token_ms": None,  # no chunk token counts
            },
        ),
        (
            [rec((0.05,))],
            1.0,
            {
                "completed": 1,
                "total_output_tokens": 1,
                "mean_ttft_ms": 50.0,
                "mean_tpot_ms": 0.0,  # no TPOT for a 1-token answer: empty set -> 0
                "mean_ntpot_ms": 50.0,
                "mean_itl_ms": 0.0,  # no gaps
                "mean_e2el_ms": 50.0,
            },
        ),
        (
            # 6 tokens in 3 chunks: gaps 200 ms (4 tokens) and 100 ms (1 token).
            [rec((0.1, 0.3, 0.4), chunk_tokens=(1, 4, 1), output_tokens=6)],
            1.0,
            {
                "mean_itl_ms": 150.0,  # per chunk, like vLLM
                "mean_tpot_ms": 60.0,  # (400 - 100) / 5
                "mean_itl_per_token_ms": 60.0,  # 4 x 50 ms + 1 x 100 ms
                "median_itl_per_token_ms": 50.0,
                "p99_itl_per_token_ms": 98.0,  # rank 0.99 x 4 = 3.96: 50 + 0.96 x 50
            },
        ),
        (
            # A role-only first message at 50 ms: TTFT ends there, ttft_content at 100 ms.
            [rec((0.1, 0.2), first_choice_at=0.05)],
            1.0,
            {"mean_ttft_ms": 50.0, "mean_ttft_content_ms": 100.0, "mean_tpot_ms": 150.0},
        ),
        (
            [
                rec(error="http_429"),
                rec(error="timeout"),
                rec(error="http_429"),
                rec(prompt_tokens=20),
            ],
            4.0,
            {
                "completed": 1,
                "failed": 3,
                "num_requests": 4,
                "failures_by_kind": {"http_429": 2, "timeout": 1},
                "total_input_tokens": 20,  # failed requests contribute nothing
                "total_output_tokens": 4,
                "request_throughput": 0.25,
                "request_goodput": None,  # no SLO given
                "slo_attainment": None,
            },
        ),
        (
            [],
            0.0,
            {
                "completed": 0,
                "failed": 0,
                "request_throughput": 0.0,
                "output_throughput": 0.0,
                "mean_ttft_ms": 0.0,
                "p99_e2el_ms": 0.0,
                "std_itl_ms": 0.0,
                "cached_token_share": 0.0,
                "failures_by_kind": {},
            },
        ),
        (
            [rec(error="connection")],
            0.0,  # zero duration: no division by zero
            {"completed": 0, "failed": 1, "request_throughput": 0.0, "mean_e2el_ms": 0.0},
        ),
    ],
    ids=[
        "one-request",
        "one-token",
        "multi-token-chunks",
        "role-chunk",
        "failures",
        "empty",
        "zero-duration",
    ],
)
def test_summary_values(
    records: list[RequestRecord], duration_s: float, expected: dict[str, object]
) -> None:
    summary = summarize(records, duration_s)
    for key, value in expected.items():
        got = summary[key]
        if isinstance(value, float):
            assert isinstance(got, float)
            assert got == pytest.approx(value), key
        else:
            assert got == value, key


def test_statistics_match_vllm_numpy_definitions() -> None:
    # TTFTs 100..1000 ms: population std, linear-interpolated percentiles.
    records = [rec((0.1 * k, 0.1 * k + 0.01)) for k in range(1, 11)]
    s = summarize(records, 10.0)
    assert s["mean_ttft_ms"] == pytest.approx(550.0)
    assert s["median_ttft_ms"] == pytest.approx(550.0)
    assert s["std_ttft_ms"] == pytest.approx(math.sqrt(82500.0))
    assert s["p90_ttft_ms"] == pytest.approx(910.0)
    assert s["p95_ttft_ms"] == pytest.approx(955.0)
    assert s["p99_ttft_ms"] == pytest.approx(991.0)


def test_itl_is_pooled_over_requests() -> None:
    records = [rec((0.0, 0.1, 0.2)), rec((0.0, 0.4))]  # gaps 100, 100, 400 ms
    s = summarize(records, 1.0)
    assert s["mean_itl_ms"] == pytest.approx(200.0)
    assert s["median_itl_ms"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("slo", "good"),
    [
        (GoodputSlo(ttft_ms=100.0), 2),  # inclusive: 100 ms meets a 100 ms SLO
        (GoodputSlo(ttft_ms=99.0), 1),
        (GoodputSlo(tpot_ms=50.0), 1),  # the 1-token answer counts as TPOT 0
        (GoodputSlo(e2el_ms=400.0), 2),
        (GoodputSlo(ttft_ms=100.0, e2el_ms=100.0), 1),
        (GoodputSlo(), 2),  # no constraint: every success is good
    ],
    ids=["ttft-inclusive", "ttft-tight", "tpot-one-token", "e2el", "all-slos", "empty-slo"],
)
def test_goodput_and_attainment(slo: GoodputSlo, good: int) -> None:
    records = [
        rec((0.1, 0.2, 0.3, 0.4)),  # ttft 100, tpot 100, e2el 400
        rec((0.05,)),  # ttft 50, 1 token, e2el 50
        rec(error="http_5xx"),
        rec(error="cancelled"),
    ]
    s = summarize(records, 2.0, goodput=slo)
    assert s["request_goodput"] == pytest.approx(good / 2.0)
    assert s["slo_attainment"] == pytest.approx(good / 4.0)  # failures count as misses


def test_success_without_tokens_misses_a_ttft_slo() -> None:
    empty = rec((), output_tokens=0)
    s = summarize([empty], 1.0, goodput=GoodputSlo(ttft_ms=1000.0))
    assert s["completed"] == 1
    assert s["slo_attainment"] == 0.0
    assert s["mean_ttft_ms"] == 0.0


def test_peak_tokens_and_concurrency_per_second() -> None:
    records = [
        rec((0.1, 0.5, 0.9)),  # 3 tokens in second 0
        rec((0.8, 1.2), sent_at=0.5, chunk_tokens=(1, 6), output_tokens=7),  # 1 in s0, 6 in s1
        rec((2.5,), sent_at=2.2),  # alone in second 2
        rec(error="timeout", sent_at=0.0),  # failures do not count
    ]
    s = summarize(records, 3.0)
    assert s["max_output_tokens_per_s"] == 6.0
    assert s["max_concurrent_requests"] == 2
    empty = summarize([], 1.0)
    assert (empty["max_output_tokens_per_s"], empty["max_concurrent_requests"]) == (0.0, 0)


def test_cost_per_million_tokens() -> None:
    # 2 GPUs x $3.60/h = $0.002/s.
    records = [
        rec((0.1, 0.2, 0.3, 0.4), prompt_tokens=1000),  # meets the SLO
        rec((0.5, 0.6, 0.7, 0.8), prompt_tokens=1000),  # ttft 500 ms: misses
    ]
    s = summarize(records, 1.0, goodput=GoodputSlo(ttft_ms=200.0), cost=CostInputs(2, 3.6))
    assert s["cost_per_1m_input_tokens_usd"] == pytest.approx(0.002 / 2000 * 1e6)
    assert s["cost_per_1m_output_tokens_usd"] == pytest.approx(0.002 / 8 * 1e6)
    assert s["total_useful_output_tokens"] == 4
    assert s["cost_per_1m_useful_output_tokens_usd"] == pytest.approx(0.002 / 4 * 1e6)


def test_cost_of_nothing_produced_is_none() -> None:
    s = summarize([rec(error="timeout")], 1.0, cost=CostInputs(1, 2.0))
    assert s["cost_per_1m_output_tokens_usd"] is None
    assert s["cost_per_1m_useful_output_tokens_usd"] is None


def test_summary_is_json_ready_and_has_every_vllm_key() -> None:
    s = summarize(
        [rec(chunk_tokens=(1, 1, 1, 1))],
        1.0,
        goodput=GoodputSlo(ttft_ms=1.0),
        cost=CostInputs(1, 1.0),
    )
    json.dumps(s)
    for metric in ("ttft", "ttft_content", "tpot", "ntpot", "itl", "e2el", "itl_per_token"):
        for stat in ("mean", "median", "std", "p90", "p95", "p99"):
            assert f"{stat}_{metric}_ms" in s
    for key in (
        "duration",
        "completed",
        "failed",
        "total_input_tokens",
        "total_output_tokens",
        "request_throughput",
        "request_goodput",
        "output_throughput",
        "total_token_throughput",
        "cached_token_share",
        "slo_attainment",
        "failures_by_kind",
    ):
        assert key in s


def test_output_tokens_fall_back_to_chunks() -> None:
    r = replace(rec((0.1, 0.2, 0.3), chunk_tokens=(2, 2, 1)), output_tokens=None)
    assert request_timings(r).output_tokens == 5
    assert request_timings(replace(r, chunk_tokens=None)).output_tokens == 3


@pytest.mark.parametrize(
    ("times", "tokens", "gaps"),
    [
        ((0.0, 1.0), (1, 2), [0.5, 0.5]),
        ((0.0, 1.0, 1.5), (3, 1, 1), [1.0, 0.5]),  # the first chunk's tokens have no gap
        ((0.0, 0.5, 1.0), (1, 0, 2), [0.5, 0.5]),  # an empty chunk is skipped
        ((), (), []),
    ],
    ids=["split", "first-chunk", "empty-chunk", "none"],
)
def test_per_token_gaps(
    times: tuple[float, ...], tokens: tuple[int, ...], gaps: list[float]
) -> None:
    assert per_token_gaps(times, tokens) == pytest.approx(gaps)


def test_mismatched_chunk_token_counts_are_unknown() -> None:
    r = rec((0.1, 0.2, 0.3), chunk_tokens=(1, 2))
    assert request_timings(r).itl_per_token_s is None
    assert summarize([r], 1.0)["mean_itl_per_token_ms"] is None
    with pytest.raises(ValueError, match="chunk_tokens"):
        per_token_gaps((0.1, 0.2, 0.3), (1, 2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ttft_ms": 0.0}, "goodput.ttft_ms"),
        ({"tpot_ms": -1.0}, "goodput.tpot_ms"),
    ],
    ids=["zero", "negative"],
)
def test_invalid_slo(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GoodputSlo(**kwargs)


def test_invalid_cost() -> None:
    with pytest.raises(ValueError, match="gpu_count"):
        CostInputs(0, 1.0)
