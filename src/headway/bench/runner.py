"""Drives one load level against one target: sessions on an arrival schedule, their
stages closed-loop, every call through the streaming client.

Schedule (the *plan*): the workload's sessions in order, session i at offset
`arrival_offsets_s(...)[i]` (vLLM's gamma process; a trace session's own `arrival_s`
wins). The plan ends at the first of: the workload runs out; `num_requests` calls have
been planned (the last session is cut after the call that reaches it); the next arrival
falls at or after `duration_s`.

Execution invariants:

* A session starts at its arrival, or later when `max_concurrency` sessions are already
  running (it then waits for one to end, in arrival order; vLLM's semaphore).
* Stage k+1 of a session starts when every call of stage k has finished plus its
  `delay_s`; stage 0 starts `delay_s` after the session's start. The calls of one stage
  are sent together.
* `duration_s` bounds *issuing*: no session, stage or call starts at or after
  `start + duration_s`; calls already in flight run to completion (or their timeout).
* Scheduling lag = the time a call is actually sent minus the time it was due (session
  start or stage ready time). It measures the client itself; the point is flagged
  `is_schedule_kept = False` when its p99 exceeds `max_scheduling_lag_ms`.
* Every wait for a due time (arrivals, stage ready times) goes through one timer per
  process, which wakes the loop within a fraction of a millisecond and never before the
  due time (event-loop timers fire up to ~1.3 ms late or early, a floor under the p99
  lag at any rate): `headway.precise_timer.AlarmTimer` where it can run (loop on the
  main thread, ITIMER_REAL unused), else `PreciseTimer` (a helper thread, which can
  wait milliseconds for the GIL behind a busy loop). `HEADWAY_BENCH_TIMER=thread|loop`
  forces the thread or the event loop's timer, for comparison.
* A session's task is started `DISPATCH_LEAD_S` before its arrival and waits for the
  arrival on the timer itself, so the send follows the wake-up directly.
* Stop (Ctrl-C, `stop_event`): nothing new is issued, in-flight calls are cancelled and
  recorded with error "cancelled", and the records so far are returned (`is_partial`).
* Multi-process: session i of the plan runs in worker i mod N; every worker derives the
  same plan from the seed, so sessions, arrivals and the call cap are exactly those of a
  single-process run. Workers start at one shared CLOCK_MONOTONIC instant (system-wide
  on Linux), so their records merge on one time axis.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from headway.bench.client import DEFAULT_TIMEOUT_S, StreamingClient
from headway.core.arrivals import arrival_offsets_s
from headway.core.serving_metrics import RequestRecord
from headway.core.tokenizer import Tokenizer
from headway.core.workloads import Call, ChatMessage, Session, Stage, Workload
from headway.precise_timer import AlarmTimer, PreciseTimer

# Without num_requests and an arrival rate (duration and a concurrency cap only), the
# plan asks the workload for this many sessions; generation is lazy.
UNBOUNDED_NUM_SESSIONS = 10_000_000
DEFAULT_MAX_SCHEDULING_LAG_MS = 10.0
# Wake-ups due within this of an earlier one share its hand-off to the loop (the later
# ones then yield until their own due time): one thread wake for a burst of arrivals.
TIMER_BATCH_WINDOW_S = 50e-6
# Cap on how early the timer thread hands a wake-up over (the simulator allows 0.5 ms).
# An idle loop's hand-off takes tens of µs; the learned bias only grows past that while
# the loop is busy, and every early wake-up is spent yielding until the due time.
TIMER_MAX_WAKE_BIAS_S = 0.0002
# The interpreter's switch interval while a precise timer runs (as in `headway sim`): a
# timer thread waiting for the GIL behind a busy event loop gets it after this long
# instead of the default 5 ms.
TIMER_SWITCH_INTERVAL_S = 0.0002
# How long before its due time a session's task is started (see `PointRunner._main`);
# more than the event loop timer's lateness (~1.3 ms).
DISPATCH_LEAD_S = 0.002
TIMER_ENV = "HEADWAY_BENCH_TIMER"
# precise: AlarmTimer where it can run (main thread, ITIMER_REAL free), else the thread.
TIMER_KINDS = ("precise", "thread", "loop")


@dataclass(frozen=True)
class LoadLevel:
    """One point of load: session arrival rate (None = all at once) and/or a cap on
    sessions in flight."""

    request_rate: float | None = None
    burstiness: float = 1.0
    max_concurrency: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_rate": self.request_rate,
            "burstiness": self.burstiness,
            "max_concurrency": self.max_concurrency,
        }


@dataclass(frozen=True)
class ScheduledSession:
    """A session of the plan: its index in the plan and its arrival offset."""

    index: int
    session: Session
    offset_s: float


@dataclass(frozen=True)
class PointRun:
    """What one load level produced."""

    records: tuple[RequestRecord, ...]
    lags_s: tuple[float, ...]
    started_at: float  # monotonic seconds: offset 0 of the plan
    ended_at: float  # monotonic seconds: the last call ended (or the stop)
    num_processes: int
    is_partial: bool

    @property
    def duration_s(self) -> float:
        return max(0.0, self.ended_at - self.started_at)


def now_s() -> float:
    """The benchmark's clock: CLOCK_MONOTONIC in seconds (the client stamps with it)."""
    return time.monotonic_ns() / 1e9


