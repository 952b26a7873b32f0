"""Failure isolation against `headway sim` fleets with injected faults: passive
outlier ejection with back-off and half-open probes, retries before the first byte
(bounded by attempts and the retry budget), and no retry once bytes reached the
client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from gateway_harness import InProcessGateway, closed_port_url, pool
from sim_harness import Fleet, chat_body, post, scrape, start_fleets

from headway.gateway.config import (
    GatewayConfigError,
    HealthCheckConfig,
    OutlierConfig,
    RetryConfig,
    config_from_mapping,
)
from headway.gateway.metrics import GatewayMetrics
from headway.gateway.outlier import OutlierDetector, RetryBudget

MODEL = "llama-3.1-8b"
_COMMON = ("--replicas", "2", "--time-scale", "20", "--max-model-len", "8192")
ERROR_ONE = (*_COMMON, "--fault-error-rate", "1", "--fault-replicas", "1")
CRASH_ONE = (*_COMMON, "--fault-crash-after", "0", "--fault-replicas", "1")
HANG_ONE = (*_COMMON, "--fault-hang", "--fault-replicas", "1")
ERROR_ALL = (*_COMMON, "--fault-error-rate", "1")
DROP_ALL = (*_COMMON, "--fault-drop-stream-after", "3")


@dataclass
class FailureFleets:
    error_one: Fleet
    crash_one: Fleet
    hang_one: Fleet
    error_all: Fleet
    drop_all: Fleet


@pytest.fixture(scope="module")
def ff(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FailureFleets]:
    started = start_fleets(
        tmp_path_factory.mktemp("gw-failure-fleets"),
        ERROR_ONE,
        CRASH_ONE,
        HANG_ONE,
        ERROR_ALL,
        DROP_ALL,
    )
    try:
        yield FailureFleets(*started)
    finally:
        for f in started:
            f.stop()


def _gateway(urls: list[str], **pool_extra: object) -> InProcessGateway:
    return InProcessGateway(
        {"pools": [pool(MODEL, urls, routing="round-robin", **pool_extra)]}
    ).start()


def _chat(gw: InProcessGateway, **extra: object) -> tuple[int, str]:
    resp = post(gw.url, "/v1/chat/completions", chat_body("hi", max_tokens=4, **extra))
    return resp.status, resp.text


def _sample(gw: InProcessGateway, name: str, **labels: str) -> float:
    value = gw.gateway.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _injected(url: str) -> float:
    return scrape(url).get("headway_sim:injected_errors_total", 0.0)


def _successes(url: str) -> float:
    return scrape(url).get("vllm:request_success_total", 0.0)


def test_5xx_replica_is_retried_ejected_and_taken_back(ff: FailureFleets) -> None:
    good, bad = ff.error_one.urls
    gw = _gateway(
        ff.error_one.urls,
        outlier={"consecutive_failures": 3, "base_ejection_s": 2.0, "max_ejection_s": 4.0},
        retry={"budget_ratio": 1.0},
    )
    try:
        started = time.monotonic()
        for _ in range(20):
            status, text = _chat(gw)
            assert status == 200, text
        # Ejected after 3 failures; no traffic while the back-off runs.
        assert time.monotonic() - started < 2.0
        assert _injected(bad) == 3
        assert _sample(gw, "headway_gateway_ejections_total", endpoint=bad) == 1
        assert _sample(gw, "headway_gateway_ejected", endpoint=bad) == 1
        assert _sample(gw, "headway_gateway_retries_total", model=MODEL, reason="upstream_5xx") == 3
        # Heal it; after the back-off one probe takes it back.
        assert post(bad, "/admin/faults", {"error_rate": 0}).status == 200
        before = _successes(bad)
        time.sleep(max(0.0, started + 2.1 - time.monotonic()))
        for _ in range(6):
            status, text = _chat(gw)
            assert status == 200, text
        assert _successes(bad) > before
        assert not gw.gateway.outliers.is_ejected(bad)
        assert _sample(gw, "headway_gateway_ejected", endpoint=bad) == 0
        assert _injected(bad) == 3
        assert _sample(gw, "headway_gateway_ejected", endpoint=good) == 0
    finally:
        gw.stop()


def test_crashed_replica_connect_errors_are_retried_and_ejected(ff: FailureFleets) -> None:
    bad = ff.crash_one.urls[1]
    gw = _gateway(
        ff.crash_one.urls,
        outlier={"consecutive_failures": 2, "base_ejection_s": 30.0},
        retry={"budget_min_retries": 10},
    )
    try:
        for _ in range(12):
            status, text = _chat(gw)
            assert status == 200, text
        assert (
            _sample(gw, "headway_gateway_retries_total", model=MODEL, reason="connect_error") >= 1
        )
        assert _sample(gw, "headway_gateway_ejections_total", endpoint=bad) == 1
        assert gw.gateway.outliers.is_ejected(bad)
    finally:
        gw.stop()


def test_hung_replica_first_byte_timeout(ff: FailureFleets) -> None:
    timeouts = {"ttft_s": 0.3}
    retrying = InProcessGateway(
        {
            "pools": [
                pool(
                    MODEL,
                    ff.hang_one.urls,
                    routing="round-robin",
                    retry={"budget_min_retries": 10},
                )
            ],
            "timeouts": timeouts,
        }
    ).start()
    no_retry = InProcessGateway(
        {
            "pools": [
                pool(MODEL, ff.hang_one.urls, routing="round-robin", retry={"max_attempts": 1})
            ],
            "timeouts": timeouts,
        }
    ).start()
    try:
        for _ in range(4):
            status, text = _chat(retrying, stream=True)
            assert status == 200, text
            assert "[DONE]" in text and '"error"' not in text
        assert (
            _sample(retrying, "headway_gateway_retries_total", model=MODEL, reason="timeout") >= 1
        )
        statuses = sorted(_chat(no_retry, stream=True)[0] for _ in range(2))
        assert statuses == [200, 504]
    finally:
        retrying.stop()
        no_retry.stop()


def test_retry_budget_caps_upstream_attempts(ff: FailureFleets) -> None:
    budget_min = 2
    gw = _gateway(
        ff.error_all.urls,
        outlier={"consecutive_failures": 1000},
        retry={"max_attempts": 2, "budget_ratio": 0.2, "budget_min_retries": budget_min},
    )
    before = sum(_injected(u) for u in ff.error_all.urls)
    num_requests = 30
    try:
        for _ in range(num_requests):
            status, text = _chat(gw)
            assert status == 502, text
        attempts = sum(_injected(u) for u in ff.error_all.urls) - before
        assert num_requests <= attempts <= num_requests * 1.2 + budget_min
        retries = _sample(gw, "headway_gateway_retries_total", model=MODEL, reason="upstream_5xx")
        assert attempts == num_requests + retries
    finally:
        gw.stop()


def test_stream_that_sent_bytes_is_not_retried(ff: FailureFleets) -> None:
    gw = _gateway(ff.drop_all.urls, retry={"budget_min_retries": 10})
    try:
        for _ in range(4):
            status, text = _chat(gw, stream=True)
            assert status == 200, text
            events = [
                json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")
            ]
            assert "error" in events[-1], text
            assert "[DONE]" not in text
        retried = gw.gateway.metrics.registry.get_sample_value(
            "headway_gateway_retries_total", {"model": MODEL, "reason": "read_error"}
        )
        assert not retried
    finally:
        gw.stop()


def test_active_health_checks_eject_a_dead_endpoint_without_traffic(
    ff: FailureFleets,
) -> None:
    good, dead = ff.error_one.urls[0], closed_port_url()
    check = {"enabled": True, "interval_s": 0.05, "timeout_s": 0.5, "failure_threshold": 2}
    gw = _gateway(
        [good, dead], health_check=check, outlier={"base_ejection_s": 30, "max_ejection_s": 30}
    )
    try:
        deadline = time.monotonic() + 5.0
        while not gw.gateway.outliers.is_ejected(dead):
            assert time.monotonic() < deadline, "the dead endpoint was not ejected"
            time.sleep(0.02)
        assert not gw.gateway.outliers.is_ejected(good)
        for _ in range(6):
            status, text = _chat(gw)
            assert status == 200, text
        retries = gw.gateway.metrics.registry.get_sample_value(
            "headway_gateway_retries_total", {"model": MODEL, "reason": "connect_error"}
        )
        assert not retries  # no request was sent to the dead endpoint
    finally:
        gw.stop()
    assert not gw.gateway.health_checker._tasks  # stopped with the app


# -- units ----------------------------------------------------------------------------
def test_outlier_backoff_grows_and_probe_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("headway.gateway.outlier.time.monotonic", lambda: now[0])
    cfg = config_from_mapping(
        {
            "pools": [
                pool(
                    MODEL,
                    ["http://a:1"],
                    outlier={
                        "consecutive_failures": 2,
                        "base_ejection_s": 1.0,
                        "max_ejection_s": 3.0,
                    },
                )
            ]
        }
    )
    det = OutlierDetector(cfg, GatewayMetrics())
    url = "http://a:1"
    det.failure(url)
    assert not det.is_blocked(url)
    det.failure(url)
    assert det.is_blocked(url)
    backoffs = []
    for _ in range(4):  # 1, 2, 3 (cap), 3
        start = now[0]
        while det.is_blocked(url):
            now[0] += 0.25
        backoffs.append(now[0] - start)
        det.routed(url)  # the probe
        assert det.is_blocked(url)  # one probe at a time
        det.failure(url)
    assert backoffs == [1.0, 2.0, 3.0, 3.0]
    now[0] += 3.0
    det.routed(url)
    det.neutral(url)  # the probe's client went away: still half-open
    assert not det.is_blocked(url) and det.is_ejected(url)
    det.routed(url)
    det.success(url)
    assert not det.is_ejected(url)
    det.failure(url)
    assert not det.is_blocked(url)  # counts were reset


def test_health_checks_feed_the_ejection_state(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [10.0]
    monkeypatch.setattr("headway.gateway.outlier.time.monotonic", lambda: now[0])
    url = "http://a:1"
    cfg = config_from_mapping(
        {"pools": [pool(MODEL, [url], outlier={"base_ejection_s": 1.0, "max_ejection_s": 8.0})]}
    )
    det = OutlierDetector(cfg, GatewayMetrics())
    det.check_failed(url, 2)
    det.check_passed(url)  # resets the count
    det.check_failed(url, 2)
    assert not det.is_ejected(url)
    det.check_failed(url, 2)
    assert det.is_blocked(url)
    det.check_passed(url)  # during the back-off: ignored
    assert det.is_blocked(url)
    now[0] += 1.0
    det.check_failed(url, 2)  # back-off over, still failing: next back-off (2 s)
    now[0] += 1.5
    assert det.is_blocked(url)
    now[0] += 0.5
    det.check_passed(url)
    assert not det.is_ejected(url)


def test_retry_budget_window(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [50.0]
    monkeypatch.setattr("headway.gateway.outlier.time.monotonic", lambda: now[0])
    budget = RetryBudget(RetryConfig(budget_ratio=0.2, budget_min_retries=1, budget_window_s=10))
    for _ in range(10):
        budget.request()
    assert budget.try_retry() and budget.try_retry()
    assert not budget.try_retry()
    now[0] += 11.0  # the window slid past
    assert budget.try_retry()
    assert not budget.try_retry()


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ({"outlier": {"consecutive_failures": 0}}, "pools[0].outlier.consecutive_failures"),
        ({"outlier": {"base_ejection_s": -1}}, "pools[0].outlier.base_ejection_s"),
        (
            {"outlier": {"max_ejection_s": 1, "base_ejection_s": 2}},
            "pools[0].outlier.max_ejection_s",
        ),
        ({"outlier": {"bogus": 1}}, "pools[0].outlier.bogus"),
        ({"retry": {"max_attempts": 0}}, "pools[0].retry.max_attempts"),
        ({"retry": {"budget_ratio": 1.5}}, "pools[0].retry.budget_ratio"),
        ({"retry": {"budget_min_retries": -1}}, "pools[0].retry.budget_min_retries"),
        ({"retry": {"budget_window_s": 0}}, "pools[0].retry.budget_window_s"),
        ({"health_check": {"enabled": "yes"}}, "pools[0].health_check.enabled"),
        ({"health_check": {"interval_s": 0}}, "pools[0].health_check.interval_s"),
        ({"health_check": {"failure_threshold": 0}}, "pools[0].health_check.failure_threshold"),
        ({"health_check": {"path": "health"}}, "pools[0].health_check.path"),
    ],
)
def test_failure_config_errors_name_the_field(extra: dict[str, object], path: str) -> None:
    with pytest.raises(GatewayConfigError) as info:
        config_from_mapping({"pools": [pool(MODEL, ["http://a:1"], **extra)]})
    assert info.value.path == path


def test_failure_config_defaults() -> None:
    cfg = config_from_mapping({"pools": [pool(MODEL, ["http://a:1"])]})
    assert cfg.pools[0].outlier == OutlierConfig(5, 5.0, 60.0)
    assert cfg.pools[0].retry == RetryConfig(2, 0.2, 3, 10.0)
    assert cfg.pools[0].health_check == HealthCheckConfig(False, 5.0, 2.0, 3, "/health")


def test_all_ejected_fails_open() -> None:
    from headway.gateway.routing import Router
    from headway.gateway.tracker import InFlightTracker
    from headway.routing import RequestContext

    urls = ["http://a:1", "http://b:1"]
    cfg = config_from_mapping({"pools": [pool(MODEL, urls, outlier={"consecutive_failures": 1})]})
    det = OutlierDetector(cfg, GatewayMetrics())
    router = Router(cfg, InFlightTracker(), outliers=det)
    ctx = RequestContext(request_id="r", model=MODEL)
    det.failure(urls[0])
    picks = {router.route(cfg.pools[0], ctx).endpoint for _ in range(4)}  # type: ignore[union-attr]
    assert picks == {urls[1]}  # the ejected one is left out
    det.failure(urls[1])
    picks = {router.route(cfg.pools[0], ctx).endpoint for _ in range(4)}  # type: ignore[union-attr]
    assert picks == set(urls)  # every endpoint out: fail open
