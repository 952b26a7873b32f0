"""PreciseTimer as the simulator re-exports it: many sleepers all wake (its ordering and
never-early tests are in tests/bench/test_bench_precise_timer.py, with the timer)."""

from __future__ import annotations

import asyncio

from headway.sim.clock import PreciseTimer, now


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