def is_plan_bounded(level: LoadLevel, num_requests: int | None) -> bool:
    """Whether the plan has a known, finite length (then it is built before the start)."""
    rate = level.request_rate
    return num_requests is not None or (rate is not None and not math.isinf(rate))


def plan_sessions(
    workload: Workload,
    level: LoadLevel,
    *,
    seed: int,
    num_requests: int | None,
    duration_s: float | None,
) -> Iterator[ScheduledSession]:
    """The run's sessions with their arrival offsets (see the module doc)."""
    rate = level.request_rate
    is_rate_finite = rate is not None and not math.isinf(rate)
    if num_requests is not None:
        num_sessions = num_requests  # every session holds at least one call
    elif duration_s is not None and is_rate_finite:
        assert rate is not None
        num_sessions = math.ceil(rate * duration_s) + 1
    else:
        # Only a concurrency cap or a finite workload (a trace) bounds this plan.
        num_sessions = UNBOUNDED_NUM_SESSIONS
    offsets: np.ndarray | None = None
    if is_rate_finite and num_sessions < UNBOUNDED_NUM_SESSIONS:
        assert rate is not None
        offsets = arrival_offsets_s(
            num_sessions, rate, level.burstiness, np.random.default_rng(seed)
        )
    num_calls = 0
    for i, session in enumerate(workload.sessions(num_sessions, seed)):
        if i >= num_sessions:
            break
        offset = 0.0 if offsets is None else float(offsets[i])
        if session.arrival_s is not None:
            offset = session.arrival_s
        if duration_s is not None and offset >= duration_s:
            return
        if num_requests is not None:
            budget = num_requests - num_calls
            if budget <= 0:
                return
            session = cut_session(session, budget)
        num_calls += sum(len(s.calls) for s in session.stages)
        yield ScheduledSession(i, session, offset)


def cut_session(session: Session, max_calls: int) -> Session:
    """`session` with only its first `max_calls` calls (in stage order)."""
    stages: list[Stage] = []
    left = max_calls
    for stage in session.stages:
        if left <= 0:
            break
        calls = stage.calls[:left]
        left -= len(calls)
        stages.append(replace(stage, calls=calls))
    if len(stages) == len(session.stages) and all(
        len(a.calls) == len(b.calls) for a, b in zip(stages, session.stages, strict=True)
    ):
        return session
    return replace(session, stages=tuple(stages))


def substitute_answers(call: Call, answers: Mapping[str, str]) -> tuple[ChatMessage, ...]:
    """The call's messages with every scripted `answer_of` turn replaced by the real
    answer of that call (when it is known)."""
    return tuple(
        ChatMessage(m.role, answers[m.answer_of], m.answer_of)
        if m.answer_of is not None and m.answer_of in answers
        else m
        for m in call.messages
    )


async def sleep_until(at: float, clock: Callable[[], float] = now_s) -> None:
    """Sleep until `at` on the event loop's timer (coarse: 0..~1.3 ms late); for
    waits where that does not matter. The runner's due-time waits use its `timer`."""
    delay = at - clock()
    if delay > 0:
        await asyncio.sleep(delay)


class Timer(Protocol):
    """What the runner waits for due times with."""

    async def sleep_until(self, deadline: float) -> None:
        """Return at `deadline` (the runner's clock), or at once if it has passed."""
        ...


@dataclass
class LoopTimer:
    """The event loop's own timer (`asyncio.sleep`): resumes 0..~1.3 ms late (the
    baseline `PreciseTimer` is compared with)."""

    clock: Callable[[], float] = now_s

    async def sleep_until(self, deadline: float) -> None:
        """Sleep until `deadline` on the event loop's timer."""
        await sleep_until(deadline, self.clock)

    def close(self) -> None:
        """Nothing to release."""


