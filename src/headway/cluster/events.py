"""The one total order of simulation events: (time, priority, sequence number).

Everything that happens in a cluster simulation is an event in one `EventQueue`.
Events at the same virtual time run in `EventKind` order (lower first), then by their
tie-break key, then in the order they were scheduled. So a step that ends at t
delivers its tokens before a scrape at t reads the engine, and a scrape at t is seen
by a request routed at t: what a live gateway would see if the three happened in that
order within one instant. Step ends carry their replica's index as the key, so steps
of several replicas that end at the same instant run in replica order whenever they
were scheduled (a decode jump schedules its end several steps ahead; single steps
schedule theirs one step ahead: the order must not depend on it). Nothing else breaks
ties, so a run is a pure function of its inputs.

Invariants: `pop` never returns an event earlier than one it returned before (time
never goes backwards); sequence numbers are unique.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Any


class EventKind(IntEnum):
    """Event types; the value is the priority among events at the same time."""

    STEP_END = 0  # an engine step finishes: its tokens reach the clients
    KV_EVENTS = 1  # a step's KV events reach the gateway's index (after a delay)
    SCRAPE = 2  # the gateway reads every engine's metrics
    STAGE = 3  # a session stage is due: its calls are sent
    DISPATCH = 4  # a sent call is through the front end: it is routed to an engine
    KV_TRANSFER = 5  # a prefilled prompt's KV reached its decode engine (P/D pools)
    ADMISSION_TIMEOUT = 6  # a call queued for a slot has waited max_wait_s: rejected
    ARRIVAL = 7  # a session arrives


@dataclass(frozen=True)
class Event:
    time_s: float
    kind: EventKind
    seq: int
    payload: Any


class EventQueue:
    """A priority queue of events in the total order described above."""

    __slots__ = ("_heap", "_next_seq", "now_s")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, int, Any]] = []
        self._next_seq = 0
        self.now_s = 0.0  # time of the last popped event

    def push(self, time_s: float, kind: EventKind, payload: Any = None, tiebreak: int = 0) -> None:
        """Schedule an event; `tiebreak` orders events of one kind at one instant
        before their scheduling order does (lower first)."""
        if not math.isfinite(time_s):
            raise ValueError(f"time_s: must be finite, got {time_s}")
        if time_s < self.now_s:
            raise ValueError(f"time_s: {time_s} is before the current time {self.now_s}")
        heapq.heappush(self._heap, (time_s, int(kind), tiebreak, self._next_seq, payload))
        self._next_seq += 1

    def pop(self) -> Event:
        time_s, kind, _, seq, payload = heapq.heappop(self._heap)
        self.now_s = time_s
        return Event(time_s, EventKind(kind), seq, payload)

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)
