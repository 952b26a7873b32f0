"""One simulated engine replica: a `core.engine.Engine` driven on the real clock.

The engine loop runs a step, renders what the step produced for every streamed request
(text, stop strings, JSON: `EmissionSink.prepare`), sleeps until the step's modeled end
(duration divided by the time-scale, multiplied by any injected slow-down) and then
only writes the rendered bytes (`EmissionSink.emit`), so tokens leave when the step that
produced them ends and the work left at that instant is one socket write per stream.
Bookkeeping (metrics, non-streamed requests, KV events) follows the writes. Requests
that arrive during a step join the next one, as on a real engine.

All replicas of a process share one event loop, so one replica's work delays
another's writes. These rules keep that small:
* computing and rendering a step (deferrable: its end is scheduled from the previous
  step's end, not from when it was computed) waits, up to half the step (10 ms at
  most), for a gap in which no other replica's step ends (`PreciseTimer.wait_for_gap`)
  as wide as the work will take (an admission costs about as much again as a decode
  step: the gap asked for counts the requests the step will admit); hashing the
  prompts of requests that arrived (`Engine.prepare_request`) goes first, in a gap of
  its own; work that gave up waiting still lets a wake-up already due go first;
* a step's writes start early by half their usual duration, so they straddle the
  step's end instead of all trailing it (early counts as lag too); replicas whose
  steps end closer than that share the time around the ends (`clock.EmitSlots`);
* garbage collections run in such gaps too (`clock.GcPacer`), not amid writes.

Each step's end is scheduled from the previous step's scheduled end, not from when
the loop woke up, so short CPU stalls are caught up and the modeled throughput holds;
if the loop falls more than `max_lag_s` behind it resynchronises to now (and the lag
shows in the emission timestamps). How far from its step's end each write left is
counted in `emission_lag` (read by `GET /debug/timing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from headway.core.engine import Engine, PreparedRequest, RequestError, StepResult, TokenOutput
from headway.core.kv_events import EventBatch
from headway.core.sequence import EngineRequest, FinishReason
from headway.sim import clock, trace
from headway.sim.clock import EmitSlots, LagHistogram, SimTimer
from headway.sim.faults import FaultConfig, FaultInjector
from headway.sim.kv_publisher import KvEventPublisher


@dataclass(slots=True)
class Emission:
    """Tokens for one request from one step, and when they were due (wall clock)."""

    output: TokenOutput
    scheduled_at: float


class EmissionSink(Protocol):
    """Where a streamed request's emissions go, in two phases per step."""

    def prepare(self, output: TokenOutput, scheduled_at: float) -> None:
        """Render `output`, due at `scheduled_at` (wall clock), before the step's end;
        may finish the request early."""

    def emit(self) -> None:
        """Write what `prepare` rendered, now (the step's end); never blocks."""

    def settle(self, now: float) -> None:
        """Bookkeeping once every stream of the step has been written."""


@dataclass
class RequestHandle:
    """The HTTP side's view of one in-flight request.

    A streamed request has a `sink` the engine loop renders into and writes from.
    Otherwise emissions wait in an unbounded deque (bounded in practice by the
    request's max_tokens) with a single waiter future: lighter than an asyncio.Queue.
    """

    request_id: str
    arrived_at: float
    scheduled_at: float | None = None  # when the engine first ran it
    first_token_at: float | None = None
    last_token_at: float | None = None
    sink: EmissionSink | None = None
    _pending: deque[Emission] = field(default_factory=deque)
    _waiter: asyncio.Future[None] | None = None

    def push(self, emission: Emission) -> None:
        self._pending.append(emission)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self) -> Emission:
        """The next emission, waiting for the step that produces it."""
        while not self._pending:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._pending.popleft()


# The most a step's computation waits for a gap: a share of the step (what is left
# must hold the computation itself and the loop's other work before the step's end)
# and an absolute cap. It is scheduled from the previous step's end whatever the wait,
# so waiting costs nothing but the margin; a gap missed costs another replica's wake-up.
DEFER_FRACTION = 0.5
MAX_DEFER_S = 0.010
# A step's bookkeeping after its writes (metrics, non-streamed requests, KV events):
# about 0.1 ms for 32 streams; it waits at most 1 ms for a gap.
SETTLE_WORK_S = 0.00015
SETTLE_MAX_DEFER_S = 0.001


