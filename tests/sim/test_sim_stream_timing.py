"""Token emission timing: lag histograms, the timer's gap waits, the stream sink's
write order (direct while the send buffer is empty, queued for the handler otherwise),
a slow reader, and a fleet split across processes."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

import pytest
from sim_harness import MODEL, Fleet, get, openai_client, poll, scrape

from headway.core.engine import TokenOutput
from headway.core.sequence import FinishReason
from headway.sim.clock import AlarmTimer, LagHistogram, PreciseTimer, SimTimer, now
from headway.sim.completions import RequestState, StreamSink, TextAssembler
from headway.sim.config import SimConfig
from headway.sim.fleet import TIMER_ENV, FleetConfigError, make_timer
from headway.sim.protocol import ParsedRequest
from headway.sim.replica import RequestHandle


# -- LagHistogram -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("lags_s", "bucket_counts", "num_early", "max_s"),
    [
        ([0.0], {0: 1}, 0, 0.0),
        ([5e-6, 1e-5], {1: 2}, 0, 1e-5),
        ([-5e-6], {1: 1}, 1, 5e-6),  # early counts by its size, and as early
        ([1.3e-5, 100.0], {3: 1, 81: 1}, 0, 100.0),  # (1.19e-5, 1.41e-5]; past the last edge
    ],
    ids=["on-time", "first-bucket", "early", "open-bucket"],
)
def test_lag_histogram_buckets(
    lags_s: list[float], bucket_counts: dict[int, int], num_early: int, max_s: float
) -> None:
    h = LagHistogram()
    for lag in lags_s:
        h.record(lag)
    snap = h.snapshot()
    assert {i: c for i, c in enumerate(snap["counts"]) if c} == bucket_counts
    assert snap["num_early"] == num_early
    assert snap["max_s"] == max_s
    assert len(snap["counts"]) == len(snap["le_s"]) + 1


# -- process split ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("num_replicas", "num_processes", "slices"),
    [
        (1, 1, [(0,)]),
        (8, 2, [(0, 1, 2, 3), (4, 5, 6, 7)]),
        (3, 2, [(0,), (1, 2)]),
        (5, 3, [(0,), (1, 2), (3, 4)]),
    ],
    ids=["one", "even", "odd", "three"],
)
def test_process_slices(
    num_replicas: int, num_processes: int, slices: list[tuple[int, ...]]
) -> None:
    cfg = SimConfig(num_replicas=num_replicas, num_processes=num_processes)
    assert cfg.process_slices() == slices
    assert cfg.own_replicas == tuple(range(num_replicas))


# -- wait_for_gap, on both timers -------------------------------------------------
# The alarm timer needs ITIMER_REAL, which pytest-timeout's default (signal) method holds.
TIMER_KINDS = [
    pytest.param(PreciseTimer, id="thread"),
    pytest.param(AlarmTimer, id="alarm", marks=pytest.mark.timeout(60, method="thread")),
]


def _timer(kind: type[SimTimer]) -> SimTimer:
    return kind(asyncio.get_running_loop())


@pytest.mark.parametrize("kind", TIMER_KINDS)
async def test_gap_wait_lets_a_due_sleeper_run_first(kind: type[SimTimer]) -> None:
    timer = _timer(kind)
    order: list[str] = []

    async def sleeper(deadline: float) -> None:
        await timer.sleep_until(deadline)
        order.append("sleeper")

    async def deferrable() -> None:
        await timer.wait_for_gap(width_s=0.05, max_wait_s=1.0)
        order.append("work")

    try:
        start = now()
        await asyncio.wait_for(asyncio.gather(sleeper(start + 0.01), deferrable()), 5)
    finally:
        timer.close()
    assert order == ["sleeper", "work"]


@pytest.mark.parametrize("kind", TIMER_KINDS)
async def test_gap_wait_costs_no_handoff_of_its_own(kind: type[SimTimer]) -> None:
    # It looks again when the sleeper in its way returns: one hand-off in all.
    timer = _timer(kind)
    try:
        sleeper = asyncio.ensure_future(timer.sleep_until(now() + 0.02))
        await asyncio.sleep(0)  # registered
        await asyncio.wait_for(timer.wait_for_gap(width_s=0.05, max_wait_s=1.0), 5)
        assert sleeper.done()
    finally:
        timer.close()
    assert timer.num_handoffs == 1


@pytest.mark.parametrize("kind", TIMER_KINDS)
async def test_gap_wait_gives_up_after_its_longest_wait(kind: type[SimTimer]) -> None:
    timer = _timer(kind)
    sleeper = asyncio.ensure_future(timer.sleep_until(now() + 1.0))
    try:
        await asyncio.sleep(0)  # registered
        t0 = now()
        await asyncio.wait_for(timer.wait_for_gap(width_s=2.0, max_wait_s=0.03), 5)
        assert 0.029 <= now() - t0 < 0.5
        assert not sleeper.done()
    finally:
        sleeper.cancel()
        timer.close()


@pytest.mark.parametrize("kind", TIMER_KINDS)
async def test_gap_wait_sees_a_sleeper_woken_early_until_it_returns(kind: type[SimTimer]) -> None:
    # A sleeper handed over early (by the wake bias) yields until its deadline; work
    # that waits for a gap must not start in that interval, right before its deadline.
    timer = _timer(kind)
    timer.wake_bias_s = 0.02  # hand over 20 ms early
    order: list[str] = []

    async def sleeper(deadline: float) -> None:
        await timer.sleep_until(deadline)
        order.append("sleeper")

    async def deferrable() -> None:
        while not timer._fired:  # the sleeper has been handed over, not yet returned
            await asyncio.sleep(0)
        await timer.wait_for_gap(width_s=0.001, max_wait_s=1.0)
        order.append("work")

    try:
        await asyncio.wait_for(asyncio.gather(sleeper(now() + 0.03), deferrable()), 5)
    finally:
        timer.close()
    assert order == ["sleeper", "work"]


@pytest.mark.parametrize(
    ("sleeper_in_s", "width_s", "max_wait_s", "waits"),
    [
        (None, 0.05, 1.0, False),  # nobody due
        (0.5, 0.05, 1.0, False),  # due, but after the gap
        (0.5, 1.0, 0.0, False),  # may not wait at all
    ],
    ids=["idle", "far", "no-wait"],
)
@pytest.mark.parametrize("kind", TIMER_KINDS)
async def test_gap_wait_returns_at_once(
    kind: type[SimTimer], sleeper_in_s: float | None, width_s: float, max_wait_s: float, waits: bool
) -> None:
    timer = _timer(kind)
    task = None
    try:
        if sleeper_in_s is not None:
            task = asyncio.ensure_future(timer.sleep_until(now() + sleeper_in_s))
            await asyncio.sleep(0)  # registered
        t0 = now()
        await timer.wait_for_gap(width_s, max_wait_s)
        assert (now() - t0 > 0.2) is waits
    finally:
        if task is not None:
            task.cancel()
        timer.close()


# -- StreamSink -------------------------------------------------------------------
class FakeTransport:
    def __init__(self) -> None:
        self.buffered = 0
        self.closing = False
        self.written: list[bytes] = []

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        self.written.append(data)


class FakeResponse:
    """Records writes; `write` completes without suspending, as aiohttp's does when
    the transport's buffer is empty."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.written.append(data)


