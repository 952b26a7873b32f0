"""Per-request accounting: the JSON access log (one line per request, never a key
or a body) and the Prometheus latency histograms / token and outcome counters, over
a real `headway sim` fleet."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MODEL, Fleets
from gateway_harness import InProcessGateway, closed_port_url, pool
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from sim_harness import families, poll, post

from headway.gateway import server
from headway.gateway.accounting import (
    ACCESS_LOGGER,
    AccessLog,
    BufferedLineHandler,
    RequestRecord,
    outcome_of,
    setup_access_log,
)
from headway.gateway.config import AccessLogConfig, GatewayConfigError, config_from_mapping
from headway.gateway.metrics import GapHistogram

SECRET = "sk-test-NEVER-LOG-ME-1234"


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


@pytest.fixture
def access_lines() -> Iterator[_Lines]:
    logger = logging.getLogger(ACCESS_LOGGER)
    handler = _Lines()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@pytest.fixture(scope="module")
def gw(fleets: Fleets) -> Iterator[InProcessGateway]:
    # One dead endpoint first: round-robin sends every other request there, and the
    # gateway retries it on the healthy one (a record with retries=1).
    g = InProcessGateway(
        {
            "pools": [
                pool(
                    MODEL,
                    [closed_port_url(), fleets.main.urls[0]],
                    routing="round-robin",
                    outlier={"consecutive_failures": 1000},
                    retry={"budget_min_retries": 1000},
                )
            ]
        }
    ).start()
    yield g
    g.stop()


def _one(lines: _Lines, request_id: str) -> dict[str, Any]:
    found = poll(
        lambda: [r for r in lines.records() if r["request_id"] == request_id],
        lambda rs: len(rs) >= 1,
        what=f"access record {request_id}",
    )
    assert len(found) == 1, found
    return found[0]


def test_streamed_request_record(gw: InProcessGateway, access_lines: _Lines) -> None:
    body = {"model": MODEL, "prompt": "hello " * 20, "max_tokens": 6, "ignore_eos": True, "stream": True}  # fmt: skip
    headers = {
        "x-request-id": "req-stream-1",
        "x-tenant-id": "acme",
        "x-session-id": "sess-9",
        "Authorization": f"Bearer {SECRET}",
    }
    resp = post(gw.url, "/v1/completions", body, headers=headers)
    assert resp.status == 200 and b"[DONE]" in resp.body
    rec = _one(access_lines, "req-stream-1")
    assert (rec["model"], rec["pool"], rec["api"]) == (MODEL, MODEL, "completions")
    assert (rec["tenant"], rec["session"], rec["stream"]) == ("acme", "sess-9", True)
    assert (rec["status"], rec["outcome"]) == (200, "ok")
    assert rec["endpoint"] == gw.config.pools[0].endpoints[1]  # the healthy one
    assert rec["completion_tokens"] == 6 and rec["prompt_tokens"] > 0
    assert rec["ttft_ms"] > 0 and rec["tpot_ms"] > 0 and rec["e2e_ms"] >= rec["ttft_ms"]
    assert 0 <= rec["routed_ms"] <= rec["ttft_ms"]  # before any byte came back
    assert rec["retries"] == len(rec["retry_reasons"])
    assert all(r == "connect_error" for r in rec["retry_reasons"])
    assert SECRET not in "".join(access_lines.lines)
    assert "hello" not in "".join(access_lines.lines)  # no bodies


def test_generated_request_id_matches_response(gw: InProcessGateway, access_lines: _Lines) -> None:
    body = {"model": MODEL, "prompt": "x", "max_tokens": 3}
    resp = post(gw.url, "/v1/completions", body)
    assert resp.status == 200
    request_id = resp.headers["x-request-id"]
    assert len(request_id) == 32
    rec = _one(access_lines, request_id)
    assert rec["stream"] is False and rec["ttft_ms"] is None and rec["tpot_ms"] is None
    assert rec["completion_tokens"] == 3 and rec["e2e_ms"] > 0


def test_retry_is_recorded(gw: InProcessGateway, access_lines: _Lines) -> None:
    ids = [f"req-retry-{i}" for i in range(2)]  # round-robin: one of two hits the dead one
    for request_id in ids:
        body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
        assert post(gw.url, "/v1/completions", body, headers={"x-request-id": request_id}).status == 200  # fmt: skip
    recs = [_one(access_lines, i) for i in ids]
    assert all(r["retries"] in (0, 1) for r in recs) and any(r["retries"] for r in recs)
    for retried in (r for r in recs if r["retries"]):
        assert retried["retry_reasons"] == ["connect_error"] and retried["outcome"] == "ok"


@pytest.mark.parametrize(
    ("body", "status", "outcome"),
    [
        ({"model": "nope", "prompt": "x"}, 404, "client_error"),
        ({"model": MODEL}, 400, "client_error"),
    ],
    ids=["unknown-model", "no-prompt"],
)
def test_error_records(
    gw: InProcessGateway, access_lines: _Lines, body: dict[str, Any], status: int, outcome: str
) -> None:
    request_id = f"req-err-{status}"
    resp = post(gw.url, "/v1/completions", body, headers={"x-request-id": request_id})
    assert resp.status == status
    rec = _one(access_lines, request_id)
    assert (rec["status"], rec["outcome"]) == (status, outcome)
    assert rec["error"]
    assert rec["routed_ms"] is None  # answered before any upstream was tried


def test_metrics_histograms_by_model_and_endpoint(gw: InProcessGateway) -> None:
    body = {"model": MODEL, "prompt": "y", "max_tokens": 5, "ignore_eos": True, "stream": True}
    assert post(gw.url, "/v1/completions", body).status == 200
    healthy = gw.config.pools[0].endpoints[1]
    names = (
        "headway_gateway_ttft_seconds",
        "headway_gateway_tpot_seconds",
        "headway_gateway_inter_token_latency_seconds",
        "headway_gateway_e2e_seconds",
    )

    def counts(fams: Any) -> list[float]:
        return [
            sum(
                s.value
                for s in fams[name].samples
                if s.name == name + "_count" and s.labels == {"model": MODEL, "endpoint": healthy}
            )
            for name in names
        ]

    # A stream's latency histograms are recorded once its last bytes are out, so a
    # client that saw the end may ask a moment before they are.
    fams = poll(
        lambda: families(gw.url),
        lambda f: min(counts(f)) >= 1,
        deadline_s=10,
        what="latency histograms of the streamed request",
    )
    tokens = {
        s.labels["kind"]: s.value
        for s in fams["headway_gateway_tokens"].samples
        if s.name == "headway_gateway_tokens_total"
    }
    assert tokens["completion"] >= 5 and tokens["prompt"] >= 1
    outcomes = {
        s.labels["outcome"]: s.value
        for s in fams["headway_gateway_request_outcomes"].samples
        if s.name == "headway_gateway_request_outcomes_total"
    }
    assert outcomes["ok"] >= 1


@pytest.mark.parametrize(
    ("status", "is_complete", "outcome"),
    [
        (200, True, "ok"),
        (200, False, "stream_error"),
        (400, True, "client_error"),
        (429, True, "rejected"),
        (499, True, "cancelled"),
        (502, True, "upstream_error"),
        (503, True, "no_endpoint"),
        (504, True, "upstream_error"),
        (500, True, "error"),
    ],
    ids=["ok", "stream-error", "400", "429", "499", "502", "503", "504", "500"],
)
def test_outcome_of(status: int, is_complete: bool, outcome: str) -> None:
    assert outcome_of(status, is_complete) == outcome


@pytest.mark.parametrize(
    ("tokens", "tpot_s"),
    [(None, None), (1, None), (2, 0.5), (5, 0.125)],
    ids=["no-usage", "one-token", "two", "five"],
)
def test_tpot_formula(tokens: int | None, tpot_s: float | None) -> None:
    rec = RequestRecord("r", "chat", arrived_at=10.0)
    rec.is_stream = True
    rec.first_byte_at, rec.finished_at = 10.5, 11.0
    rec.num_completion_tokens = tokens
    assert rec.tpot_s == tpot_s


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, AccessLogConfig()),
        ({"path": "-"}, AccessLogConfig(path=None)),
        ({"path": "/tmp/a.log", "enabled": False}, AccessLogConfig(False, "/tmp/a.log")),
    ],
    ids=["default-stderr", "dash-stderr", "file-off"],
)
def test_access_log_config(raw: dict[str, Any], expected: AccessLogConfig) -> None:
    cfg = config_from_mapping({"pools": [{"model": "m"}], "access_log": raw})
    assert cfg.access_log == expected


def test_access_log_config_error_names_field() -> None:
    with pytest.raises(GatewayConfigError, match=r"^access_log\.enabled: must be true or false"):
        config_from_mapping({"pools": [{"model": "m"}], "access_log": {"enabled": "yes"}})


def test_gap_histogram_buckets_like_prometheus() -> None:
    values = [0.0005, 0.001, 0.0011, 0.012, 0.05, 5.0]
    bounds = (0.001, 0.01, 0.05, 1.0)
    ours_registry, ref_registry = CollectorRegistry(), CollectorRegistry()
    ours = GapHistogram("gaps", "doc", ("model",), bounds)
    ours_registry.register(ours)
    ours.add(("m",), values[:2])
    ours.add(("m",), values[2:])
    ref = Histogram("gaps", "doc", ("model",), buckets=bounds, registry=ref_registry)
    for v in values:
        ref.labels("m").observe(v)

    def samples(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return [x for x in text.splitlines() if x.startswith("gaps_") and "_created" not in x]

    assert samples(ours_registry) == samples(ref_registry)
    assert 'gaps_bucket{le="0.001",model="m"} 2.0' in samples(ours_registry)


@pytest.fixture(scope="module")
def faulty_gw(fleets: Fleets) -> Iterator[InProcessGateway]:
    g = InProcessGateway(
        {
            "pools": [
                pool("drop-model", fleets.drop.urls, retry={"max_attempts": 1}),
                pool("hang-model", fleets.hang.urls),
            ]
        }
    ).start()
    yield g
    g.stop()


def test_stream_broken_mid_way_is_a_stream_error(
    faulty_gw: InProcessGateway, access_lines: _Lines
) -> None:
    body = {"model": "drop-model", "prompt": "x", "max_tokens": 20, "ignore_eos": True, "stream": True}  # fmt: skip
    resp = post(faulty_gw.url, "/v1/completions", body, headers={"x-request-id": "req-drop"})
    assert resp.status == 200 and b'"error"' in resp.body  # the SSE error event
    rec = _one(access_lines, "req-drop")
    assert (rec["status"], rec["outcome"]) == (200, "stream_error")
    assert rec["ttft_ms"] is not None


def test_client_gone_is_cancelled(faulty_gw: InProcessGateway, access_lines: _Lines) -> None:
    body = {"model": "hang-model", "prompt": "x", "max_tokens": 5}
    with pytest.raises(TimeoutError):
        post(faulty_gw.url, "/v1/completions", body, headers={"x-request-id": "req-gone"}, timeout_s=0.3)  # fmt: skip
    rec = _one(access_lines, "req-gone")
    assert (rec["status"], rec["outcome"]) == (499, "cancelled")
    assert rec["e2e_ms"] >= 250


def _itl_count(url: str, endpoint: str) -> float:
    fam = families(url)["headway_gateway_inter_token_latency_seconds"]
    return sum(
        s.value
        for s in fam.samples
        if s.name.endswith("_count") and s.labels == {"model": MODEL, "endpoint": endpoint}
    )


def test_long_stream_gaps_flushed_early_counted_once(
    gw: InProcessGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "_MAX_PENDING_GAPS", 2)
    healthy = gw.config.pools[0].endpoints[1]
    before = _itl_count(gw.url, healthy)
    # Enough tokens that the relay reads them in several pieces even on a loaded
    # machine (each read after the first adds one gap).
    num_tokens = 64
    body = {"model": MODEL, "prompt": "z", "max_tokens": num_tokens, "ignore_eos": True, "stream": True}  # fmt: skip
    assert post(gw.url, "/v1/completions", body).status == 200
    added = poll(lambda: _itl_count(gw.url, healthy) - before, lambda n: n >= 3, what="gaps")
    # At most one gap between two of the <= num_tokens + 2 events (tokens, usage,
    # [DONE]): a flushed list counted again would exceed it.
    assert added <= num_tokens + 1


class _Writes(io.StringIO):
    """A text stream that remembers each write (one batch each)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def _record(request_id: str) -> RequestRecord:
    rec = RequestRecord(request_id, "chat", arrived_at=1.0)
    rec.finished_at = 1.25
    return rec


