"""One simulated engine replica: a `core.engine.Engine` driven on the real clock.

The engine loop runs a step, sleeps for the step's modeled duration (divided by the
time-scale, multiplied by any injected slow-down) and then delivers the step's tokens
and KV events, so tokens stream when the step that produced them ends. Requests that
arrive during a step join the next one, as on a real engine.

Each step's end is scheduled from the previous step's scheduled end, not from when
the loop woke up, so short CPU stalls are caught up and the modeled throughput holds;
if the loop falls more than `max_lag_s` behind it resynchronises to now (and the lag
shows in the emission timestamps).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from headway.core.engine import Engine, StepResult, TokenOutput
from headway.core.kv_events import EventBatch
from headway.core.sequence import EngineRequest, FinishReason
from headway.sim import clock
from headway.sim.clock import PreciseTimer
from headway.sim.faults import FaultConfig, FaultInjector
from headway.sim.kv_publisher import KvEventPublisher


@dataclass
class Emission:
    """Tokens for one request from one step, and when they were due (wall clock)."""

    output: TokenOutput
    scheduled_at: float


@dataclass
class RequestHandle:
    """The HTTP side's view of one in-flight request.

    Emissions wait in an unbounded deque (bounded in practice by the request's
    max_tokens) with a single waiter future: lighter than an asyncio.Queue on the
    per-token path, which runs once per stream per step.
    """

    request_id: str
    arrived_at: float
    scheduled_at: float | None = None  # when the engine first ran it
    first_token_at: float | None = None
    last_token_at: float | None = None
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


class Replica:
    """An engine plus its clock, its request handles and its KV-event publisher."""

    def __init__(
        self,
        index: int,
        engine: Engine,
        time_scale: float,
        faults: FaultInjector,
        timer: PreciseTimer,
        publisher: KvEventPublisher | None = None,
        max_lag_s: float = 1.0,
        on_step: Callable[[StepResult], None] | None = None,
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
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._timer = timer
        # Offset that turns clock.now() into wall-clock time for emission stamps.
        self._wall_offset = time.time() - clock.now()
        self.model_time_s = 0.0
        self.max_observed_lag_s = 0.0

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        self._task = self._loop.create_task(self._run(), name=f"replica-{self.index}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
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
        """Queue a request on the engine; raises core.engine.RequestError if invalid."""
        self.engine.add_request(request)
        handle = RequestHandle(request.request_id, clock.now())
        self._handles[request.request_id] = handle
        self._wake.set()
        return handle

    def abort(self, request_id: str) -> int:
        """Drop a request now (client gone); returns KV blocks freed."""
        self._handles.pop(request_id, None)
        return self.engine.abort_request(request_id).num_freed_blocks

    def finish(self, request_id: str, reason: FinishReason) -> None:
        """End a request for a reason found outside the engine (a stop string)."""
        self._handles.pop(request_id, None)
        self.engine.finish_request(request_id, reason)

    def release(self, request_id: str) -> None:
        self._handles.pop(request_id, None)

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
                self._wake.clear()
                await self._wake.wait()
                next_start = clock.now()
            result = self.engine.step()
            self._note_admitted(result, next_start)
            self.model_time_s += result.duration_s
            real_s = result.duration_s / self.time_scale * self.faults.config.slowdown
            due = next_start + real_s
            await self._timer.sleep_until(due)
            now = clock.now()
            lag = now - due
            self.max_observed_lag_s = max(self.max_observed_lag_s, lag)
            next_start = now if lag > self.max_lag_s else due
            self._deliver(result, due)
            # Let the streams write these tokens before the next step is computed.
            await asyncio.sleep(0)

    def _note_admitted(self, result: StepResult, started_at: float) -> None:
        for rid in result.admitted_ids:
            handle = self._handles.get(rid)
            if handle is not None and handle.scheduled_at is None:
                handle.scheduled_at = started_at
                if self.on_queue_time is not None:
                    self.on_queue_time(started_at - handle.arrived_at)

    def _deliver(self, result: StepResult, due: float) -> None:
        scheduled_at = self.wall_time(due)
        for out in result.outputs:
            handle = self._handles.get(out.request_id)
            if handle is None:
                continue
            handle.push(Emission(out, scheduled_at))
            if out.finish_reason is not None:
                # The engine freed it; the HTTP side drains the queue and finishes.
                self._handles.pop(out.request_id, None)
        if result.events and self.publisher is not None:
            self.publisher.publish(EventBatch(scheduled_at, result.events, 0))
        if self._on_step is not None:
            self._on_step(result)