class FakeReplica:
    index = 0

    def __init__(self) -> None:
        self.finished: list[str] = []

    def finish(self, request_id: str, reason: FinishReason) -> None:
        self.finished.append(request_id)


def _parsed(**kw: Any) -> ParsedRequest:
    fields: dict[str, Any] = {
        "is_chat": False, "model": MODEL, "prompt_token_ids": (1, 2, 3), "max_tokens": 3,
        "stream": True, "include_usage": False, "continuous_usage_stats": False,
        "stop": (), "stop_token_ids": frozenset(), "ignore_eos": True, "cache_salt": None,
        "echo_prompt": "", "debug_timing": True, "priority": 0,
    }  # fmt: skip
    fields.update(kw)
    return ParsedRequest(**fields)


def _sink(parsed: ParsedRequest) -> tuple[StreamSink, FakeReplica]:
    from headway.sim.completions import CompletionWriter

    replica = FakeReplica()
    assembler = TextAssembler(lambda t: f"<{t}>", eos_token_id=0)
    writer = CompletionWriter(replica, assembler, False, lambda s: None, lambda s: None)  # type: ignore[arg-type]
    handle = RequestHandle("r1", 0.0)
    state = RequestState(parsed, "cmpl-r1", 0, MODEL)
    sink = writer.attach_stream(handle, state, None)
    assert handle.sink is sink
    return sink, replica


