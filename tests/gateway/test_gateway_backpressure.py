"""Backpressure: a per-endpoint in-flight cap, a bounded FIFO admission queue per pool
with a maximum wait, and 429 + `Retry-After` beyond either. Checked against a stub
upstream that holds every request until the test lets it go (and counts how many
each endpoint has at once), and against a real `headway sim` fleet."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from conftest import MODEL, Fleets
from gateway_harness import InProcessGateway, ThreadedUpstream, pool, sim_counters
from prometheus_client.parser import text_string_to_metric_families
from sim_harness import get

from headway.gateway.admission import Admission, Rejected
from headway.gateway.config import PoolConfig, config_from_mapping
from headway.gateway.metrics import GatewayMetrics
from headway.gateway.routing import Router
from headway.gateway.tracker import InFlightTracker
from headway.routing import RequestContext

ANSWER = {"id": "x", "object": "chat.completion", "choices": [], "usage": {}}
DEADLINE_S = 10.0  # no test here may wait longer on anything


class HoldingUpstream(ThreadedUpstream):
    """One server offering endpoints /e0, /e1, ...; every request waits until the test
    releases it (`release`), or answers after `delay_s` when that is set."""

    def __init__(self) -> None:
        super().__init__()
        self.active: Counter[str] = Counter()
        self.max_active: Counter[str] = Counter()
        self.arrivals: list[str] = []  # the `user` field of each request, in arrival order
        self.num_cancelled = 0
        self.delay_s: float | None = None
        self._gate: asyncio.Semaphore | None = None

    def endpoint(self, i: int) -> str:
        return f"{self.url}/e{i}"

    async def _handle(self, request: web.Request) -> web.Response:
        assert self._gate is not None
        ep = request.match_info["ep"]
        body = await request.json()
        self.arrivals.append(str(body.get("user", "")))
        self.active[ep] += 1
        self.max_active[ep] = max(self.max_active[ep], self.active[ep])
        try:
            if self.delay_s is not None:
                await asyncio.sleep(self.delay_s)
            else:
                await self._gate.acquire()
        except asyncio.CancelledError:
            self.num_cancelled += 1
            raise
        finally:
            self.active[ep] -= 1
        return web.json_response(ANSWER)

    async def on_loop_start(self) -> None:
        self._gate = asyncio.Semaphore(0)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{ep}/v1/chat/completions", self._handle)

    def release(self, n: int = 1) -> None:
        assert self._loop is not None and self._gate is not None
        for _ in range(n):
            self._loop.call_soon_threadsafe(self._gate.release)

    def stop(self) -> None:
        if self._loop is not None:
            self.release(10_000)  # let held requests finish so the server can close
        super().stop()


@pytest.fixture
def stub() -> Iterator[HoldingUpstream]:
    s = HoldingUpstream().start()
    yield s
    s.stop()


@pytest.fixture
def make_gateway(
    stub: HoldingUpstream,
) -> Iterator[Callable[..., InProcessGateway]]:
    started: list[InProcessGateway] = []

    def make(num_endpoints: int = 1, **fields: Any) -> InProcessGateway:
        eps = [stub.endpoint(i) for i in range(num_endpoints)]
        gw = InProcessGateway({"pools": [pool("m", eps, **fields)]}).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


def _body(tag: str, model: str = "m", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "user": tag, **extra}


async def _post(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[int, dict[str, str], Any]:
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


async def _until(probe: Callable[[], Any], ok: Callable[[Any], bool], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        value = probe()
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}; last {value!r}"
        await asyncio.sleep(0.005)


def scrape(url: str) -> dict[str, float]:
    """Every sample on /metrics as {'name{k="v",...}': value} (labels sorted), and
    {name: value} for an unlabelled one."""
    resp = get(url, "/metrics")
    assert resp.status == 200, resp.text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(resp.text):
        for sample in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def _queued(gw: InProcessGateway) -> int:
    return gw.gateway.admission.num_queued()


def _assert_429(status: int, headers: dict[str, str], body: Any, retry_after: int) -> None:
    assert status == 429, body
    assert headers["Retry-After"] == str(retry_after)
    assert int(headers["Retry-After"]) >= 1
    assert body["error"]["type"] == "RateLimitError"
    assert body["error"]["code"] == 429
    assert "overloaded" in body["error"]["message"]


async def test_cap_respected_and_queue_is_fifo(
    stub: HoldingUpstream, make_gateway: Callable[..., InProcessGateway]
) -> None:
    gw = make_gateway(2, max_in_flight_per_endpoint=2, admission={"max_queue": 10})
    async with aiohttp.ClientSession() as session:
        running = [asyncio.create_task(_post(session, gw.url, _body(f"r{i}"))) for i in range(4)]
        await _until(lambda: len(stub.arrivals), lambda n: n == 4, "4 requests upstream")
        queued = []
        for i in range(3):  # one at a time, so their queue order is known
            queued.append(asyncio.create_task(_post(session, gw.url, _body(f"q{i}"))))
            await _until(lambda: _queued(gw), lambda n, i=i: n == i + 1, f"q{i} queued")
        await asyncio.sleep(0.05)
        assert len(stub.arrivals) == 4  # nothing got past the cap
        assert stub.max_active == {"e0": 2, "e1": 2}
        metrics = scrape(gw.url)
        assert metrics['headway_gateway_queued_requests{model="m"}'] == 3
        assert metrics["headway_gateway_in_flight_requests"] == 4

        for i in range(3):  # each finishing request hands its slot to the queue's head
            stub.release(1)
            await _until(lambda: len(stub.arrivals), lambda n, i=i: n == 5 + i, f"q{i} sent")
            assert stub.arrivals[-1] == f"q{i}"
            assert _queued(gw) == 2 - i
        stub.release(4)
        async with asyncio.timeout(DEADLINE_S):
            results = await asyncio.gather(*running, *queued)
    assert [r[0] for r in results] == [200] * 7
    assert max(stub.max_active.values()) == 2
    assert gw.num_in_flight() == 0 and _queued(gw) == 0


async def test_queue_full_gets_429_with_retry_after(
    stub: HoldingUpstream, make_gateway: Callable[..., InProcessGateway]
) -> None:
    gw = make_gateway(
        1, max_in_flight_per_endpoint=1, admission={"max_queue": 1, "max_wait_s": 4.5}
    )
    async with aiohttp.ClientSession() as session:
        first = asyncio.create_task(_post(session, gw.url, _body("a")))
        await _until(lambda: len(stub.arrivals), lambda n: n == 1, "a upstream")
        second = asyncio.create_task(_post(session, gw.url, _body("b")))
        await _until(lambda: _queued(gw), lambda n: n == 1, "b queued")
        started = time.monotonic()
        status, headers, body = await _post(session, gw.url, _body("c"))
        assert time.monotonic() - started < 1.0  # rejected at once, not after a wait
        _assert_429(status, headers, body, retry_after=5)  # ceil(max_wait_s)
        assert "x-request-id" in {k.lower() for k in headers}
        stub.release(2)
        async with asyncio.timeout(DEADLINE_S):
            assert [r[0] for r in await asyncio.gather(first, second)] == [200, 200]
    assert stub.arrivals == ["a", "b"]
    metrics = scrape(gw.url)
    assert metrics['headway_gateway_rejected_requests_total{model="m",reason="queue_full"}'] == 1
    assert metrics['headway_gateway_queued_requests{model="m"}'] == 0


async def test_no_queue_rejects_at_once(
    stub: HoldingUpstream, make_gateway: Callable[..., InProcessGateway]
) -> None:
    gw = make_gateway(1, max_in_flight_per_endpoint=1, admission={"max_queue": 0})
    async with aiohttp.ClientSession() as session:
        first = asyncio.create_task(_post(session, gw.url, _body("a")))
        await _until(lambda: len(stub.arrivals), lambda n: n == 1, "a upstream")
        _assert_429(*await _post(session, gw.url, _body("b")), retry_after=30)
        stub.release(1)
        async with asyncio.timeout(DEADLINE_S):
            assert (await first)[0] == 200


async def test_wait_timeout_gets_429_with_retry_after(
    stub: HoldingUpstream, make_gateway: Callable[..., InProcessGateway]
) -> None:
    gw = make_gateway(1, max_in_flight_per_endpoint=1, admission={"max_wait_s": 0.3})
    async with aiohttp.ClientSession() as session:
        first = asyncio.create_task(_post(session, gw.url, _body("a")))
        await _until(lambda: len(stub.arrivals), lambda n: n == 1, "a upstream")
        started = time.monotonic()
        async with asyncio.timeout(DEADLINE_S):
            status, headers, body = await _post(session, gw.url, _body("b"))
        waited = time.monotonic() - started
        _assert_429(status, headers, body, retry_after=1)
        assert 0.25 <= waited < 3.0
        assert _queued(gw) == 0
        stub.release(1)
        async with asyncio.timeout(DEADLINE_S):
            assert (await first)[0] == 200
    assert stub.arrivals == ["a"]  # the timed-out request never went upstream
    metrics = scrape(gw.url)
    assert metrics['headway_gateway_rejected_requests_total{model="m",reason="wait_timeout"}'] == 1
    assert metrics['headway_gateway_requests_total{endpoint="",model="m",status="429"}'] == 1


@pytest.mark.parametrize("stream", [False, True], ids=["non-streaming", "streaming"])
async def test_disconnect_while_queued_releases_the_place(
    stub: HoldingUpstream, make_gateway: Callable[..., InProcessGateway], stream: bool
) -> None:
    gw = make_gateway(1, max_in_flight_per_endpoint=1, admission={"max_queue": 1})
    async with aiohttp.ClientSession() as session:
        first = asyncio.create_task(_post(session, gw.url, _body("a")))
        await _until(lambda: len(stub.arrivals), lambda n: n == 1, "a upstream")
        async with aiohttp.ClientSession() as doomed:  # its own connection, closed below
            gone = asyncio.create_task(_post(doomed, gw.url, _body("gone", stream=stream)))
            await _until(lambda: _queued(gw), lambda n: n == 1, "gone queued")
            gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        await _until(lambda: _queued(gw), lambda n: n == 0, "the queue place released")
        later = asyncio.create_task(_post(session, gw.url, _body("later")))
        await _until(lambda: _queued(gw), lambda n: n == 1, "later queued (not rejected)")
        stub.release(2)
        async with asyncio.timeout(DEADLINE_S):
            assert [r[0] for r in await asyncio.gather(first, later)] == [200, 200]
    assert stub.arrivals == ["a", "later"]
    assert gw.num_in_flight() == 0


async def test_overload_burst_ends_in_success_or_clean_429(
    stub: HoldingUpstream, make_gateway: Callable[..., InProcessGateway]
) -> None:
    cap, num_endpoints = 2, 2
    capacity = cap * num_endpoints
    gw = make_gateway(
        num_endpoints,
        max_in_flight_per_endpoint=cap,
        admission={"max_queue": 2 * capacity, "max_wait_s": 0.5},
    )
    stub.delay_s = 0.1  # each request takes 100 ms upstream
    num_requests = 10 * capacity * 3  # 3 waves of 10x the capacity
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with asyncio.timeout(DEADLINE_S):  # nothing hangs
            results = await asyncio.gather(
                *(_post(session, gw.url, _body(f"b{i}")) for i in range(num_requests))
            )
    statuses = Counter(status for status, _, _ in results)
    assert set(statuses) <= {200, 429}, statuses
    assert statuses[200] >= capacity and statuses[429] > 0
    for status, headers, body in results:
        if status == 429:
            assert int(headers["Retry-After"]) >= 1
            assert body["error"]["type"] == "RateLimitError"
    assert max(stub.max_active.values()) <= cap
    assert len(stub.arrivals) == statuses[200]
    metrics = scrape(gw.url)
    assert metrics["headway_gateway_in_flight_requests"] == 0
    assert metrics['headway_gateway_queued_requests{model="m"}'] == 0
    rejected = sum(v for k, v in metrics.items() if k.startswith("headway_gateway_rejected_requests_total{"))  # fmt: skip
    assert rejected == statuses[429]
    assert gw.num_in_flight() == 0 and _queued(gw) == 0


@pytest.fixture
def capped_sim_gateway(fleets: Fleets) -> Iterator[InProcessGateway]:
    gw = InProcessGateway(
        {
            "pools": [
                pool(
                    MODEL,
                    fleets.main.urls,
                    routing="least-request",
                    max_in_flight_per_endpoint=1,
                    admission={"max_queue": 16, "max_wait_s": 10},
                )
            ]
        }
    ).start()
    yield gw
    gw.stop()


async def test_cap_respected_against_sim_fleet(
    fleets: Fleets, capped_sim_gateway: InProcessGateway
) -> None:
    gw = capped_sim_gateway
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "count"}],
        "max_tokens": 600,
        "ignore_eos": True,
    }
    most_running = 0.0
    most_queued = 0
    async with aiohttp.ClientSession() as session:
        tasks = [asyncio.create_task(_post(session, gw.url, body)) for _ in range(6)]
        async with asyncio.timeout(DEADLINE_S):
            while not all(t.done() for t in tasks):
                for url in fleets.main.urls:
                    running = await asyncio.to_thread(lambda u=url: sim_counters(u)["running"])
                    most_running = max(most_running, running)
                    assert running <= 1, f"{url} runs {running} requests; the cap is 1"
                most_queued = max(most_queued, _queued(gw))
                await asyncio.sleep(0.01)
            results = await asyncio.gather(*tasks)
    assert [r[0] for r in results] == [200] * 6, [r[2] for r in results]
    assert most_running == 1
    assert most_queued >= 1
    assert gw.num_in_flight() == 0 and _queued(gw) == 0


async def test_overload_burst_against_sim_fleet(fleets: Fleets) -> None:
    """10x the fleet's capacity at once, streaming and not: every request ends with
    a response or a clean 429, the replicas never run more than the cap, and the
    gateway's in-flight and queue gauges are back at 0."""
    cap = 2
    capacity = cap * len(fleets.main.urls)
    gw = InProcessGateway(
        {
            "pools": [
                pool(
                    MODEL,
                    fleets.main.urls,
                    routing="least-request",
                    max_in_flight_per_endpoint=cap,
                    admission={"max_queue": capacity, "max_wait_s": 0.5},
                )
            ]
        }
    ).start()
    try:
        bodies = [
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": f"burst {i}"}],
                "max_tokens": 100,
                "ignore_eos": True,
                "stream": i % 2 == 1,
            }
            for i in range(10 * capacity)
        ]

        async def one(session: aiohttp.ClientSession, body: dict[str, Any]) -> tuple[int, str]:
            async with session.post(gw.url + "/v1/chat/completions", json=body) as resp:
                text = await resp.text()
                if resp.status == 429:
                    assert int(resp.headers["Retry-After"]) >= 1
                    assert json.loads(text)["error"]["type"] == "RateLimitError"
                elif body["stream"]:
                    assert text.rstrip().endswith("data: [DONE]"), text[-200:]
                return resp.status, text

        most_running = 0.0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            tasks = [asyncio.create_task(one(session, b)) for b in bodies]
            async with asyncio.timeout(DEADLINE_S):  # nothing hangs
                while not all(t.done() for t in tasks):
                    for url in fleets.main.urls:
                        running = await asyncio.to_thread(lambda u=url: sim_counters(u)["running"])
                        most_running = max(most_running, running)
                    await asyncio.sleep(0.01)
                results = await asyncio.gather(*tasks)
        statuses = Counter(status for status, _ in results)
        assert set(statuses) <= {200, 429}, statuses
        assert statuses[200] >= capacity and statuses[429] > 0, statuses
        assert most_running <= cap
        metrics = scrape(gw.url)
        assert metrics["headway_gateway_in_flight_requests"] == 0
        assert metrics[f'headway_gateway_queued_requests{{model="{MODEL}"}}'] == 0
        assert gw.num_in_flight() == 0 and _queued(gw) == 0
    finally:
        gw.stop()


