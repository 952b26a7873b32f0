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
import heapq
import itertools
import threading
import time
from typing import Any

now = time.perf_counter


class PreciseTimer:
    """One thread serving `sleep_until` for every coroutine on one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self.wake_bias_s = 0.0
        self._thread = threading.Thread(target=self._run, name="headway-sim-timer", daemon=True)
        self._thread.start()

    async def sleep_until(self, deadline: float) -> None:
        """Return at `deadline` (perf_counter seconds), or at once if it has passed.

        The thread fires `wake_bias_s` early: the average of how late the loop saw
        earlier wake-ups (thread hand-off, loop wake-up), so that on average the
        coroutine resumes on time; a resumption still early yields until the deadline.
        """
        if deadline <= now():
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        with self._cond:
            heapq.heappush(self._heap, (deadline - self.wake_bias_s, next(self._seq), fut))
            self._cond.notify()
        await fut
        error = now() - deadline
        # Learn the hand-off delay; clamp so one long stall cannot make it absurd.
        self.wake_bias_s = min(max(self.wake_bias_s + 0.1 * error, 0.0), 0.001)
        while now() < deadline:
            await asyncio.sleep(0)

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
                _, _, fut = heapq.heappop(self._heap)
            try:
                self._loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:  # the loop is closed: nothing left to wake
                return


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class LagHistogram:
    """Counts of emission lags (seconds after the scheduled instant) in fixed buckets.

    Buckets are log-spaced (four per doubling) from 10 µs up; a lag at or below zero
    (on time, or early) counts in bucket 0. Recording is a bisect and an increment, so
    it can run once per streamed token; readers diff two snapshots to get a window.
    """

    EDGES_S: tuple[float, ...] = (0.0, *(1e-5 * 2 ** (i / 4) for i in range(80)))

    def __init__(self) -> None:
        self.counts = [0] * (len(self.EDGES_S) + 1)
        self.num_early = 0
        self.max_s = 0.0

    def record(self, lag_s: float) -> None:
        self.counts[bisect.bisect_left(self.EDGES_S, lag_s)] += 1
        if lag_s < 0:
            self.num_early += 1
        elif lag_s > self.max_s:
            self.max_s = lag_s

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state: bucket upper edges (seconds; the last bucket is open) and counts."""
        return {
            "le_s": list(self.EDGES_S),
            "counts": list(self.counts),
            "num_early": self.num_early,
            "max_s": self.max_s,
        }