def _emission(token: int, n: int, finish: FinishReason | None = None) -> tuple[TokenOutput, float]:
    """A step's output for the sink and when it is due (wall clock)."""
    return TokenOutput("r1", (token,), 3, n, 0, finish), 100.0 + n


def _tokens(written: list[bytes]) -> list[str]:
    texts = []
    for event in b"".join(written).split(b"\n\n"):
        if event.startswith(b"data: {"):
            texts.append(json.loads(event[6:])["choices"][0]["text"])
    return texts


async def test_sink_writes_in_order_through_a_full_buffer() -> None:
    sink, _ = _sink(_parsed())
    resp, transport = FakeResponse(), FakeTransport()
    sink.open(resp, transport)  # type: ignore[arg-type]
    plan = [(11, 1, 0), (12, 2, 4096), (13, 3, 0)]  # the 2nd finds the buffer full
    for token, n, buffered in plan:
        transport.buffered = buffered
        sink.prepare(*_emission(token, n, FinishReason.LENGTH if n == 3 else None))
        sink.emit()
    # Direct write first; then the 2nd and (behind it, though the buffer emptied) the 3rd.
    assert _tokens(resp.written) == ["<11>"]
    assert len(sink.queue) == 2 and sink.is_finished
    await asyncio.wait_for(sink.wait(), 1)
    while sink.queue:
        await resp.write(sink.queue.popleft())
    assert _tokens(resp.written) == ["<11>", "<12>", "<13>"]
    assert resp.written[-1].endswith(b"data: [DONE]\n\n")
    first = json.loads(resp.written[0][6:].split(b"\n\n")[0])
    assert first["headway_debug"] == {"scheduled_at": 101.0}


@pytest.mark.parametrize(
    ("parsed", "expect_events"),
    [
        (_parsed(), 2),  # token chunk, [DONE]
        (_parsed(include_usage=True), 3),  # token chunk, usage chunk, [DONE]
    ],
    ids=["plain", "usage"],
)
def test_sink_last_chunk_carries_the_end(parsed: ParsedRequest, expect_events: int) -> None:
    sink, _ = _sink(parsed)
    resp = FakeResponse()
    sink.open(resp, FakeTransport())  # type: ignore[arg-type]
    sink.prepare(*_emission(11, 1, FinishReason.LENGTH))
    sink.emit()
    (data,) = resp.written
    events = [e for e in data.split(b"\n\n") if e]
    assert len(events) == expect_events
    assert json.loads(events[0][6:])["choices"][0]["finish_reason"] == "length"
    assert events[-1] == b"data: [DONE]"


def test_sink_stop_string_finishes_the_engine_request() -> None:
    sink, replica = _sink(_parsed(stop=("<12>",)))
    resp = FakeResponse()
    sink.open(resp, FakeTransport())  # type: ignore[arg-type]
    for token, n in [(11, 1), (12, 2)]:
        sink.prepare(*_emission(token, n))
        sink.emit()
    assert replica.finished == ["r1"]
    assert sink.is_finished
    assert _tokens(resp.written) == ["<11>", ""]


def _unchunk(data: bytes) -> bytes:
    """The body of HTTP/1.1 chunks (no trailer expected)."""
    out, rest = b"", data
    while rest:
        size_hex, rest = rest.split(b"\r\n", 1)
        size = int(size_hex, 16)
        assert rest[size : size + 2] == b"\r\n"
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


