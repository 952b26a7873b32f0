"""PreciseTimer: never wakes before the deadline, wakes sleepers in deadline order."""

from __future__ import annotations

import asyncio

import pytest

from headway.sim.clock import PreciseTimer, now


@pytest.mark.parametrize(
    "delays_s",
    [[0.003], [0.004, 0.001, 0.002], [0.002, -0.01]],
    ids=["one", "out-of-order", "past"],
)
async def test_wakes_at_or_after_deadline_in_order(delays_s: list[float]) -> None:
    timer = PreciseTimer(asyncio.get_running_loop())
    woke: list[tuple[float, float]] = []

    async def sleeper(deadline: float) -> None:
        await timer.sleep_until(deadline)
        woke.append((deadline, now()))

    try:
        start = now()
        await asyncio.gather(*(sleeper(start + d) for d in delays_s))
    finally:
        timer.close()
    assert all(at >= deadline for deadline, at in woke)
    assert [d for d, _ in woke] == sorted(d for d, _ in woke)


async def test_many_sleepers_all_wake() -> None:
    timer = PreciseTimer(asyncio.get_running_loop())
    try:
        start = now()
        await asyncio.wait_for(
            asyncio.gather(*(timer.sleep_until(start + 0.0001 * i) for i in range(200))), 5
        )
    finally:
        timer.close()
    assert 0.0 <= timer.wake_bias_s <= 0.001