def timer_kind_from_env() -> str:
    """The timer `HEADWAY_BENCH_TIMER` selects (default `precise`); spawned client
    processes inherit the variable, so every process of a point uses the same kind."""
    kind = os.environ.get(TIMER_ENV, "precise") or "precise"
    if kind not in TIMER_KINDS:
        raise ValueError(f"{TIMER_ENV} must be one of {', '.join(TIMER_KINDS)}, got {kind!r}")
    return kind


def make_timer(kind: str, clock: Callable[[], float]) -> AlarmTimer | PreciseTimer | LoopTimer:
    """A timer of `kind` on the running loop, reading `clock` (CLOCK_MONOTONIC seconds)."""
    if kind == "precise" and AlarmTimer.is_available():
        try:
            return AlarmTimer(
                asyncio.get_running_loop(),
                clock=clock,
                batch_window_s=TIMER_BATCH_WINDOW_S,
                max_wake_bias_s=TIMER_MAX_WAKE_BIAS_S,
            )
        except (RuntimeError, ValueError, NotImplementedError):
            pass  # no signal handlers on this loop: the thread it is
    if kind in ("precise", "thread"):
        return PreciseTimer(
            asyncio.get_running_loop(),
            clock=clock,
            batch_window_s=TIMER_BATCH_WINDOW_S,
            max_wake_bias_s=TIMER_MAX_WAKE_BIAS_S,
            name="headway-bench-timer",
        )
    if kind == "loop":
        return LoopTimer(clock)
    raise ValueError(f"timer kind must be one of {', '.join(TIMER_KINDS)}, got {kind!r}")


class _SwitchInterval:
    """Lowers the interpreter's switch interval to `TIMER_SWITCH_INTERVAL_S` while any
    runner's precise timer runs in this process, and restores it after the last."""

    def __init__(self) -> None:
        self._num_active = 0
        self._saved_s = 0.0

    def enter(self) -> None:
        if self._num_active == 0:
            self._saved_s = sys.getswitchinterval()
            sys.setswitchinterval(min(self._saved_s, TIMER_SWITCH_INTERVAL_S))
        self._num_active += 1

    def exit(self) -> None:
        self._num_active -= 1
        if self._num_active == 0:
            sys.setswitchinterval(self._saved_s)


_SWITCH_INTERVAL = _SwitchInterval()