@pytest.mark.parametrize(
    ("is_chunked", "num_via_response"),
    [(True, 1), (False, 3)],
    ids=["chunked-then-transport", "unchunked-via-response"],
)
def test_sink_writes_framed_chunks_to_the_transport_once_headers_are_out(
    is_chunked: bool, num_via_response: int
) -> None:
    # The first chunk goes through aiohttp (it sends the headers with it); later ones,
    # framed as HTTP/1.1 chunks, straight to the transport, only if the body is chunked.
    sink, _ = _sink(_parsed())
    resp, transport = FakeResponse(), FakeTransport()
    sink.open(resp, transport, is_chunked)  # type: ignore[arg-type]
    for n in (1, 2, 3):
        sink.prepare(*_emission(10 + n, n, FinishReason.LENGTH if n == 3 else None))
        sink.emit()
    assert len(resp.written) == num_via_response
    assert len(transport.written) == 3 - num_via_response
    body = b"".join(resp.written) + _unchunk(b"".join(transport.written))
    assert _tokens([body]) == ["<11>", "<12>", "<13>"]
    assert body.endswith(b"data: [DONE]\n\n")
    assert sink.is_finished and sink.error is None


def test_sink_fails_on_a_closing_transport() -> None:
    sink, _ = _sink(_parsed())
    resp, transport = FakeResponse(), FakeTransport()
    sink.open(resp, transport, True)  # type: ignore[arg-type]
    sink.prepare(*_emission(11, 1))
    sink.emit()
    transport.closing = True
    sink.prepare(*_emission(12, 2))
    sink.emit()
    assert isinstance(sink.error, ConnectionResetError)
    assert transport.written == [] and len(resp.written) == 1


def test_sink_before_open_queues() -> None:
    sink, _ = _sink(_parsed())
    sink.prepare(*_emission(11, 1))
    sink.emit()
    assert len(sink.queue) == 1 and not sink.is_finished


# -- against a fleet --------------------------------------------------------------
def _timing(url: str) -> dict[str, Any]:
    body: dict[str, Any] = get(url, "/debug/timing").json()
    return body


def test_debug_timing_counts_streamed_chunks(start_fleet: Callable[..., Fleet]) -> None:
    fleet = start_fleet("--replicas", "1", "--time-scale", "20")
    before = sum(_timing(fleet.url)["emission_lag"]["counts"])
    client = openai_client(fleet.url)
    stream = client.completions.create(
        model=MODEL, prompt="hello", max_tokens=5, stream=True, extra_body={"ignore_eos": True}
    )
    texts = [c.choices[0].text for c in stream if c.choices]
    assert len(texts) == 5
    after = _timing(fleet.url)
    assert sum(after["emission_lag"]["counts"]) - before == 5
    assert sum(after["wake_lag"]["counts"]) >= 5


def test_slow_reader_gets_every_chunk_in_order(start_fleet: Callable[..., Fleet]) -> None:
    fleet = start_fleet("--replicas", "1", "--time-scale", "1000")
    port = fleet.replica(0)["port"]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
    sock.settimeout(30)
    sock.connect(("127.0.0.1", port))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.sock = sock
    # ~6 MB of chunks: more than the kernel's send buffer (4 MB at most here), so most
    # of them wait in the server's transport and its handler's queue.
    num_tokens = 20000
    body = {"model": MODEL, "prompt": "hi", "max_tokens": num_tokens, "stream": True,
            "ignore_eos": True, "headway_debug_timing": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}  # fmt: skip
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    # Read nothing until the engine is done: the chunks wait in the server's queues.
    poll(
        lambda: scrape(fleet.url).get("vllm:num_requests_running", 1.0),
        lambda running: running == 0,
        deadline_s=30,
        what="the engine finishing the request",
    )
    data = conn.getresponse().read()
    chunks = [json.loads(e[6:]) for e in data.split(b"\n\n") if e.startswith(b"data: {")]
    tokens = [c for c in chunks if c["choices"]]
    assert len(tokens) == num_tokens
    assert [c["usage"]["completion_tokens"] for c in tokens] == list(range(1, num_tokens + 1))
    assert chunks[-1]["usage"]["completion_tokens"] == num_tokens and not chunks[-1]["choices"]
    assert data.endswith(b"data: [DONE]\n\n")


