"""The precise timer (never early, in order, batched hand-offs) and the bench runner's
use of it: every due-time wait goes through the runner's timer, and the lag the runner
records is the send time minus the due time. Runner tests use a fake client, and a fake
clock and timer where the exact lag is asserted."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from headway.bench import runner as runner_module
from headway.bench.client import StreamingClient
from headway.bench.runner import (
    TIMER_ENV,
    LoadLevel,
    LoopTimer,
    PointRunner,
    ScheduledSession,
    now_s,
    timer_kind_from_env,
)
from headway.core.workloads import Call, ChatMessage, Session, Stage
from headway.precise_timer import MAX_WAKE_BIAS_S, AlarmTimer, PreciseTimer, now

# AlarmTimer needs ITIMER_REAL, which pytest-timeout's default (signal) method holds.
FREE_ALARM = pytest.mark.timeout(60, method="thread")


# -- PreciseTimer ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("offsets_s", "batch_window_s"),
    [
        ([0.004, 0.001, 0.002], 0.0),
        ([0.004, 0.001, 0.002], 50e-6),
        ([0.003, 0.00301, 0.00302, 0.00303], 50e-6),
        ([0.002, -0.01], 50e-6),
    ],
    ids=["unbatched", "batched-apart", "batched-burst", "past"],
)
async def test_timer_never_wakes_early_and_keeps_order(
    offsets_s: list[float], batch_window_s: float
) -> None:
    await _check_never_early_in_order(
        PreciseTimer(asyncio.get_running_loop(), batch_window_s=batch_window_s), offsets_s
    )


async def _check_never_early_in_order(
    timer: PreciseTimer | AlarmTimer, offsets_s: list[float]
) -> None:
    """Sleepers due at `offsets_s` from now wake no earlier than due, in due order."""
    woke: list[tuple[float, float]] = []

    async def sleeper(deadline: float) -> None:
        await timer.sleep_until(deadline)
        woke.append((deadline, now()))

    try:
        start = now()
        await asyncio.wait_for(asyncio.gather(*(sleeper(start + d) for d in offsets_s)), 5)
    finally:
        timer.close()
    assert len(woke) == len(offsets_s)
    assert all(at >= deadline for deadline, at in woke)
    assert [d for d, _ in woke] == sorted(d for d, _ in woke)
    assert 0.0 <= timer.wake_bias_s <= MAX_WAKE_BIAS_S


@pytest.mark.parametrize(
    ("batch_window_s", "max_handoffs"),
    [(50e-6, 1), (0.0, 5)],
    ids=["window-shares-one-handoff", "no-window"],
)
async def test_timer_batches_wakeups_due_together(batch_window_s: float, max_handoffs: int) -> None:
    timer = PreciseTimer(asyncio.get_running_loop(), batch_window_s=batch_window_s)
    try:
        # Five deadlines 10 µs apart, far enough ahead that all are queued first.
        first = now() + 0.05
        await asyncio.wait_for(
            asyncio.gather(*(timer.sleep_until(first + 1e-5 * i) for i in range(5))), 5
        )
    finally:
        timer.close()
    assert timer.num_wakeups == 5
    assert 1 <= timer.num_handoffs <= max_handoffs


async def test_timer_reads_the_injected_clock() -> None:
    # The bench runs on time.monotonic (CLOCK_MONOTONIC, like perf_counter on Linux).
    timer = PreciseTimer(asyncio.get_running_loop(), clock=time.monotonic)
    try:
        deadline = time.monotonic() + 0.003
        await asyncio.wait_for(timer.sleep_until(deadline), 5)
        assert time.monotonic() >= deadline
    finally:
        timer.close()


@pytest.mark.parametrize(
    ("batch_window_s", "max_wake_bias_s", "field_name"),
    [
        (-1e-6, 0.0, "batch_window_s"),
        (float("nan"), 0.0, "batch_window_s"),
        (0.0, -1e-6, "max_wake_bias_s"),
    ],
    ids=["negative-window", "nan-window", "negative-bias-cap"],
)
def test_timer_rejects_bad_settings(
    batch_window_s: float, max_wake_bias_s: float, field_name: str
) -> None:
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(ValueError, match=field_name):
            PreciseTimer(loop, batch_window_s=batch_window_s, max_wake_bias_s=max_wake_bias_s)
    finally:
        loop.close()


async def test_timer_bias_stays_within_its_cap() -> None:
    timer = PreciseTimer(asyncio.get_running_loop(), max_wake_bias_s=0.0)
    try:
        start = now()
        await asyncio.wait_for(
            asyncio.gather(*(timer.sleep_until(start + 0.0005 * i) for i in range(20))), 5
        )
    finally:
        timer.close()
    assert timer.wake_bias_s == 0.0


async def test_timer_close_stops_its_thread() -> None:
    timer = PreciseTimer(asyncio.get_running_loop())
    timer.close()
    assert not timer._thread.is_alive()


# -- AlarmTimer ------------------------------------------------------------------------
@FREE_ALARM
@pytest.mark.parametrize(
    ("offsets_s", "batch_window_s"),
    [
        ([0.004, 0.001, 0.002], 0.0),
        ([0.003, 0.00301, 0.00302, 0.00303], 50e-6),
        ([0.002, -0.01], 50e-6),
    ],
    ids=["unbatched", "batched-burst", "past"],
)
async def test_alarm_timer_never_wakes_early_and_keeps_order(
    offsets_s: list[float], batch_window_s: float
) -> None:
    await _check_never_early_in_order(
        AlarmTimer(asyncio.get_running_loop(), batch_window_s=batch_window_s), offsets_s
    )


@FREE_ALARM
async def test_alarm_timer_batches_and_gives_the_alarm_back() -> None:
    assert AlarmTimer.is_available()
    timer = AlarmTimer(asyncio.get_running_loop(), batch_window_s=50e-6)
    try:
        assert not AlarmTimer.is_available()  # one holder at a time
        first = now() + 0.05
        await asyncio.wait_for(
            asyncio.gather(*(timer.sleep_until(first + 1e-5 * i) for i in range(5))), 5
        )
    finally:
        timer.close()
    assert (timer.num_handoffs, timer.num_wakeups) == (1, 5)
    assert AlarmTimer.is_available()
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@FREE_ALARM
async def test_alarm_timer_is_unavailable_while_the_alarm_is_in_use() -> None:
    previous = signal.signal(signal.SIGALRM, signal.SIG_IGN)
    signal.setitimer(signal.ITIMER_REAL, 100.0)
    try:
        assert not AlarmTimer.is_available()
        with pytest.raises(RuntimeError, match="ITIMER_REAL"):
            AlarmTimer(asyncio.get_running_loop())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)


# -- the runner's waits ----------------------------------------------------------------
@dataclass
class FakeResult:
    answer_text: str = ""
    record: Any = None


@dataclass
class FakeClient:
    """Reports the call as sent at once, at the clock's reading; `on_call` sees the
    runner mid-run."""

    clock: Callable[[], float]
    on_call: Callable[[], None] | None = None
    sink: list[Any] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)

    async def call(
        self,
        call: Call,
        session_id: str,
        messages: Any = None,
        on_sent: Callable[[float], None] | None = None,
    ) -> FakeResult:
        t = self.clock()
        self.sent_at.append(t)
        if on_sent is not None:
            on_sent(t)
        if self.on_call is not None:
            self.on_call()
        return FakeResult()


@dataclass
class FakeClock:
    t: float = 0.0

    def __call__(self) -> float:
        return self.t


@dataclass
class SteppingTimer:
    """Records every deadline and 'wakes' exactly `late_s` after it on the fake clock."""

    clock: FakeClock
    late_s: float
    deadlines: list[float] = field(default_factory=list)

    async def sleep_until(self, deadline: float) -> None:
        self.deadlines.append(deadline)
        if deadline > self.clock.t:
            self.clock.t = deadline + self.late_s


def session(index: int, offset_s: float, *stage_delays_s: float) -> ScheduledSession:
    stages = tuple(
        Stage(delay, (Call(f"c{index}.{k}", (ChatMessage("user", "q"),), 1, 1),))
        for k, delay in enumerate(stage_delays_s)
    )
    return ScheduledSession(index, Session(f"s{index}", stages), offset_s)


@pytest.mark.parametrize(
    ("level", "late_s"),
    [
        (LoadLevel(request_rate=100.0), 0.0),
        (LoadLevel(request_rate=100.0), 0.0004),
        (LoadLevel(request_rate=100.0, max_concurrency=4), 0.0002),
    ],
    ids=["on-time", "late", "concurrency-cap"],
)
async def test_runner_waits_on_its_timer_and_records_the_lag(
    level: LoadLevel, late_s: float
) -> None:
    # Started well ahead (the runner's dispatch lead sleeps on the event loop, which
    # the fake clock does not advance), sessions 10 ms apart, the second with a stage
    # 5 ms after its first call (before the third session is due).
    clock = FakeClock(100.0)
    started_at = 100.0 + 0.02
    plan = [session(0, 0.0, 0.0), session(1, 0.01, 0.0, 0.005), session(2, 0.02, 0.0)]
    timer = SteppingTimer(clock, late_s)
    client = FakeClient(clock)
    runner = PointRunner(cast(StreamingClient, client), level, clock=clock, timer=timer)
    run = await asyncio.wait_for(runner.run(plan, started_at), 5)
    session_due = [started_at, started_at + 0.01, started_at + 0.02]
    # Every session's start, and the later stage (due 5 ms after the call before it
    # ended, here the instant it was sent), went through the timer.
    stage_due = session_due[1] + late_s + 0.005
    assert sorted(timer.deadlines) == pytest.approx(sorted([*session_due, stage_due]))
    assert run.lags_s == pytest.approx([late_s] * 4)
    assert runner.timer is timer  # an injected timer is the caller's: kept, not closed


@pytest.mark.parametrize(
    ("env_value", "expected"),
    [
        (None, "precise"),
        ("", "precise"),
        ("precise", "precise"),
        ("thread", "thread"),
        ("loop", "loop"),
    ],
    ids=["unset", "empty", "precise", "thread", "loop"],
)
def test_timer_kind_comes_from_the_environment(
    env_value: str | None, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if env_value is None:
        monkeypatch.delenv(TIMER_ENV, raising=False)
    else:
        monkeypatch.setenv(TIMER_ENV, env_value)
    assert timer_kind_from_env() == expected


def test_an_unknown_timer_kind_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TIMER_ENV, "spin")
    with pytest.raises(ValueError, match=TIMER_ENV):
        timer_kind_from_env()


@pytest.mark.parametrize(
    ("kind", "is_alarm_taken", "timer_type"),
    [
        pytest.param("precise", False, AlarmTimer, marks=FREE_ALARM, id="precise-alarm"),
        pytest.param("precise", True, PreciseTimer, marks=FREE_ALARM, id="precise-alarm-taken"),
        pytest.param("thread", False, PreciseTimer, marks=FREE_ALARM, id="thread"),
        pytest.param("loop", False, LoopTimer, id="loop"),
    ],
)
async def test_runner_makes_its_own_timer_for_the_run(
    kind: str, is_alarm_taken: bool, timer_type: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    if is_alarm_taken:
        monkeypatch.setattr(AlarmTimer, "is_available", staticmethod(lambda: False))
    seen: list[Any] = []
    switch_intervals_s: list[float] = []
    client = FakeClient(now_s)
    runner = PointRunner(cast(StreamingClient, client), LoadLevel(), timer_kind=kind)

    def on_call() -> None:
        seen.append(runner.timer)
        switch_intervals_s.append(sys.getswitchinterval())

    client.on_call = on_call
    before_s = sys.getswitchinterval()
    plan = [session(i, 0.002 * i, 0.0) for i in range(5)]
    run = await asyncio.wait_for(runner.run(plan, now_s() + 0.003), 5)
    assert len(seen) == 5 and all(isinstance(t, timer_type) for t in seen)
    assert runner.timer is None  # made for the run, closed after it
    # A timer thread gets the GIL quickly during the run; restored after it.
    expected_s = (
        min(before_s, runner_module.TIMER_SWITCH_INTERVAL_S)
        if timer_type is PreciseTimer
        else before_s
    )
    assert switch_intervals_s == pytest.approx([expected_s] * 5)
    assert sys.getswitchinterval() == before_s
    if timer_type is not LoopTimer:
        # A precise timer never wakes a send before its due time.
        assert all(lag >= 0 for lag in run.lags_s)
        assert 0.0 <= seen[0].wake_bias_s <= runner_module.TIMER_MAX_WAKE_BIAS_S
    if timer_type is PreciseTimer:
        assert not seen[0]._thread.is_alive()
    if timer_type is AlarmTimer:
        assert AlarmTimer.is_available()  # given back
    assert len(run.lags_s) == 5


def test_runner_default_timer_is_precise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TIMER_ENV, raising=False)
    runner = PointRunner(cast(StreamingClient, FakeClient(now_s)), LoadLevel())
    assert runner.timer_kind == "precise"
    assert runner_module.TIMER_BATCH_WINDOW_S > 0


async def test_overlapping_runs_restore_the_switch_interval_after_the_last() -> None:
    before_s = sys.getswitchinterval()
    during_s: list[float] = []
    client_a, client_b = FakeClient(now_s), FakeClient(now_s)
    a = PointRunner(cast(StreamingClient, client_a), LoadLevel(), timer_kind="precise")
    b = PointRunner(cast(StreamingClient, client_b), LoadLevel(), timer_kind="precise")
    client_b.on_call = lambda: during_s.append(sys.getswitchinterval())
    start = now_s()
    # b's one call comes after a has ended (a: 0-10 ms, b: 5-40 ms).
    plan_a = [session(i, 0.005 * i, 0.0) for i in range(3)]
    plan_b = [session(9, 0.035, 0.0)]
    await asyncio.wait_for(asyncio.gather(a.run(plan_a, start), b.run(plan_b, start + 0.005)), 5)
    assert during_s == pytest.approx([min(before_s, runner_module.TIMER_SWITCH_INTERVAL_S)])
    assert sys.getswitchinterval() == before_s
