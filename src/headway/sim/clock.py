"""Sub-millisecond wake-ups for the simulator's engine loops.

Event-loop timers are coarse: uvloop keeps time in whole milliseconds and epoll takes
millisecond timeouts, so a step scheduled to end at t is seen at t + 0..1.3 ms, a large
share of a short step (at time-scale 0.25 a decode step is ~15 ms). `PreciseTimer`
sleeps in one helper thread on a condition variable with a high-resolution timeout and
wakes the event loop through `call_soon_threadsafe`, so an engine loop resumes within
about a tenth of a millisecond of its deadline without spinning.

All times here are `time.perf_counter()` seconds.
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import heapq
import itertools
import threading
import time
from typing import Any

now = time.perf_counter


class PreciseTimer:
    """One thread serving `sleep_until` for every coroutine on one event loop.

    It also knows when the next wake-up is due, so deferrable work can wait for a gap
    (`wait_for_gap`) instead of holding up a replica whose step is ending.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # (fire at, seq, future, is_deadline): is_deadline is False for gap waits.
        self._heap: list[tuple[float, int, asyncio.Future[None], bool]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        # Deadline sleepers woken whose coroutine has not resumed yet.
        self._fired: set[asyncio.Future[None]] = set()
        self.wake_bias_s = 0.0
        self._thread = threading.Thread(target=self._run, name="headway-sim-timer", daemon=True)
        self._thread.start()

    async def sleep_until(self, deadline: float, is_deadline: bool = True) -> None:
        """Return at `deadline` (perf_counter seconds), or at once if it has passed.

        The thread fires `wake_bias_s` early: about the hand-off delay of earlier
        wake-ups seen on an idle loop (thread hand-off, loop wake-up), so that the
        coroutine resumes on time; a resumption still early yields until the deadline.
        `is_deadline=False` marks a sleep that others need not make room for.
        """
        if deadline <= now():
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        with self._cond:
            heapq.heappush(
                self._heap, (deadline - self.wake_bias_s, next(self._seq), fut, is_deadline)
            )
            self._cond.notify()
        try:
            await fut
        finally:
            if is_deadline:
                with self._cond:
                    self._fired.discard(fut)
        error = now() - deadline
        # Learn the hand-off delay, not how busy the loop was: follow early or quick
        # wake-ups closely and late ones slowly; clamp so nothing can make it absurd.
        gain = 0.3 if error < self.wake_bias_s else 0.02
        self.wake_bias_s = min(max(self.wake_bias_s + gain * error, 0.0), 0.0005)
        while now() < deadline:
            await asyncio.sleep(0)

    def next_deadline(self) -> float | None:
        """When the earliest pending deadline sleeper will be woken, if any."""
        # No lock: copying the list is atomic under the GIL, and taking the lock here
        # would make the loop wait whenever the timer thread waits for the GIL.
        fire_at = [t for t, _, _, is_deadline in list(self._heap) if is_deadline]
        return min(fire_at) if fire_at else None

    async def wait_for_gap(self, width_s: float, max_wait_s: float) -> None:
        """Wait until no deadline sleeper is due within `width_s` (and those already
        woken have run), or `max_wait_s` has passed: for work that can be put off but,
        once started, would hold up a wake-up behind it."""
        give_up = now() + max_wait_s
        while (t := now()) < give_up:
            if self._fired:
                await asyncio.sleep(0)
                continue
            due = self.next_deadline()
            if due is None or due > t + width_s:
                return
            await self.sleep_until(min(due + self.wake_bias_s + 1e-5, give_up), False)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=1.0)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    remaining = self._heap[0][0] - now()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._closed:
                    return
                _, _, fut, is_deadline = heapq.heappop(self._heap)
                if is_deadline:
                    self._fired.add(fut)
            try:
                self._loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:  # the loop is closed: nothing left to wake
                return


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class LagHistogram:
    """Counts of emission lags (seconds from the scheduled instant) in fixed buckets.

    Early is as wrong as late: buckets count the lag's size, log-spaced (four per
    doubling) from 10 µs up (bucket 0: exactly on time), and early ones are also
    counted in `num_early`. Recording is a bisect and an increment, so
    it can run once per streamed token; readers diff two snapshots to get a window.
    """

    EDGES_S: tuple[float, ...] = (0.0, *(1e-5 * 2 ** (i / 4) for i in range(80)))

    def __init__(self) -> None:
        self.counts = [0] * (len(self.EDGES_S) + 1)
        self.num_early = 0
        self.max_s = 0.0

    def record(self, lag_s: float) -> None:
        """Count `lag_s` by its size; early (negative) lags are counted apart too."""
        size = abs(lag_s)
        self.counts[bisect.bisect_left(self.EDGES_S, size)] += 1
        if lag_s < 0:
            self.num_early += 1
        if size > self.max_s:
            self.max_s = size

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state: bucket upper edges (seconds; the last bucket is open) and counts."""
        return {
            "le_s": list(self.EDGES_S),
            "counts": list(self.counts),
            "num_early": self.num_early,
            "max_s": self.max_s,
        }


class GcPacer:
    """Runs the cyclic GC's collections where the engine loops choose: in a gap between
    steps' ends, instead of wherever an allocation crosses the threshold (often in
    the middle of a step's writes, holding up the rest of them).

    Active only while automatic collection is off (`gc.disable()`, done by `headway
    sim`); it then applies the interpreter's own thresholds. Otherwise `due` is None.
    """

    def __init__(self) -> None:
        # Recent duration of a collection of each generation, seconds.
        self.duration_s = [2e-4, 1.5e-3, 0.02]

    def due(self) -> int | None:
        """The generation a collection is due for now, if any."""
        if gc.isenabled():
            return None
        count, threshold = gc.get_count(), gc.get_threshold()
        if count[0] < threshold[0]:
            return None
        if count[1] < threshold[1]:
            return 0
        return 2 if count[2] >= threshold[2] else 1

    def collect(self, generation: int) -> None:
        started = now()
        gc.collect(generation)
        took = now() - started
        self.duration_s[generation] += 0.2 * (took - self.duration_s[generation])


GC_PACER = GcPacer()
