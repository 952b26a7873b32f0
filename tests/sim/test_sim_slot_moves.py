"""One timer sleep per step for a replica's write slot: `EmitSlots` tells a booked key
when another key's booking or release moves its slot, and the timers move a keyed
sleeper (never waking it before its moved deadline, never at a stale one). Also: work
that gave up waiting for a gap still lets a sleeper that is already due go first."""

from __future__ import annotations

import asyncio
import time

import pytest

from headway.core.engine import Engine
from headway.core.engine_factory import EngineSpec, resolve_engine
from headway.core.sampler import DeterministicSampler
from headway.core.sequence import EngineRequest
from headway.resources.catalog import load_catalog
from headway.sim.clock import AlarmTimer, EmitSlots, PreciseTimer, SimTimer, now
from headway.sim.faults import FaultConfig, FaultInjector
from headway.sim.replica import Replica

# The alarm timer needs ITIMER_REAL, which pytest-timeout's default (signal) method holds.
TIMER_KINDS = [
    pytest.param(PreciseTimer, id="thread"),
    pytest.param(AlarmTimer, id="alarm", marks=pytest.mark.timeout(60, method="thread")),
]


# -- EmitSlots watchers -------------------------------------------------------------
@pytest.mark.parametrize(
    ("booked", "change", "moves"),
    [
        # B books apart from A: A's slot stays, nobody is told.
        ({0: (10.0, 1.0)}, ("book", 1, 12.0, 1.0), {}),
        # B books over A: the two are laid end to end around 10.1; A moves to 9.1.
        ({0: (10.0, 1.0)}, ("book", 1, 10.2, 1.0), {0: 9.1}),
        # B leaves: A, laid out with B, goes back to its own place.
        ({0: (10.0, 1.0), 1: (10.2, 1.0)}, ("release", 1, 0.0, 0.0), {0: 9.5}),
        # C joins A and B's run: both move (by the weighted center of the three).
        (
            {0: (10.0, 1.0), 1: (10.2, 1.0)},
            ("book", 2, 10.3, 1.0),
            {0: 8.6667, 1: 9.6667},
        ),
        # Releasing a key that is not booked changes nothing.
        ({0: (10.0, 1.0)}, ("release", 5, 0.0, 0.0), {}),
    ],
    ids=["apart", "overlap", "release", "join-run", "release-unknown"],
)
def test_emit_slots_tell_watchers_when_their_slot_moves(
    booked: dict[int, tuple[float, float]],
    change: tuple[str, int, float, float],
    moves: dict[int, float],
) -> None:
    board = EmitSlots()
    told: dict[int, list[float]] = {}
    for key, (end_at, span_s) in booked.items():
        board.book(key, end_at, span_s)
    for key in (*booked, change[1]):
        board.watch(key, lambda start, key=key: told.setdefault(key, []).append(start))
    op, key, end_at, span_s = change
    if op == "book":
        board.book(key, end_at, span_s)
    else:
        board.release(key)
    assert told.keys() == moves.keys()  # the key that changed is never told
    for k, start in moves.items():
        assert told[k] == [pytest.approx(start, abs=1e-4)]
        assert board.start_of(k) == told[k][0]


# -- moving a keyed sleeper -----------------------------------------------------------
@pytest.mark.parametrize(
    ("first_s", "moved_s"),
    [(0.3, 0.03), (0.03, 0.09)],
    ids=["earlier", "later"],
)
@pytest.mark.parametrize("kind", TIMER_KINDS)
async def test_a_moved_sleeper_wakes_at_its_new_deadline(
    kind: type[SimTimer], first_s: float, moved_s: float
) -> None:
    timer = kind(asyncio.get_running_loop())
    try:
        t0 = now()
        sleeper = asyncio.ensure_future(timer.sleep_until(t0 + first_s, key="k"))
        await asyncio.sleep(0)  # registered
        assert timer.move("k", t0 + moved_s)
        assert timer.next_deadline() == pytest.approx(t0 + moved_s - timer.wake_bias_s)
        await asyncio.wait_for(sleeper, 5)
        woke_s = now() - t0
        assert moved_s <= woke_s < moved_s + 0.2
        # Woken once: the replaced entry neither woke it nor stays a deadline.
        assert timer.num_wakeups == 1
        assert timer.next_deadline() is None
        assert not timer.move("k", t0 + 1.0)  # over: nothing to move
    finally:
        timer.close()


@pytest.mark.parametrize("kind", TIMER_KINDS)
async def test_moving_an_unknown_key_changes_nothing(kind: type[SimTimer]) -> None:
    timer = kind(asyncio.get_running_loop())
    try:
        other = asyncio.ensure_future(timer.sleep_until(now() + 0.02, key="a"))
        await asyncio.sleep(0)
        assert not timer.move("b", now())
        await asyncio.wait_for(other, 5)
    finally:
        timer.close()


# -- gap waits past their give-up -----------------------------------------------------
@pytest.mark.parametrize("kind", TIMER_KINDS)
async def test_work_past_its_give_up_still_lets_a_due_sleeper_go_first(
    kind: type[SimTimer],
) -> None:
    timer = kind(asyncio.get_running_loop())
    order: list[str] = []

    async def sleeper(deadline: float) -> None:
        await timer.sleep_until(deadline)
        order.append("sleeper")

    try:
        task = asyncio.ensure_future(sleeper(now() + 0.005))
        await asyncio.sleep(0)  # registered
        time.sleep(0.02)  # the loop is busy past the sleeper's deadline
        # No gap asked for and no wait allowed: yet the sleeper, overdue, goes first.
        # (Awaited directly: a task around it would let the sleeper run meanwhile.)
        await timer.wait_for_gap(width_s=0.0, max_wait_s=0.0)
        order.append("work")
        await asyncio.wait_for(task, 5)
    finally:
        timer.close()
    assert order == ["sleeper", "work"]


# -- a replica's steps ------------------------------------------------------------------
async def test_a_replica_step_takes_one_timer_wake_up() -> None:
    """Its write slot is slept for once per step (moved, if need be, while it sleeps),
    not read in a wake-up of its own first."""
    resolved = resolve_engine(EngineSpec(model="llama-3.1-8b", gpu="h100"), load_catalog())
    sampler = DeterministicSampler(tuple(range(100, 1100)), 2, seed=0)
    engine = Engine(resolved.config, resolved.cost_model.step_cost, sampler)
    timer = PreciseTimer(asyncio.get_running_loop())
    replica = Replica(0, engine, 1.0, FaultInjector(FaultConfig(), 0), timer)
    # As if its writes took 2 ms (this test streams nothing): the slot starts 1 ms
    # before each step's end, well after any wake-up that would only read it.
    replica._emit_avg_s = 0.002
    try:
        replica.start()
        handle = replica.submit(EngineRequest("a", tuple(range(1, 65)), 12, ignore_eos=True))
        emissions = []
        while not emissions or emissions[-1].output.finish_reason is None:
            emissions.append(await asyncio.wait_for(handle.next(), 5))
        assert not engine.has_work
        num_steps = engine.counters.num_steps
        assert num_steps >= 12
        assert 0 < timer.num_wakeups <= num_steps
    finally:
        await replica.stop()
        timer.close()
