"""The periodic GC backstop of `headway sim` runs a due collection only when the engine
loops have not collected for a whole interval (busy loops collect in the gaps between
step ends; a backstop collection lands anywhere)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from headway.sim import cli
from headway.sim.clock import GC_PACER, now


@pytest.mark.parametrize(
    ("loops_collect", "expect_backstop"),
    [(True, False), (False, True)],
    ids=["loops-collecting", "loops-idle"],
)
def test_backstop_collects_only_when_the_loops_do_not(
    monkeypatch: pytest.MonkeyPatch, loops_collect: bool, expect_backstop: bool
) -> None:
    collected: list[int] = []
    monkeypatch.setattr(GC_PACER, "collect", lambda generation: collected.append(generation))
    monkeypatch.setattr(GC_PACER, "due", lambda: 0)  # a collection is always due
    interval_s = 0.02

    async def main() -> None:
        # The loops' last collection: "just now" for the whole test, or long ago.
        GC_PACER.last_collected_at = now() + (3600.0 if loops_collect else -3600.0)
        backstop = asyncio.ensure_future(cli._collect_garbage_periodically(interval_s))
        await asyncio.sleep(5 * interval_s)  # several ticks
        backstop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await backstop

    asyncio.run(main())
    GC_PACER.last_collected_at = now()
    assert bool(collected) is expect_backstop, collected
