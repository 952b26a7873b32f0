"""benchmarks/routing_quality.py's per-replica work figures (`spread`, the live
scrape's counters, the cluster simulation's window counts) and `--measure-model-s`."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from headway.core.serving_metrics import RequestRecord

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "routing_quality.py"


@pytest.fixture(scope="module")
def rq() -> ModuleType:
    sys.path.insert(0, str(SCRIPT.parent))  # the script imports its sibling _common
    spec = importlib.util.spec_from_file_location("routing_quality_spread_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({"a": 10, "b": 10}, 1.0),
        ({"a": 30, "b": 10, "c": 20}, 1.5),
        ({"a": 0, "b": 0}, None),
        ({}, None),
    ],
    ids=["even", "max-over-mean", "all-zero", "no-replicas"],
)
def test_spread(rq: ModuleType, counts: dict[str, float], expected: float | None) -> None:
    out = rq.spread(counts)
    assert out["max_over_mean"] == expected
    assert out["per_replica"] == list(counts.values())


METRICS = """\
# TYPE vllm:request_success counter
vllm:request_success_total{finished_reason="stop",model_name="m"} 5.0
vllm:request_success_total{finished_reason="length",model_name="m"} 2.0
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{model_name="m"} 700.0
# TYPE vllm:prefix_cache_hits counter
vllm:prefix_cache_hits_total{model_name="m"} 600.0
"""


def _ttft_page(ttfts_s: list[float]) -> str:
    """vLLM's TTFT histogram as prometheus-client renders it."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    registry = CollectorRegistry()
    hist = Histogram("vllm:time_to_first_token_seconds", "TTFT", ["model_name"], registry=registry)
    for t in ttfts_s:
        hist.labels(model_name="m").observe(t)
    return generate_latest(registry).decode()


def test_replica_counters_sum_label_sets(rq: ModuleType) -> None:
    assert rq.replica_counters(METRICS + _ttft_page([0.25, 0.5])) == {
        "requests": 7.0,
        "prompt_tokens": 700.0,
        "ttft_sum_s": 0.75,
        "ttft_count": 2.0,
    }


def test_engine_ttft_mean_is_the_windows_mean_in_model_time(rq: ModuleType) -> None:
    before = [rq.replica_counters(_ttft_page([1.0])), rq.replica_counters(_ttft_page([]))]
    after = [
        rq.replica_counters(_ttft_page([1.0, 0.2, 0.4])),
        rq.replica_counters(_ttft_page([0.3])),
    ]
    # Calls of the window: 0.2, 0.4 and 0.3 wall s; time-scale 0.05: 15 model ms mean.
    assert rq.engine_ttft_mean_ms(before, after, 0.05) == 15.0
    assert rq.engine_ttft_mean_ms(before, before, 0.05) is None


def test_live_replica_spread_is_the_growth_between_scrapes(rq: ModuleType) -> None:
    before = [{"requests": 5.0, "prompt_tokens": 100.0}, {"requests": 1.0, "prompt_tokens": 0.0}]
    after = [{"requests": 8.0, "prompt_tokens": 400.0}, {"requests": 2.0, "prompt_tokens": 200.0}]
    out = rq.live_replica_spread(before, after)
    assert out["replica_requests"] == {"per_replica": [3.0, 1.0], "max_over_mean": 1.5}
    assert out["replica_prompt_tokens"]["per_replica"] == [300.0, 200.0]


def _record(call_id: str, sent_at: float, prompt: int, cached: int) -> RequestRecord:
    return RequestRecord(
        call_id=call_id,
        session_id="s",
        sent_at=sent_at,
        first_choice_at=sent_at + 0.01,
        first_content_at=sent_at + 0.01,
        chunk_times=(sent_at + 0.01,),
        chunk_tokens=None,
        last_token_at=sent_at + 0.01,
        prompt_tokens=prompt,
        output_tokens=1,
        cached_tokens=cached,
    )


def test_sim_replica_spread_counts_the_window_only(rq: ModuleType) -> None:
    records = [
        _record("c0", 0.5, 100, 0),  # before the window
        _record("c1", 1.0, 100, 80),
        _record("c2", 1.5, 100, 0),
        _record("c3", 1.7, 50, 0),
        _record("c4", 2.0, 100, 0),  # at the window's end: outside
        _record("c5", 1.2, 100, 0),  # not routed (no endpoint): not counted
    ]
    routed_to = {"c0": "a", "c1": "a", "c2": "b", "c3": "b", "c4": "a"}
    out = rq.sim_replica_spread(records, routed_to, ["a", "b", "idle"], 1.0, 2.0)
    assert out["replica_requests"]["per_replica"] == [1.0, 2.0, 0.0]
    assert out["replica_requests"]["max_over_mean"] == 2.0
    assert out["replica_new_prompt_tokens"]["per_replica"] == [20.0, 150.0, 0.0]


def _args(**over: Any) -> argparse.Namespace:
    base: dict[str, Any] = {"tiny": False, "quick": False, "time_scale": None, "seed": None,
                            "measure_model_s": None}  # fmt: skip
    return argparse.Namespace(**{**base, **over})


@pytest.mark.parametrize(
    ("over", "field", "expected"),
    [
        ({}, "measure_model_s", 4.0),
        ({"measure_model_s": 20.0}, "measure_model_s", 20.0),
        ({"tiny": True, "measure_model_s": 2.5}, "measure_model_s", 2.5),
        ({"seed": 7, "time_scale": 0.05}, "seed", 7),
    ],
    ids=["default", "measure-override", "tiny-measure-override", "seed-and-scale"],
)
def test_scenario_of(rq: ModuleType, over: dict[str, Any], field: str, expected: Any) -> None:
    assert getattr(rq.scenario_of(_args(**over)), field) == expected


def test_scenario_of_rejects_a_non_positive_measure(rq: ModuleType) -> None:
    with pytest.raises(SystemExit, match="--measure-model-s"):
        rq.scenario_of(_args(measure_model_s=0.0))
