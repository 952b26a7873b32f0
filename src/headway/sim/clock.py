"""Time keeping for the simulator's engine loops.

`PreciseTimer` (sub-millisecond wake-ups from a helper thread) and `AlarmTimer` (the
same from SIGALRM, no thread; see
docs/decisions/0001-simulator-clock.md) lives in `headway.precise_timer`, shared with the
benchmark client, and is re-exported here; this module adds the lag histogram, the GC
pacer and the write-slot board the engine loops use.

All times here are `time.perf_counter()` seconds.
"""

from __future__ import annotations

import bisect
import gc
from collections.abc import Callable
from typing import Any

from headway.precise_timer import AlarmTimer, PreciseTimer, now

__all__ = [
    "GC_PACER",
    "AlarmTimer",
    "EmitSlots",
    "GcPacer",
    "LagHistogram",
    "PreciseTimer",
    "SimTimer",
    "now",
]

# The engine loops' timer: either serves sleeps, gap waits and `next_deadline`.
SimTimer = PreciseTimer | AlarmTimer


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

    def record_all(self, times: list[float], scheduled_at: float) -> None:
        """`record(t - scheduled_at)` for each of `times` (a step's writes, per token)."""
        counts, edges, find = self.counts, self.EDGES_S, bisect.bisect_left
        max_s = self.max_s
        for t in times:
            lag_s = t - scheduled_at
            size = -lag_s if lag_s < 0 else lag_s
            counts[find(edges, size)] += 1
            if lag_s < 0:
                self.num_early += 1
            if size > max_s:
                max_s = size
        self.max_s = max_s

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
        self.last_collected_at = now()  # when the last collection here ended

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
        self.last_collected_at = ended = now()
        took = ended - started
        self.duration_s[generation] += 0.2 * (took - self.duration_s[generation])


GC_PACER = GcPacer()


class EmitSlots:
    """Where each replica's writes for a step go, when several steps end close together.

    A replica's writes for a step take about `span_s` (one loop, one stream after the
    other); alone they are centered on the step's end, starting `span_s / 2` before it.
    Steps of replicas on one loop that end closer than that would otherwise queue: the
    later one's writes all trail the earlier one's, late by up to one and a half spans.
    Instead, spans that would overlap are laid end to end in the order of their steps'
    ends, the run centered on the span-weighted mean of those ends (pool-adjacent
    merging: each merged run is the least-squares placement of its members). The worst
    distance of a write from its own step's end (early counts as lag too) is then about
    one span instead of one and a half.

    Invariants: a booked key has one slot until released; `start_of` depends only on the
    booked slots, not on the order they were booked in.
    """

    def __init__(self) -> None:
        self._slots: dict[int, tuple[float, float]] = {}  # key -> (step end, span)
        # key -> (its slot's start, the call that makes its writes): see `arm`.
        self._armed: dict[int, tuple[float, Callable[[], object]]] = {}

    def book(self, key: int, end_at: float, span_s: float) -> None:
        """Book (or move) `key`'s writes for a step ending at `end_at`."""
        self._slots[key] = (end_at, max(span_s, 0.0))

    def release(self, key: int) -> None:
        """`key`'s writes are done (or will not happen)."""
        self._slots.pop(key, None)
        self._armed.pop(key, None)

    def arm(self, key: int, start_at: float, write: Callable[[], object]) -> None:
        """`key` sleeps until its slot's start, `start_at`: from then on, whichever
        replica's writes end first may make `key`'s too (`write_due`), straight after
        its own, instead of leaving them to `key`'s own wake-up (the hop from one
        replica's last write to the next one's first took 50-80 us, p99 150-670 us,
        for the 11-17% of steps already due by then: colliding steps, the lag's tail)."""
        self._armed[key] = (start_at, write)

    def disarm(self, key: int) -> bool:
        """`key` woke up: True if its writes are still its own to make, False if
        `write_due` made them."""
        return self._armed.pop(key, None) is not None

    def write_due(self, clock: Callable[[], float]) -> None:
        """Make the armed writes whose slot has started by now (`clock()`), in order of
        their starts, looking again after each (writes take a while); never one early."""
        armed = self._armed
        while armed:
            key = min(armed, key=lambda k: armed[k][0])
            start_at, write = armed[key]
            if start_at > clock():
                return
            del armed[key]
            write()

    def start_of(self, key: int) -> float:
        """When `key`'s writes should start, given every slot booked now."""
        # Runs of merged slots, in order of their ends: [start, span, [(key, span)...]].
        runs: list[tuple[float, float, list[tuple[int, float]]]] = []
        for k, (end_at, span_s) in sorted(self._slots.items(), key=lambda kv: (kv[1], kv[0])):
            start, span, members = end_at - span_s / 2, span_s, [(k, span_s)]
            while runs and runs[-1][0] + runs[-1][1] > start:
                prev_start, prev_span, prev_members = runs.pop()
                center = ((prev_start + prev_span / 2) * prev_span + (start + span / 2) * span) / (
                    prev_span + span
                )  # > 0: spans of 0 never overlap
                span += prev_span
                start, members = center - span / 2, prev_members + members
            runs.append((start, span, members))
        for start, _, members in runs:
            for k, span_s in members:
                if k == key:
                    return start
                start += span_s
        raise KeyError(key)