@dataclass
class PointRunner:
    """Runs one plan against one client (one process's share)."""

    client: StreamingClient
    level: LoadLevel
    duration_s: float | None = None
    use_model_answers: bool = False
    on_call_done: Callable[[RequestRecord], None] | None = None
    clock: Callable[[], float] = now_s
    # None: `run` makes one of `timer_kind` for its duration (and closes it).
    timer: Timer | None = None
    timer_kind: str = field(default_factory=timer_kind_from_env)
    lags_s: list[float] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _deadline: float = math.inf

    async def run(
        self,
        plan: Iterable[ScheduledSession],
        started_at: float,
        stop_event: asyncio.Event | None = None,
    ) -> PointRun:
        """Run `plan` with offset 0 at `started_at` (monotonic seconds); returns when
        every call has ended or `stop_event` is set (then partial)."""
        self._deadline = started_at + self.duration_s if self.duration_s is not None else math.inf
        owned_timer = None
        if self.timer is None:
            self.timer = owned_timer = make_timer(self.timer_kind, self.clock)
        is_precise = isinstance(owned_timer, PreciseTimer)
        if is_precise:
            _SWITCH_INTERVAL.enter()
        try:
            is_partial = await self._run_main(plan, started_at, stop_event)
        finally:
            if owned_timer is not None:
                owned_timer.close()
                self.timer = None
            if is_precise:
                _SWITCH_INTERVAL.exit()
        return PointRun(
            records=tuple(self.client.sink),
            lags_s=tuple(self.lags_s),
            started_at=started_at,
            ended_at=self.clock(),
            num_processes=1,
            is_partial=is_partial,
        )

    async def _run_main(
        self, plan: Iterable[ScheduledSession], started_at: float, stop_event: asyncio.Event | None
    ) -> bool:
        """Run the plan to its end (False) or until `stop_event` (True: partial)."""
        main = asyncio.ensure_future(self._main(plan, started_at))
        if stop_event is None:
            await main
            return False
        stopper = asyncio.ensure_future(stop_event.wait())
        try:
            await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main
            return True
        main.result()
        return False

    async def _sleep_until(self, at: float) -> None:
        assert self.timer is not None  # set for the whole of `run`
        await self.timer.sleep_until(at)

    async def _main(self, plan: Iterable[ScheduledSession], started_at: float) -> None:
        semaphore = (
            asyncio.Semaphore(self.level.max_concurrency)
            if self.level.max_concurrency is not None
            else None
        )
        try:
            for item in plan:
                due_at = started_at + item.offset_s
                if due_at >= self._deadline:
                    break
                # The session's task starts a little ahead and waits for its due time
                # itself (stage 0), on the timer: the send then follows the wake-up
                # directly, not one task hop later. A coarse sleep is enough here.
                await sleep_until(due_at - DISPATCH_LEAD_S, self.clock)
                if semaphore is not None:
                    # Sessions take slots in arrival order, so taking one up to the lead
                    # early starts every session at max(due, slot freed), as at due.
                    await semaphore.acquire()
                    # Waiting for a free slot is the load's closed loop, not client lag.
                    due_at = max(due_at, self.clock())
                if max(due_at, self.clock()) >= self._deadline:
                    if semaphore is not None:
                        semaphore.release()
                    break
                task = asyncio.ensure_future(self._session(item.session, due_at, semaphore))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            while self._tasks:
                await asyncio.gather(*list(self._tasks))
        except asyncio.CancelledError:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
            raise

    async def _session(
        self, session: Session, start_at: float, semaphore: asyncio.Semaphore | None
    ) -> None:
        try:
            answers: dict[str, str] = {}
            ready_at = start_at
            for stage in session.stages:
                ready_at += stage.delay_s
                if ready_at >= self._deadline:
                    return
                await self._sleep_until(ready_at)
                if len(stage.calls) == 1:
                    # No gather: it would wrap the call in a task, one more loop turn of lag.
                    results = [
                        await self._call(stage.calls[0], session.session_id, ready_at, answers)
                    ]
                else:
                    results = await asyncio.gather(
                        *(self._call(c, session.session_id, ready_at, answers) for c in stage.calls)
                    )
                for c, answer in zip(stage.calls, results, strict=True):
                    answers[c.call_id] = answer
                ready_at = self.clock()
        finally:
            if semaphore is not None:
                semaphore.release()

    async def _call(
        self, call: Call, session_id: str, due_at: float, answers: Mapping[str, str]
    ) -> str:
        messages = substitute_answers(call, answers) if self.use_model_answers else None

        def on_sent(sent_at: float) -> None:
            self.lags_s.append(sent_at - due_at)

        result = await self.client.call(call, session_id, messages, on_sent=on_sent)
        if self.on_call_done is not None:
            self.on_call_done(result.record)
        return result.answer_text


