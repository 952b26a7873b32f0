"""The relay's moving upstream deadline (`server._Deadline`): queued on a loop timer
shared by a gateway's attempts (`_DeadlineTimer`), queued again only when it comes due
before a deadline that moved later; the same outcomes as `asyncio.timeout_at` per read.
Short real timeouts (tens of ms), with outcomes asserted, never durations."""

from __future__ import annotations

import asyncio
import time

import pytest

from headway.gateway.server import _Deadline, _DeadlineTimer, _UpstreamTimeout

_SHORT_S = 0.03


async def _sleep_then(value: str, delay_s: float) -> str:
    await asyncio.sleep(delay_s)
    return value


async def _ready(value: str) -> str:
    return value


def _run(coro_fn: object) -> object:
    return asyncio.run(coro_fn())  # type: ignore[operator]


@pytest.mark.parametrize(
    ("at_offset_s", "delay_s", "outcome"),
    [
        (None, 2 * _SHORT_S, "done"),
        (10.0, _SHORT_S, "done"),
        (_SHORT_S, 10.0, "timeout"),
        (-1.0, 0.0, "done"),  # passed already, but what it awaits is ready at once
        (-1.0, 10.0, "timeout"),  # passed already, and it would have to wait
    ],
    ids=["no-deadline", "in-time", "too-late", "passed-ready", "passed-waiting"],
)
def test_one_wait(at_offset_s: float | None, delay_s: float, outcome: str) -> None:
    async def main() -> str:
        at = None if at_offset_s is None else time.monotonic() + at_offset_s
        deadline = _Deadline(at)
        try:
            awaitable = _ready("done") if delay_s == 0 else _sleep_then("done", delay_s)
            return await deadline.wait(awaitable)
        except _UpstreamTimeout:
            return "timeout"
        finally:
            deadline.close()

    assert _run(main) == outcome


def test_deadline_moved_later_each_read_never_fires() -> None:
    """An idle deadline pushed forward per chunk: reads spanning several idle periods
    in all, each well within one, never time out (the timer re-arms when it fires
    early), and the timer is armed far fewer times than there are reads."""
    arms = 0
    real_arm = _Deadline._arm

    def counting_arm(self: _Deadline, at: float) -> None:
        nonlocal arms
        arms += 1
        real_arm(self, at)

    async def main() -> int:
        idle_s = 4 * _SHORT_S
        deadline = _Deadline(time.monotonic() + idle_s)
        num_reads = 0
        try:
            for _ in range(30):  # 30 x ~SHORT/3 = ~2.5 idle periods
                await deadline.wait(_sleep_then("chunk", _SHORT_S / 3))
                num_reads += 1
                deadline.at = time.monotonic() + idle_s
        finally:
            deadline.close()
        return num_reads

    mp = pytest.MonkeyPatch()
    mp.setattr(_Deadline, "_arm", counting_arm)
    try:
        assert _run(main) == 30
    finally:
        mp.undo()
    assert 1 <= arms < 15


def test_deadline_passing_between_waits_expires_the_next_wait() -> None:
    async def main() -> list[str]:
        deadline = _Deadline(time.monotonic() + _SHORT_S)
        out = []
        try:
            out.append(await deadline.wait(_ready("first")))
            await asyncio.sleep(3 * _SHORT_S)  # e.g. a slow client write: not counted
            out.append("after-write")
            try:
                await deadline.wait(_sleep_then("late", 10.0))
            except _UpstreamTimeout:
                out.append("timeout")
        finally:
            deadline.close()
        return out

    assert _run(main) == ["first", "after-write", "timeout"]


def test_outside_cancellation_is_not_a_timeout() -> None:
    """The client going away cancels the handler: that is a CancelledError, never
    turned into a timeout, and the task's cancel count is left as it was."""

    async def main() -> tuple[str, int]:
        async def handler() -> str:
            deadline = _Deadline(time.monotonic() + 10.0)
            try:
                await deadline.wait(_sleep_then("x", 10.0))
            except _UpstreamTimeout:
                return "timeout"
            finally:
                deadline.close()
            return "done"

        task = asyncio.create_task(handler())
        await asyncio.sleep(_SHORT_S)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled", task.cancelling()
        return "not cancelled", task.cancelling()

    assert _run(main) == ("cancelled", 1)


def test_timeout_leaves_the_task_uncancelled() -> None:
    async def main() -> tuple[str, int]:
        task = asyncio.current_task()
        assert task is not None
        deadline = _Deadline(time.monotonic() + _SHORT_S)
        try:
            await deadline.wait(_sleep_then("x", 10.0))
        except _UpstreamTimeout:
            pass
        finally:
            deadline.close()
        # The task goes on: a later await is not cancelled.
        return await _sleep_then("after", 0.0), task.cancelling()

    assert _run(main) == ("after", 0)


def test_shared_timer_expires_only_the_deadline_that_passed() -> None:
    """Deadlines of several attempts on one timer: each times out on its own, the
    earlier-queued long one included, whatever order they were queued in."""

    async def main() -> list[str]:
        timers = _DeadlineTimer()

        async def attempt(at_offset_s: float, delay_s: float) -> str:
            deadline = _Deadline(time.monotonic() + at_offset_s, timers=timers)
            try:
                return await deadline.wait(_sleep_then("done", delay_s))
            except _UpstreamTimeout:
                return "timeout"
            finally:
                deadline.close()

        return list(
            await asyncio.gather(
                attempt(10.0, 3 * _SHORT_S),  # queued first, due last: done in time
                attempt(_SHORT_S, 10.0),  # times out
                attempt(2 * _SHORT_S, 0.0),  # ready at once
            )
        )

    assert _run(main) == ["done", "timeout", "done"]


def test_shared_timer_drops_closed_deadlines() -> None:
    """Attempts that end long before their deadline leave no lasting entries: the
    heap stays bounded however many there were (one after another, as at
    concurrency 1)."""

    async def main() -> int:
        timers = _DeadlineTimer()
        largest = 0
        for _ in range(1000):
            deadline = _Deadline(time.monotonic() + 600.0, timers=timers)
            await deadline.wait(_ready("x"))
            deadline.close()
            largest = max(largest, len(timers._entries))
        return largest

    assert _run(main) <= 2 * 64
