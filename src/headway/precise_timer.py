"""Sub-millisecond wake-ups for asyncio code: the simulator's engine loops and the
benchmark client's send schedule.

Event-loop timers are coarse: uvloop keeps time in whole milliseconds and epoll takes
millisecond timeouts, so a coroutine that sleeps until t resumes at t + 0..1.3 ms, a
large share of a short decode step or of a benchmark's gap between arrivals.
`PreciseTimer` sleeps in one helper thread on a condition variable with a
high-resolution timeout and wakes the event loop through `call_soon_threadsafe`, so a
sleeper resumes within about a tenth of a millisecond of its deadline without spinning
(while the loop is mostly idle: the thread needs the GIL, which a busy loop holds).
`AlarmTimer` does the same with the process's ITIMER_REAL and SIGALRM, no thread: for
a loop on the main thread that may be busy (the benchmark client).

Invariants:

* `sleep_until(deadline)` never returns before `deadline` (by the timer's clock): the
  thread may hand a wake-up over early (by the learned `wake_bias_s`, or up to
  `batch_window_s` when it shares a hand-off with an earlier one); the coroutine then
  yields to the loop until the deadline.
* Sleepers are woken in deadline order; sleepers due within `batch_window_s` of one
  another share one hand-off (one thread wake-up and one loop wake-up for all).
* `wake_bias_s` learns only from wake-ups that were due on their own, never from ones
  batched early, and stays within [0, `max_wake_bias_s`] (default 0.5 ms).

All times are readings of the timer's clock (default `time.perf_counter()`, which is
CLOCK_MONOTONIC on Linux, like `time.monotonic()`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import signal
import threading
import time
from collections.abc import Callable

now = time.perf_counter

MAX_WAKE_BIAS_S = 0.0005
# How often a gap wait past its give-up looks again without a sleeper returning.
GAP_RECHECK_S = 0.001


def _learned_bias(bias_s: float, error_s: float, max_bias_s: float) -> float:
    """The next wake bias after a wake-up `error_s` late (negative: early). It learns
    the hand-off delay, not how busy the loop was: it follows early or quick wake-ups
    closely and late ones slowly, clamped to [0, max_bias_s] so nothing makes it absurd."""
    gain = 0.3 if error_s < bias_s else 0.02
    return min(max(bias_s + gain * error_s, 0.0), max_bias_s)


class _GapWaits:
    """What both timers share for deferrable work: the next deadline sleeper's fire time
    and `wait_for_gap`. A timer keeps `_heap` entries (fire at, seq, future, is
    deadline), `_fired` (deadline sleepers woken, not yet returned) and calls
    `_returned` when a deadline sleeper returns."""

    _heap: list[tuple[float, int, asyncio.Future[bool], bool]]
    _fired: set[asyncio.Future[bool]]
    _gap_waiters: list[asyncio.Future[None]]
    _loop: asyncio.AbstractEventLoop
    _clock: Callable[[], float]
    _max_wake_bias_s: float
    wake_bias_s: float

    def next_deadline(self) -> float | None:
        """When the earliest pending deadline sleeper will be woken, if any."""
        # No lock: copying the list is atomic under the GIL, and taking the lock here
        # would make the loop wait whenever the timer thread waits for the GIL.
        fire_at = [
            t for t, _, fut, is_deadline in list(self._heap) if is_deadline and not fut.done()
        ]
        return min(fire_at) if fire_at else None

    async def wait_for_gap(self, width_s: float, max_wait_s: float) -> None:
        """Wait until no deadline sleeper is due within `width_s` (and those already
        woken have returned from `sleep_until`): for work that can be put off but,
        once started, would hold up a wake-up behind it. After `max_wait_s` it stops
        asking for a gap but still lets the sleepers due by now (woken, or whose time
        has come) go first: work that gave up waiting never runs ahead of a wake-up
        that is already late.

        It looks again each time a deadline sleeper returns, so it costs no wake-up
        of its own; the give-up is timed by the event loop (millisecond resolution)."""
        loop = self._loop
        clock = self._clock
        give_up = clock() + max_wait_s
        while True:
            t = clock()
            if not self._fired:
                due = self.next_deadline()
                if due is None or due > t + (width_s if t < give_up else 0.0):
                    return
            waiter: asyncio.Future[None] = loop.create_future()
            self._gap_waiters.append(waiter)
            # Past the give-up, a sleeper due now returns within its own work; the
            # timeout only guards against one that never does (cancelled).
            timeout = loop.call_later(max(give_up - t, GAP_RECHECK_S), _set_none, waiter)
            try:
                await waiter
            finally:
                timeout.cancel()

    async def _resume(self, fut: asyncio.Future[bool], deadline: float, is_deadline: bool) -> None:
        """The end of `sleep_until`: wait for the hand-off of `fut`, learn the wake
        bias from a sleeper due alone, yield until `deadline`. Only then is a deadline
        sleeper off the books: while one woken early yields until its deadline,
        `wait_for_gap` must still see it as due."""
        clock = self._clock
        try:
            is_due_alone = await fut
            if is_due_alone:
                self.wake_bias_s = _learned_bias(
                    self.wake_bias_s, clock() - deadline, self._max_wake_bias_s
                )
            while clock() < deadline:
                await asyncio.sleep(0)
        finally:
            if is_deadline:
                self._forget_fired(fut)
                self._returned()

    def _forget_fired(self, fut: asyncio.Future[bool]) -> None:
        self._fired.discard(fut)

    def _returned(self) -> None:
        """A deadline sleeper returned: gap waiters look again."""
        waiters, self._gap_waiters = self._gap_waiters, []
        for waiter in waiters:
            _set_none(waiter)


class PreciseTimer(_GapWaits):
    """One thread serving `sleep_until` for every coroutine on one event loop.

    It also knows when the next wake-up is due, so deferrable work can wait for a gap
    (`wait_for_gap`) instead of holding up a sleeper whose deadline is near.
    `num_handoffs` and `num_wakeups` count hand-offs to the loop and sleepers woken
    (their ratio shows how much batching saved).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        clock: Callable[[], float] = now,
        batch_window_s: float = 0.0,
        max_wake_bias_s: float = MAX_WAKE_BIAS_S,
        name: str = "headway-precise-timer",
    ) -> None:
        if not batch_window_s >= 0.0:
            raise ValueError(f"batch_window_s must be >= 0, got {batch_window_s}")
        if not max_wake_bias_s >= 0.0:
            raise ValueError(f"max_wake_bias_s must be >= 0, got {max_wake_bias_s}")
        self._max_wake_bias_s = max_wake_bias_s
        self._loop = loop
        self._clock = clock
        self._batch_window_s = batch_window_s
        # (fire at, seq, future, is_deadline): is_deadline is False for gap waits.
        self._heap: list[tuple[float, int, asyncio.Future[bool], bool]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        # Deadline sleepers woken whose coroutine has not resumed yet.
        self._fired: set[asyncio.Future[bool]] = set()
        # `wait_for_gap` callers waiting for a deadline sleeper to return (loop only).
        self._gap_waiters: list[asyncio.Future[None]] = []
        self.wake_bias_s = 0.0
        self.num_handoffs = 0
        self.num_wakeups = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    async def sleep_until(self, deadline: float, is_deadline: bool = True) -> None:
        """Return at `deadline` (timer clock seconds), or at once if it has passed.

        The thread fires `wake_bias_s` early: about the hand-off delay of earlier
        wake-ups seen on an idle loop (thread hand-off, loop wake-up), so that the
        coroutine resumes on time; a resumption still early yields until the deadline.
        `is_deadline=False` marks a sleep that others need not make room for.
        """
        clock = self._clock
        if deadline <= clock():
            return
        fut: asyncio.Future[bool] = self._loop.create_future()
        with self._cond:
            heapq.heappush(
                self._heap, (deadline - self.wake_bias_s, next(self._seq), fut, is_deadline)
            )
            # The thread only needs waking when its next deadline moved earlier.
            if self._heap[0][2] is fut:
                self._cond.notify()
        await self._resume(fut, deadline, is_deadline)

    def _forget_fired(self, fut: asyncio.Future[bool]) -> None:
        with self._cond:  # the thread adds to `_fired`
            self._fired.discard(fut)

    def close(self) -> None:
        """Stop the thread; sleepers still waiting are never woken."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=1.0)

    def _run(self) -> None:
        clock = self._clock
        while True:
            with self._cond:
                while not self._closed:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    remaining = self._heap[0][0] - clock()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._closed:
                    return
                t = clock()
                horizon = t + self._batch_window_s
                woken: list[tuple[asyncio.Future[bool], bool]] = []
                while self._heap and self._heap[0][0] <= horizon:
                    fire_at, _, fut, is_deadline = heapq.heappop(self._heap)
                    if is_deadline:
                        self._fired.add(fut)
                    woken.append((fut, fire_at <= t))
                self.num_handoffs += 1
                self.num_wakeups += len(woken)
            try:
                self._loop.call_soon_threadsafe(_wake_all, woken)
            except RuntimeError:  # the loop is closed: nothing left to wake
                return


def _set_none(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _wake_all(woken: list[tuple[asyncio.Future[bool], bool]]) -> None:
    for fut, is_due_alone in woken:
        if not fut.done():
            fut.set_result(is_due_alone)


class AlarmTimer(_GapWaits):
    """`sleep_until` on the process's real-time interval timer, for a loop on the main
    thread: the kernel raises SIGALRM at the earliest deadline (microsecond resolution),
    the event loop learns of it through its signal wake-up fd, and wakes the sleepers
    itself. No helper thread, so no wait for the GIL: behind a busy event loop (one that
    releases the GIL for every poll) a helper thread can lose the GIL to the loop for
    milliseconds at a time.

    Same contract as `PreciseTimer.sleep_until` (never early, deadline order, wake-ups
    within `batch_window_s` share one alarm, a learned `wake_bias_s` up to
    `max_wake_bias_s`) and the same gap waits (`next_deadline`, `wait_for_gap`); each
    wake-up costs less CPU than the thread's hand-off (one signal instead of two thread
    wake-ups). It takes ITIMER_REAL and SIGALRM for its lifetime: use
    `is_available()` first (main thread, neither in use, e.g. by pytest-timeout); `close`
    gives both back.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        clock: Callable[[], float] = now,
        batch_window_s: float = 0.0,
        max_wake_bias_s: float = MAX_WAKE_BIAS_S,
    ) -> None:
        if not batch_window_s >= 0.0:
            raise ValueError(f"batch_window_s must be >= 0, got {batch_window_s}")
        if not max_wake_bias_s >= 0.0:
            raise ValueError(f"max_wake_bias_s must be >= 0, got {max_wake_bias_s}")
        if not self.is_available():
            raise RuntimeError("ITIMER_REAL or SIGALRM is in use, or not on the main thread")
        self._loop = loop
        self._clock = clock
        self._batch_window_s = batch_window_s
        self._max_wake_bias_s = max_wake_bias_s
        self._previous_handler = signal.getsignal(signal.SIGALRM)
        # (fire at, seq, future, is_deadline): main-thread only, so no lock.
        self._heap = []
        self._seq = itertools.count()
        self._fired = set()
        self._gap_waiters = []
        self._armed_for: float | None = None
        self.wake_bias_s = 0.0
        self.num_handoffs = 0
        self.num_wakeups = 0
        loop.add_signal_handler(signal.SIGALRM, self._on_alarm)

    @staticmethod
    def is_available() -> bool:
        """Whether this thread may take ITIMER_REAL and SIGALRM now."""
        return (
            hasattr(signal, "setitimer")  # POSIX only
            and threading.current_thread() is threading.main_thread()
            and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
            and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, signal.SIG_IGN)
        )

    async def sleep_until(self, deadline: float, is_deadline: bool = True) -> None:
        """Return at `deadline` (timer clock seconds), or at once if it has passed;
        `is_deadline=False` marks a sleep that others need not make room for."""
        clock = self._clock
        if deadline <= clock():
            return
        fut: asyncio.Future[bool] = self._loop.create_future()
        heapq.heappush(self._heap, (deadline - self.wake_bias_s, next(self._seq), fut, is_deadline))
        if self._heap[0][2] is fut:
            self._arm()
        await self._resume(fut, deadline, is_deadline)

    def close(self) -> None:
        """Disarm, and give ITIMER_REAL and SIGALRM back (sleepers left are never woken)."""
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        self._armed_for = None
        self._loop.remove_signal_handler(signal.SIGALRM)
        signal.signal(signal.SIGALRM, self._previous_handler)

    def _arm(self) -> None:
        """Point the alarm at the earliest deadline (or disarm it)."""
        if not self._heap:
            if self._armed_for is not None:
                signal.setitimer(signal.ITIMER_REAL, 0.0)
                self._armed_for = None
            return
        fire_at = self._heap[0][0]
        if fire_at == self._armed_for:
            return
        # A zero value would disarm: an overdue deadline rings in a microsecond.
        signal.setitimer(signal.ITIMER_REAL, max(fire_at - self._clock(), 1e-6))
        self._armed_for = fire_at

    def _on_alarm(self) -> None:
        self._armed_for = None
        t = self._clock()
        horizon = t + self._batch_window_s
        num_woken = 0
        while self._heap and self._heap[0][0] <= horizon:
            fire_at, _, fut, is_deadline = heapq.heappop(self._heap)
            num_woken += 1
            if not fut.done():
                if is_deadline:
                    self._fired.add(fut)
                fut.set_result(fire_at <= t)
        if num_woken:
            self.num_handoffs += 1
            self.num_wakeups += num_woken
        self._arm()