@pytest.mark.parametrize(
    ("num_lines", "num_writes"),
    [(1, 1), (3, 1), (40, 2)],  # a line is ~420 bytes: 4096 bytes hold 9
    ids=["one", "few", "over-one-batch"],
)
def test_buffered_lines_flushed_by_the_loop_timer(num_lines: int, num_writes: int) -> None:
    stream = _Writes()
    handler = BufferedLineHandler(stream, flush_after_s=0.0)
    logger = logging.getLogger(ACCESS_LOGGER)
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    access = AccessLog(AccessLogConfig(), worker=3)

    async def run() -> None:
        for i in range(num_lines):
            access.emit(_record(f"r{i}"))
        if num_lines < 10:
            assert stream.writes == []  # waiting for the timer
        for _ in range(100):  # bounded: the timer runs within a loop iteration or two
            if stream.getvalue().count("\n") == num_lines:
                break
            await asyncio.sleep(0)

    try:
        asyncio.run(run())
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert [x["request_id"] for x in lines] == [f"r{i}" for i in range(num_lines)]
    assert all(x["worker"] == 3 and x["e2e_ms"] == 250.0 for x in lines)
    assert all(len(w.encode()) <= 4096 and w.endswith("\n") for w in stream.writes)
    assert len([w for w in stream.writes if w]) >= num_writes


