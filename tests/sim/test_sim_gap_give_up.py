"""Work that gave up waiting for a gap between step ends (`wait_for_gap` past its
`max_wait_s`) still lets a sleeper that is already due go first, on both timers."""

from __future__ import annotations

import asyncio
import time

import pytest

from headway.sim.clock import AlarmTimer, PreciseTimer, SimTimer, now

# The alarm timer needs ITIMER_REAL, which pytest-timeout's default (signal) method holds.
TIMER_KINDS = [
    pytest.param(PreciseTimer, id="thread"),
    pytest.param(AlarmTimer, id="alarm", marks=pytest.mark.timeout(60, method="thread")),
]


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