# -- multi-process mode ---------------------------------------------------------------
class WorkerError(RuntimeError):
    """A client process of the multi-process mode failed or died."""


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs to rebuild its share of the plan (picklable)."""

    base_url: str
    model: str
    workload: str
    workload_params: Mapping[str, object]
    tokenizer_path: str | None
    seed: int
    level: LoadLevel
    num_requests: int | None
    duration_s: float | None
    use_model_answers: bool
    timeout_s: float
    worker_index: int
    num_workers: int


def build_workload_and_tokenizer(
    name: str, params: Mapping[str, object], tokenizer_path: str | None
) -> tuple[Workload, Tokenizer]:
    """The workload named `name` (or a trace / ShareGPT file path) and its tokenizer."""
    from headway.bench.workload_source import build_from_source

    return build_from_source(name, params, tokenizer_path)


def _worker_main(conn: multiprocessing.connection.Connection, spec: WorkerSpec) -> None:
    """Entry of a worker process: rebuild the plan, report ready, wait for the start
    instant, run its share, send back (records, lags, ended_at, is_partial)."""
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        outcome: tuple[str, Any] = ("done", uvloop.run(_worker_async(conn, spec)))
    except BaseException as exc:  # report, never hang the parent
        outcome = ("error", f"{type(exc).__name__}: {exc}")
    # The event loop's reader left the pipe non-blocking: a large send would fail.
    os.set_blocking(conn.fileno(), True)
    conn.send(outcome)


async def _worker_async(
    conn: multiprocessing.connection.Connection, spec: WorkerSpec
) -> tuple[tuple[RequestRecord, ...], tuple[float, ...], float, bool]:
    workload, tokenizer = build_workload_and_tokenizer(
        spec.workload, spec.workload_params, spec.tokenizer_path
    )
    plan: Iterable[ScheduledSession] = (
        s
        for s in plan_sessions(
            workload,
            spec.level,
            seed=spec.seed,
            num_requests=spec.num_requests,
            duration_s=spec.duration_s,
        )
        if s.index % spec.num_workers == spec.worker_index
    )
    if is_plan_bounded(spec.level, spec.num_requests):
        plan = list(plan)  # prompts built before the start, not during dispatch
    level = spec.level
    if level.max_concurrency is not None:
        # Each worker holds its share of the sessions in flight.
        share = level.max_concurrency // spec.num_workers + (
            1 if spec.worker_index < level.max_concurrency % spec.num_workers else 0
        )
        level = replace(level, max_concurrency=max(1, share))
    loop = asyncio.get_running_loop()
    stop_event = asyncio.Event()
    start_at: asyncio.Future[float] = loop.create_future()

    def on_message() -> None:
        try:
            msg = conn.recv()
        except EOFError:
            msg = ("stop",)
        if msg[0] == "start" and not start_at.done():
            start_at.set_result(float(msg[1]))
        elif msg[0] == "stop":
            stop_event.set()
            if not start_at.done():
                start_at.set_result(now_s())

    loop.add_reader(conn.fileno(), on_message)
    conn.send(("ready",))
    started_at = await start_at
    async with StreamingClient(
        spec.base_url,
        spec.model,
        max_connections=0,
        tokenizer=tokenizer,
        timeout_s=spec.timeout_s,
    ) as client:
        runner = PointRunner(
            client, level, duration_s=spec.duration_s, use_model_answers=spec.use_model_answers
        )
        if stop_event.is_set():
            plan = []
        run = await runner.run(plan, started_at, stop_event)
    loop.remove_reader(conn.fileno())
    return run.records, run.lags_s, run.ended_at, run.is_partial


async def run_point_multiprocess(
    spec: WorkerSpec,
    num_workers: int,
    stop_event: asyncio.Event | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> PointRun:
    """Run one point with `num_workers` spawned processes and merge their records."""
    ctx = multiprocessing.get_context("spawn")
    conns: list[multiprocessing.connection.Connection] = []
    procs: list[Any] = []
    for k in range(num_workers):
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_worker_main,
            args=(child, replace(spec, worker_index=k, num_workers=num_workers)),
            daemon=True,
        )
        proc.start()
        child.close()
        conns.append(parent)
        procs.append(proc)

    async def recv(conn: multiprocessing.connection.Connection) -> Any:
        try:
            return await asyncio.to_thread(conn.recv)
        except (EOFError, OSError) as exc:
            return ("error", f"the worker process died ({type(exc).__name__})")

    try:
        for conn in conns:
            msg = await recv(conn)
            if msg[0] != "ready":
                raise WorkerError(f"a client process failed to start: {msg[1]}")
        # A little ahead, so every worker is waiting before offset 0.
        started_at = now_s() + 0.05
        for conn in conns:
            conn.send(("start", started_at))
        waits = [asyncio.ensure_future(recv(c)) for c in conns]
        is_stopped = False
        if stop_event is not None:
            stopper = asyncio.ensure_future(stop_event.wait())
            pending: set[asyncio.Future[Any]] = set(waits)
            while pending and not is_stopped:
                done, _ = await asyncio.wait(
                    pending | {stopper}, return_when=asyncio.FIRST_COMPLETED
                )
                pending -= done
                if stopper in done:
                    is_stopped = True
                    for conn in conns:
                        with contextlib.suppress(OSError):
                            conn.send(("stop",))
            stopper.cancel()
        results = await asyncio.gather(*waits)
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
    records: list[RequestRecord] = []
    lags: list[float] = []
    ended_at = started_at
    is_partial = is_stopped
    for msg in results:
        if msg[0] != "done":
            raise WorkerError(f"a client process failed: {msg[1]}")
        w_records, w_lags, w_ended_at, w_partial = msg[1]
        records.extend(w_records)
        lags.extend(w_lags)
        ended_at = max(ended_at, w_ended_at)
        is_partial = is_partial or w_partial
    records.sort(key=lambda r: r.sent_at)
    if on_progress is not None:
        on_progress(len(records))
    return PointRun(tuple(records), tuple(lags), started_at, ended_at, num_workers, is_partial)


DEFAULT_REQUEST_TIMEOUT_S = DEFAULT_TIMEOUT_S