def test_buffered_lines_without_a_loop_are_written_at_once() -> None:
    stream = _Writes()
    handler = BufferedLineHandler(stream)
    handler.handle(logging.makeLogRecord({"msg": "one", "levelno": logging.INFO}))
    handler.write_line("two")
    assert stream.writes == ["one\n", "two\n"]


def test_buffered_lines_flushed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    handler = setup_access_log(AccessLogConfig(path=str(path)))
    assert isinstance(handler, BufferedLineHandler)

    async def run() -> None:
        AccessLog(AccessLogConfig()).emit(_record("r-close"))
        assert path.read_text() == ""  # batched: the timer has not run

    try:
        asyncio.run(run())
    finally:
        setup_access_log(AccessLogConfig(enabled=False))  # closes (flushes) the handler
        logging.getLogger(ACCESS_LOGGER).setLevel(logging.NOTSET)
        logging.getLogger(ACCESS_LOGGER).propagate = True
    assert json.loads(path.read_text())["request_id"] == "r-close"


def test_buffered_lines_survive_a_closed_loop() -> None:
    """Lines queued under a loop that closed before its timer ran go out with the
    next loop's batch (a timer on a closed loop never fires)."""
    stream = _Writes()
    handler = BufferedLineHandler(stream, flush_after_s=10.0)

    async def first() -> None:
        handler.write_line("one")

    async def second() -> None:
        handler.flush_after_s = 0.0
        handler.write_line("two")
        for _ in range(100):  # bounded: the new timer runs within a loop iteration or two
            if stream.writes:
                break
            await asyncio.sleep(0)

    asyncio.run(first())
    assert stream.writes == []
    asyncio.run(second())
    assert stream.getvalue() == "one\ntwo\n"
