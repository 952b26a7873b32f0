"""Write hand-off (`EmitSlots.arm` / `write_due`): once a replica's writes end, the
writes of replicas whose slots have started by then are made straight after, in order
of their starts; never before a slot's start; a replica that wakes first makes its own."""

from __future__ import annotations

from functools import partial

import pytest

from headway.sim.clock import EmitSlots


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(
    ("now", "starts", "expect_written"),
    [
        (1.0, {1: 0.5, 2: 0.9, 3: 1.5}, [1, 2]),  # started by now, in start order
        (1.0, {2: 0.9, 1: 0.5}, [1, 2]),  # armed out of order
        (0.4, {1: 0.5, 2: 0.9}, []),  # none started: nothing early
        (2.0, {}, []),
    ],
    ids=["due-ones-in-order", "armed-out-of-order", "none-due", "none-armed"],
)
def test_write_due_makes_started_writes_in_start_order(
    now: float, starts: dict[int, float], expect_written: list[int]
) -> None:
    slots, clock, written = EmitSlots(), FakeClock(), list[int]()
    clock.t = now
    for key, start in starts.items():
        slots.arm(key, start, partial(written.append, key))
    slots.write_due(clock)
    assert written == expect_written
    for key in starts:  # whoever was written for may not write again; the rest may
        assert slots.disarm(key) is (key not in expect_written)


def test_write_due_looks_again_after_each_write() -> None:
    # Writes take a while: one that ends past the next slot's start lets it go too.
    slots, clock, written = EmitSlots(), FakeClock(), []

    def write(key: int) -> None:
        written.append(key)
        clock.t += 0.3

    slots.arm(1, 1.0, lambda: write(1))
    slots.arm(2, 1.2, lambda: write(2))
    slots.arm(3, 2.0, lambda: write(3))
    clock.t = 1.0
    slots.write_due(clock)
    assert written == [1, 2]  # 2 started at 1.2 <= 1.3; 3 not by 1.6
    assert slots.disarm(3)


def test_release_drops_an_armed_write() -> None:
    slots, clock, written = EmitSlots(), FakeClock(), []
    slots.book(1, 1.0, 0.1)
    slots.arm(1, 0.95, lambda: written.append(1))
    slots.release(1)  # the replica stopped
    clock.t = 5.0
    slots.write_due(clock)
    assert written == []
    assert not slots.disarm(1)