class Replica:
    """An engine plus its clock, its request handles and its KV-event publisher."""

    def __init__(
        self,
        index: int,
        engine: Engine,
        time_scale: float,
        faults: FaultInjector,
        timer: SimTimer,
        publisher: KvEventPublisher | None = None,
        max_lag_s: float = 1.0,
        on_step: Callable[[StepResult], None] | None = None,
        slots: EmitSlots | None = None,
    ) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale: must be > 0, got {time_scale}")
        self.index = index
        self.engine = engine
        self.time_scale = time_scale
        self.faults = faults
        self.publisher = publisher
        self.max_lag_s = max_lag_s
        self._on_step = on_step
        # Observers the HTTP layer plugs in for vLLM's request-phase histograms.
        self.on_queue_time: Callable[[float], None] | None = None
        self._handles: dict[str, RequestHandle] = {}
        # Arrived, not yet in the engine: request id -> (request, arrival time).
        self._pending: dict[str, tuple[EngineRequest, float]] = {}
        # Pending requests whose hashing is done (`Engine.prepare_request`).
        self._prepared: dict[str, PreparedRequest] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._timer = timer
        # Shared by the replicas on this loop (each its own if not given).
        self._slots = slots if slots is not None else EmitSlots()
        # Offset that turns clock.now() into wall-clock time for emission stamps.
        self._wall_offset = time.time() - clock.now()
        self.model_time_s = 0.0
        self.max_observed_lag_s = 0.0
        # How late the loop resumed for each step's writes (their slot's start), and
        # how far from its step's end each stream's write left.
        self.wake_lag = LagHistogram()
        self.emission_lag = LagHistogram()
        self._work_avg_s = 0.0  # how long computing and rendering a step takes
        self._work_s = 0.0  # the gap that work asks for
        # What each request admitted adds to it, and what preparing one takes.
        self._admit_avg_s = 0.0
        self._prepare_avg_s = 0.0
        self._max_defer_s = 0.0  # how long the next step may be put off
        self._emit_avg_s = 0.0  # how long writing a step's chunks takes
        # The last step's writes: when each finished, and how late they began.
        self._written: tuple[list[float], float] = ([], 0.0)

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        self._task = self._loop.create_task(self._run(), name=f"replica-{self.index}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._slots.release(self.index)
        if self.publisher is not None:
            await self.publisher.close()
            self.publisher = None

    @property
    def fault_config(self) -> FaultConfig:
        return self.faults.config

    # -- requests ---------------------------------------------------------------
    @property
    def num_in_flight(self) -> int:
        return len(self._handles)

    def submit(self, request: EngineRequest) -> RequestHandle:
        """Accept a request for the next step that starts after it arrived; raises
        core.engine.RequestError if the engine could never serve it.

        Causality: a step's start is scheduled at the previous step's end, but it is
        computed a little later (after that step's writes, in a gap between other
        replicas' step ends). A request that arrives in between must not join it (a
        real engine's batch does not take requests that arrive after it started):
        it waits in `_pending` for the next step."""
        rid = request.request_id
        if rid in self._pending:
            raise RequestError(f"request_id: {rid!r} is already in the engine")
        self.engine.check_request(request)
        handle = RequestHandle(rid, clock.now())
        self._pending[rid] = (request, handle.arrived_at)
        self._handles[rid] = handle
        self._wake.set()
        return handle

    def _admit_pending(self, step_start: float) -> None:
        """Hand the engine every pending request that arrived by `step_start`."""
        admitted = [rid for rid, (_, at) in self._pending.items() if at <= step_start]
        for rid in admitted:  # in arrival order (dicts keep insertion order)
            request, _ = self._pending.pop(rid)
            self.engine.add_request(request, self._prepared.pop(rid, None))

    def _prepare_pending(self) -> None:
        """Hash the prompts of pending requests not yet prepared (what `add_request`
        would do inside the step that admits them)."""
        started_at = clock.now()
        num = 0
        for rid, (request, _) in self._pending.items():
            if rid not in self._prepared:
                self._prepared[rid] = self.engine.prepare_request(request)
                num += 1
        if num:
            each_s = (clock.now() - started_at) / num
            self._prepare_avg_s += 0.2 * (each_s - self._prepare_avg_s)

    def abort(self, request_id: str) -> int:
        """Drop a request now (client gone); returns KV blocks freed."""
        self._handles.pop(request_id, None)
        self._prepared.pop(request_id, None)
        if self._pending.pop(request_id, None) is not None:
            self.engine.counters.num_aborted += 1  # counted like the engine's own aborts
            return 0
        return self.engine.abort_request(request_id).num_freed_blocks

    def finish(self, request_id: str, reason: FinishReason) -> None:
        """End a request for a reason found outside the engine (a stop string)."""
        self._handles.pop(request_id, None)
        self._prepared.pop(request_id, None)
        if self._pending.pop(request_id, None) is None:
            self.engine.finish_request(request_id, reason)

    def release(self, request_id: str) -> None:
        self._handles.pop(request_id, None)

    @property
    def max_defer_s(self) -> float:
        """How long the next step's computation may wait for a gap (0 before the
        first step): well under a step."""
        return self._max_defer_s

    async def wait_for_gap(self, width_s: float, max_wait_s: float) -> None:
        """Put off request-side work that no token waits for until no replica's step
        ends within `width_s` (at most `max_wait_s`): see `PreciseTimer.wait_for_gap`."""
        await self._timer.wait_for_gap(width_s, max_wait_s)

    def publish_pending_events(self) -> None:
        """Publish events made outside a step (prefix-cache reset)."""
        events = self.engine.drain_events()
        if events and self.publisher is not None:
            self.publisher.publish(EventBatch(time.time(), tuple(events), 0))

    def wall_time(self, t: float) -> float:
        """Wall-clock time of `t` (a `clock.now()` reading)."""
        return t + self._wall_offset

    # -- the loop ---------------------------------------------------------------
    async def _run(self) -> None:
        next_start = clock.now()
        while True:
            if not self.engine.has_work:
                if not self._pending:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                # Idle until a request came: the next step starts at its arrival (the
                # loop's wake-up delay is not queueing).
                next_start = max(next_start, min(at for _, at in self._pending.values()))
            # Computing and rendering the next step can wait a little; a replica whose
            # step ends meanwhile cannot. Put it off while another step's end is near.
            # So can a due garbage collection. Hashing the prompts of the requests it
            # admits (the larger part of an admission) goes first, in a gap of its own.
            give_up_at = clock.now() + self._max_defer_s
            num_new = len(self._pending) - len(self._prepared)
            if num_new > 0:
                await self._timer.wait_for_gap(
                    1.5 * num_new * self._prepare_avg_s + 5e-5, self._max_defer_s
                )
                if trace.ON:
                    trace.ev("p0", self.index, num_new)
                self._prepare_pending()
                if trace.ON:
                    trace.ev("p1", self.index)
            gc_generation = clock.GC_PACER.due()
            gc_s = 0.0 if gc_generation is None else clock.GC_PACER.duration_s[gc_generation]
            num_admits = sum(1 for _, at in self._pending.values() if at <= next_start)
            await self._timer.wait_for_gap(
                self._work_s + 1.5 * num_admits * self._admit_avg_s + gc_s,
                max(0.0, give_up_at - clock.now()),
            )
            if gc_generation is not None and clock.GC_PACER.due() is not None:
                if trace.ON:
                    trace.ev("g0", self.index, gc_generation)
                clock.GC_PACER.collect(gc_generation)
                if trace.ON:
                    trace.ev("g1", self.index, gc_generation)
            if trace.ON:
                trace.ev("c0", self.index)
            started_at = clock.now()
            self._admit_pending(next_start)
            if trace.ON:
                trace.ev("ca", self.index)
            result = self.engine.step()
            if trace.ON:
                trace.ev("cs", self.index)
            self._note_admitted(result, next_start)
            self.model_time_s += result.duration_s
            real_s = result.duration_s / self.time_scale * self.faults.config.slowdown
            due = next_start + real_s
            ready = self._prepare(result, due)
            if trace.ON:
                trace.ev("c1", self.index, len(result.outputs), len(result.admitted_ids))
            # The gap asked for next time: this work's recent average with a margin,
            # and what each admission adds to it.
            took_s = clock.now() - started_at
            if result.admitted_ids:
                each_s = max(0.0, took_s - self._work_avg_s) / len(result.admitted_ids)
                self._admit_avg_s += 0.2 * (each_s - self._admit_avg_s)
            else:
                self._work_avg_s += 0.2 * (took_s - self._work_avg_s)
            self._work_s = 1.5 * self._work_avg_s + 5e-5
            self._max_defer_s = min(DEFER_FRACTION * real_s, MAX_DEFER_S)
            # A computation that ran past another replica's slot start makes its writes
            # now, before its wake-up's hop (never before the start).
            self._slots.write_due(clock.now)
            # The writes take a while: start them early by half that, so that they
            # straddle the step's end instead of all trailing it; if other replicas'
            # steps end close by, share the time around the ends with them
            # (`EmitSlots`). Wake up early enough for a slot moved earlier, then wait
            # for the slot as booked by then.
            span_s = self._emit_avg_s
            self._slots.book(self.index, due, span_s)
            await self._timer.sleep_until(due - 1.5 * span_s - 5e-5)
            start = self._slots.start_of(self.index)
            # From its start on, another replica whose writes end first makes these
            # writes straight after its own (`EmitSlots.arm`); else this wake-up does.
            self._slots.arm(self.index, start, partial(self._write_step, ready, start, due, real_s))
            await self._timer.sleep_until(start)
            if self._slots.disarm(self.index):
                self._write_step(ready, start, due, real_s)
            written_at, lag = self._written
            # Another replica's writes that came due meanwhile go before anything else.
            self._slots.write_due(clock.now)
            next_start = due + lag if lag > self.max_lag_s else due
            # Other replicas' writes before this one's bookkeeping and next step: the
            # bookkeeping waits while another step's end is near or its writes are due.
            await self._timer.wait_for_gap(SETTLE_WORK_S, SETTLE_MAX_DEFER_S)
            if trace.ON:
                trace.ev("s0", self.index)
            self._settle(ready, written_at, result, due)
            if trace.ON:
                trace.ev("s1", self.index)
            self._slots.write_due(clock.now)

    def _write_step(
        self,
        ready: list[tuple[RequestHandle, TokenOutput]],
        start: float,
        due: float,
        real_s: float,
    ) -> None:
        """A step's writes, at or after its slot's `start` (from this replica's loop or
        from another's `EmitSlots.write_due`): records how late they began, and leaves
        when each write finished and that lag in `_written`."""
        now = clock.now()
        if trace.ON:
            trace.ev("w0", self.index, start, due)
        lag = now - start
        self.wake_lag.record(lag)
        self.max_observed_lag_s = max(self.max_observed_lag_s, lag)
        written_at = self._emit(ready)
        if trace.ON:
            trace.ev("w1", self.index, len(written_at), real_s)
        self._slots.release(self.index)
        if written_at:
            self._emit_avg_s += 0.2 * (written_at[-1] - now - self._emit_avg_s)
        self._written = (written_at, lag)

    def _note_admitted(self, result: StepResult, started_at: float) -> None:
        for rid in result.admitted_ids:
            handle = self._handles.get(rid)
            if handle is not None and handle.scheduled_at is None:
                # A request may arrive after the step's scheduled start while the step
                # waits for a gap, and still join it: it did not queue.
                handle.scheduled_at = max(started_at, handle.arrived_at)
                if self.on_queue_time is not None:
                    self.on_queue_time(handle.scheduled_at - handle.arrived_at)

    def _prepare(self, result: StepResult, due: float) -> list[tuple[RequestHandle, TokenOutput]]:
        """Render the step's streamed chunks ahead of its end; returns who gets what."""
        scheduled_at = self.wall_time(due)
        ready = []
        handles = self._handles
        for out in result.outputs:  # per token: kept lean
            handle = handles.get(out.request_id)
            if handle is None:
                continue
            sink = handle.sink
            if sink is not None:
                sink.prepare(out, scheduled_at)
            ready.append((handle, out))
            if out.finish_reason is not None:
                # The engine freed it; the HTTP side drains its emissions and finishes.
                handles.pop(out.request_id, None)
        return ready

    def _emit(self, ready: list[tuple[RequestHandle, TokenOutput]]) -> list[float]:
        """At the step's end: write every stream; returns when each write finished."""
        written_at: list[float] = []
        stamp, now = written_at.append, clock.now
        for handle, _ in ready:
            sink = handle.sink
            if sink is not None:
                sink.emit()
                stamp(now())
        return written_at

    def _settle(
        self,
        ready: list[tuple[RequestHandle, TokenOutput]],
        written_at: list[float],
        result: StepResult,
        due: float,
    ) -> None:
        """The step's bookkeeping, after its writes: lags, metrics, non-streamed
        requests, KV events."""
        self.emission_lag.record_all(written_at, due)
        now = written_at[-1] if written_at else clock.now()
        scheduled_at = self.wall_time(due)
        for handle, out in ready:
            sink = handle.sink
            if sink is not None:
                sink.settle(now)
            else:
                handle.push(Emission(out, scheduled_at))
        if result.events and self.publisher is not None:
            self.publisher.publish(EventBatch(self.wall_time(due), result.events, 0))
        if self._on_step is not None:
            self._on_step(result)