def test_fleet_split_across_processes(start_fleet: Callable[..., Fleet]) -> None:
    fleet = start_fleet("--replicas", "3", "--processes", "2", "--time-scale", "20")
    replicas = fleet.info["replicas"]
    assert [r["index"] for r in replicas] == [0, 1, 2]
    assert replicas[0]["pid"] == fleet.proc.pid
    assert replicas[1]["pid"] == replicas[2]["pid"] != fleet.proc.pid
    for url in fleet.urls:
        client = openai_client(url)
        out = client.completions.create(model=MODEL, prompt="hello", max_tokens=3)
        assert out.choices[0].finish_reason in ("length", "stop")
    worker = replicas[1]["pid"]
    fleet.stop()
    poll(lambda: _alive(worker), lambda alive: not alive, what="the worker process exiting")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- GcPacer ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("is_enabled", "thresholds", "expect"),
    [
        (True, (1, 1, 1), None),  # automatic collection on: the pacer stays out
        (False, (10**6, 10, 10), None),  # below the first threshold
        (False, (1, 10**6, 10**6), 0),
        (False, (1, 1, 10**6), 1),
    ],
    ids=["gc-enabled", "not-due", "gen0", "gen1"],
)
def test_gc_pacer_due(
    is_enabled: bool, thresholds: tuple[int, int, int], expect: int | None
) -> None:
    import gc

    from headway.sim.clock import GcPacer

    saved_threshold, was_enabled = gc.get_threshold(), gc.isenabled()
    try:
        if not is_enabled:
            gc.disable()
        gc.collect()
        gc.collect(0)  # one gen-0 collection on the gen-1 count
        gc.set_threshold(*thresholds)
        keep = [[] for _ in range(10)]  # container allocations count toward gen 0
        assert GcPacer().due() == expect, gc.get_count()
        del keep
    finally:
        gc.set_threshold(*saved_threshold)
        if was_enabled:
            gc.enable()


class BrokenResponse(FakeResponse):
    async def write(self, data: bytes) -> None:
        raise ValueError("broken")


class BrokenAssembler:
    def token_json(self, token_id: int) -> bytes:
        raise ZeroDivisionError

    def advance(self, state: RequestState, output: TokenOutput) -> str:
        raise ZeroDivisionError


@pytest.mark.parametrize(
    ("where", "finish"),
    [("render", None), ("render", FinishReason.LENGTH), ("write", None)],
    ids=["render-template", "render-dict", "write"],
)
async def test_sink_failure_ends_the_request_not_the_loop(
    where: str, finish: FinishReason | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink, _ = _sink(_parsed())
    sink.open(BrokenResponse() if where == "write" else FakeResponse(), FakeTransport())  # type: ignore[arg-type]
    if where == "render":
        monkeypatch.setattr(sink._writer, "assembler", BrokenAssembler())
    sink.prepare(*_emission(11, 1, finish))  # must not raise: it runs in the engine loop
    sink.emit()
    await asyncio.wait_for(sink.wait(), 1)  # the handler is woken to raise it
    assert isinstance(sink.error, ZeroDivisionError if where == "render" else ValueError)


# -- the sim's timer choice ---------------------------------------------------------
@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize(
    ("value", "expect"),
    [("thread", PreciseTimer), ("alarm", AlarmTimer), ("auto", AlarmTimer), ("", AlarmTimer)],
    ids=["thread", "alarm", "auto", "unset"],
)
async def test_sim_timer_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, expect: type[SimTimer]
) -> None:
    monkeypatch.setenv(TIMER_ENV, value)
    timer = make_timer(asyncio.get_running_loop())
    try:
        assert type(timer) is expect
    finally:
        timer.close()


@pytest.mark.timeout(60, method="thread")
async def test_sim_timer_auto_falls_back_while_the_alarm_is_in_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    signal.setitimer(signal.ITIMER_REAL, 100.0)  # someone else's alarm
    try:
        monkeypatch.setenv(TIMER_ENV, "auto")
        timer = make_timer(asyncio.get_running_loop())
        assert type(timer) is PreciseTimer
        timer.close()
        monkeypatch.setenv(TIMER_ENV, "alarm")
        with pytest.raises(FleetConfigError, match=TIMER_ENV):
            make_timer(asyncio.get_running_loop())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)


def test_sim_timer_unknown_kind_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TIMER_ENV, "sundial")
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(FleetConfigError, match=f"{TIMER_ENV}='sundial'"):
            make_timer(loop)
    finally:
        loop.close()
