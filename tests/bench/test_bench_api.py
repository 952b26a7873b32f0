"""The API's pure decisions: when a sweep stops, how slo-search bisects, how the client
block flags lag, how --reset-url binds to arms, config validation."""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from headway.bench import api
from headway.bench.api import (
    BenchConfig,
    BenchTarget,
    SloSearchSpec,
    point_result,
    run_slo_search,
    run_sweep,
    saturation_reason,
)
from headway.bench.cli import _targets
from headway.bench.runner import LoadLevel, PointRun
from headway.core.serving_metrics import GoodputSlo, RequestRecord
from headway.core.workloads import Session


def point(
    output_throughput: float, failed: int = 0, completed: int = 10, lag_p99_ms: float = 1.0
) -> dict[str, Any]:
    return {
        "summary": {
            "output_throughput": output_throughput,
            "failed": failed,
            "completed": completed,
        },
        "client": {"scheduling_lag_p99_ms": lag_p99_ms, "max_scheduling_lag_ms": 10.0},
    }


@pytest.mark.parametrize(
    ("previous", "current", "expected"),
    [
        (None, point(100), None),
        (point(100), point(110), None),
        (point(100), point(104), "saturated"),
        (point(100), point(90), "saturated"),
        (point(100), point(200, failed=2, completed=8), "2 of 10 requests failed"),
        (point(100), point(200, failed=1, completed=9), None),  # 10% is not more than 10%
        (None, point(100, lag_p99_ms=51.0), "fell behind"),
        (None, point(100, lag_p99_ms=49.0), None),
    ],
    ids=[
        "first",
        "grows",
        "plateau",
        "drops",
        "failures",
        "failures-at-bound",
        "lag-blow-up",
        "lag-high-but-bounded",
    ],
)
def test_saturation_reason(
    previous: dict[str, Any] | None, current: dict[str, Any], expected: str | None
) -> None:
    reason = saturation_reason(previous, current)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason


class _NoWorkload:
    name = "none"

    def params(self) -> Mapping[str, object]:
        return {}

    def sessions(self, num_sessions: int, seed: int) -> Iterator[Session]:
        return iter(())


def _fake_points(monkeypatch: pytest.MonkeyPatch, point_of: Any) -> list[LoadLevel]:
    """Replace the network: run_point returns point_of(level); returns the probe log."""
    probes: list[LoadLevel] = []
    monkeypatch.setattr(
        api, "build_workload_and_tokenizer", lambda name, params, path: (_NoWorkload(), None)
    )

    async def versions(base_url: str) -> dict[str, Any]:
        return {}

    async def run_point(self: Any, target: BenchTarget, level: LoadLevel) -> dict[str, Any]:
        probes.append(level)
        return point_of(level)

    monkeypatch.setattr(api, "target_versions", versions)
    monkeypatch.setattr(api._BenchRun, "run_point", run_point)
    return probes


CONFIG = BenchConfig(
    targets=(BenchTarget("http://127.0.0.1:1", "a"),),
    model="m",
    workload="none",
    num_requests=10,
    goodput=GoodputSlo(ttft_ms=100.0),
    show_progress=False,
)


@pytest.mark.parametrize(
    ("capacity", "expected_rate", "outcome"),
    [
        (37.0, 36.4375, "bracketed"),
        (1000.0, 64.0, "met at rate_max"),
        (0.5, None, "not met at rate_min"),
    ],
    ids=["bracketed", "above-max", "below-min"],
)
async def test_slo_search_bisects_to_the_tolerance(
    monkeypatch: pytest.MonkeyPatch, capacity: float, expected_rate: float | None, outcome: str
) -> None:
    def point_of(level: LoadLevel) -> dict[str, Any]:
        assert level.request_rate is not None
        return {"summary": {"slo_attainment": 0.95 if level.request_rate <= capacity else 0.5}}

    probes = _fake_points(monkeypatch, point_of)
    spec = SloSearchSpec(rate_min=1.0, rate_max=64.0, attainment=0.9, tolerance=2.0)
    doc = await run_slo_search(CONFIG, spec)
    [arm] = doc["arms"]
    result = arm["slo_search"]
    assert result["max_request_rate"] == expected_rate
    assert result["outcome"].startswith(outcome)
    assert result["num_probes"] == len(probes) == len(arm["points"])
    if outcome == "bracketed":
        lo, hi = result["bracket"]
        assert lo <= capacity < hi and hi - lo <= 2.0
        assert [p.request_rate for p in probes[:3]] == [64.0, 1.0, 32.5]
    assert [p["slo_search"]["is_met"] for p in arm["points"]] == [
        (p.request_rate or 0) <= capacity for p in probes
    ]