# -- the admission controller alone (no HTTP): the races a test client cannot time --
def _admission(cap: int = 1, **admission: Any) -> tuple[Admission, PoolConfig, GatewayMetrics]:
    config = config_from_mapping(
        {
            "pools": [
                pool("m", ["http://127.0.0.1:1"], max_in_flight_per_endpoint=cap,
                     admission=admission),
            ]
        }
    )  # fmt: skip
    tracker = InFlightTracker()
    metrics = GatewayMetrics()
    return Admission(config, Router(config, tracker), tracker, metrics), config.pools[0], metrics


def _ctx(i: int) -> RequestContext:
    return RequestContext(request_id=f"r{i}", model="m")


def _gauge(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None
    return value


async def test_slot_granted_to_a_cancelled_waiter_is_handed_on() -> None:
    adm, p, metrics = _admission(cap=1, max_queue=5)
    first = await adm.admit(p, _ctx(0), 1)
    gone = asyncio.create_task(adm.admit(p, _ctx(1), 1))
    later = asyncio.create_task(adm.admit(p, _ctx(2), 1))
    await asyncio.sleep(0)
    assert adm.num_queued() == 2
    first.release()  # hands the slot to `gone` synchronously ...
    gone.cancel()  # ... whose client is gone before its handler runs again
    with pytest.raises(asyncio.CancelledError):
        await gone
    async with asyncio.timeout(1):
        slot = await later  # the slot went on to the next in line
    assert adm.num_queued() == 0
    assert _gauge(metrics, "headway_gateway_in_flight_requests") == 1
    slot.release()
    slot.release()  # exactly once
    assert _gauge(metrics, "headway_gateway_in_flight_requests") == 0
    assert _gauge(metrics, "headway_gateway_queued_requests", model="m") == 0


async def test_cancelled_waiter_leaves_queue_and_order_is_kept() -> None:
    adm, p, metrics = _admission(cap=1, max_queue=3)
    first = await adm.admit(p, _ctx(0), 1)
    waiters = [asyncio.create_task(adm.admit(p, _ctx(i), 1)) for i in range(1, 4)]
    await asyncio.sleep(0)
    with pytest.raises(Rejected) as info:  # the queue of 3 is full
        await adm.admit(p, _ctx(9), 1)
    assert info.value.reason == "queue_full" and info.value.retry_after_s == 30
    waiters[0].cancel()
    await asyncio.sleep(0)
    assert adm.num_queued() == 2
    assert _gauge(metrics, "headway_gateway_queued_requests", model="m") == 2
    first.release()
    await asyncio.sleep(0)
    assert waiters[1].done() and not waiters[2].done()  # FIFO: the older one first
    waiters[1].result().release()
    async with asyncio.timeout(1):
        (await waiters[2]).release()
    assert adm.num_queued() == 0
    assert _gauge(metrics, "headway_gateway_in_flight_requests") == 0
    assert (
        _gauge(metrics, "headway_gateway_rejected_requests_total", model="m", reason="queue_full")
        == 1
    )