async def test_slo_search_needs_slos() -> None:
    config = BenchConfig(targets=CONFIG.targets, model="m", workload="none", num_requests=1)
    with pytest.raises(ValueError, match="goodput"):
        await run_slo_search(config, SloSearchSpec(1.0, 2.0))


async def test_sweep_stops_at_saturation_and_records_why(monkeypatch: pytest.MonkeyPatch) -> None:
    throughput = {1: 100.0, 2: 190.0, 4: 195.0, 8: 196.0}

    def point_of(level: LoadLevel) -> dict[str, Any]:
        assert level.max_concurrency is not None
        return point(throughput[level.max_concurrency])

    probes = _fake_points(monkeypatch, point_of)
    levels = [LoadLevel(max_concurrency=c) for c in (1, 2, 4, 8)]
    doc = await run_sweep(CONFIG, levels)
    assert [p.max_concurrency for p in probes] == [1, 2, 4]
    assert "concurrency 4" in doc["arms"][0]["sweep"]["stopped_early"]
    probes.clear()
    doc = await run_sweep(CONFIG, levels, is_stop_at_saturation=False)
    assert [p.max_concurrency for p in probes] == [1, 2, 4, 8]
    assert doc["arms"][0]["sweep"]["stopped_early"] is None


def record(call_id: str, sent_at: float) -> RequestRecord:
    return RequestRecord(
        call_id, "s", sent_at, sent_at + 0.1, sent_at + 0.1, (sent_at + 0.1, sent_at + 0.2),
        (1, 1), sent_at + 0.2, 5, 2, 0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("lags_s", "is_kept"),
    [((0.001,) * 100, True), ((0.001,) * 98 + (0.5, 0.5), False), ((), True)],
    ids=["small-lag", "p99-over-bound", "no-calls"],
)
def test_client_block_flags_lag_over_the_bound(lags_s: tuple[float, ...], is_kept: bool) -> None:
    run = PointRun((record("b", 10.5), record("a", 10.2)), lags_s, 10.0, 11.0, 1, False)
    out = point_result(LoadLevel(request_rate=2.0), run, CONFIG)
    assert out["client"]["is_schedule_kept"] is is_kept
    assert out["load"] == {"request_rate": 2.0, "burstiness": 1.0, "max_concurrency": None}
    assert [r["call_id"] for r in out["requests"]] == ["a", "b"]  # by send time
    assert out["requests"][0]["start_s"] == pytest.approx(0.2)
    assert out["requests"][0]["itl_s"] == [pytest.approx(0.1)]
    assert out["summary"]["completed"] == 2


def test_reset_urls_bind_to_labels_or_to_every_arm() -> None:
    parser = argparse.ArgumentParser()
    args = argparse.Namespace(
        base_urls=["http://h:1", "http://h:2"],
        labels=["a", "b"],
        reset_urls=["http://e:9", "b=http://e:8"],
        reset_cache=True,
    )
    targets = _targets(args, parser)
    assert [(t.label, t.reset_urls) for t in targets] == [
        ("a", ("http://e:9",)),
        ("b", ("http://e:9", "http://e:8")),
    ]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"targets": ()}, "targets"),
        ({"num_requests": None, "duration_s": None}, "num_requests / duration_s"),
        ({"num_requests": None, "duration_s": 5.0}, "duration_s: needs"),
        ({"request_rate": 0.0}, "request_rate"),
        ({"num_client_processes": 0}, "num_client_processes"),
        ({"num_client_processes": 4, "max_concurrency": 2}, "num_client_processes: at most"),
        ({"targets": (BenchTarget("http://a:1", "x"), BenchTarget("http://b:1", "x"))}, "unique"),
    ],
    ids=[
        "no-targets",
        "no-bound",
        "duration-without-rate",
        "zero-rate",
        "zero-processes",
        "more-processes-than-concurrency",
        "duplicate-labels",
    ],
)
def test_config_errors_name_the_field(changes: dict[str, Any], field: str) -> None:
    base: dict[str, Any] = {
        "targets": CONFIG.targets,
        "model": "m",
        "workload": "none",
        "num_requests": 3,
    }
    with pytest.raises(ValueError, match=field):
        BenchConfig(**{**base, **changes})


def test_target_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="base_url"):
        BenchTarget("ftp://x", "a")
