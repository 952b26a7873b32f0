"""The engine loop's event trace report (`python -m headway.sim.trace`): token lag from
the traced writes, and what the loop was in while a late step waited for its slot."""

from __future__ import annotations

from headway.sim.trace import Event, report, stall_report, stalls


def test_report_blames_the_write_that_held_up_a_late_step() -> None:
    step_s = 0.010
    events: list[Event] = [(0.0, 0.0, "h0", 0, 0.0, 0.0), (0.0, 0.0, "h1", 0, 0.0, 0.0)]
    # Replica 0 writes 4 chunks on time around its step end at 1.0 s; replica 1's slot
    # starts at 1.0 too, but its writes wait for replica 0's, then for 0.4 ms of
    # untraced work: they start 0.6 ms late (6% of the step).
    events += [
        (0.9998, 0.9998, "w0", 0, 0.9998, 1.0),
        (1.0002, 1.0002, "w1", 0, 4.0, step_s),
        (1.0004, 1.0004, "a", -1, 0.0, 0.0),  # until here: nothing traced, running
        (1.0006, 1.0006, "w0", 1, 1.0, 1.0),
        (1.0007, 1.0007, "w1", 1, 1.0, step_s),
    ]
    text = report(events, start_s=0.5, end_s=2.0, threshold=0.05)
    lines = text.splitlines()
    assert lines[0].startswith("steps 2, tokens 5:")
    assert "1 late steps" in lines[1]
    by_kind = {line.split(":")[0].strip(): line for line in lines[2:4]}
    assert "0.200 ms" in by_kind["write"]  # 1.0000-1.0002: replica 0's writes
    assert "0.400 ms" in by_kind["untraced"]  # 1.0002-1.0006


def test_stalls_are_counted_by_the_trace_points_around_them() -> None:
    events: list[Event] = [
        (0.0, 0.0, "h0", 0, 0.0, 0.0),
        (0.0001, 0.0001, "h1", 0, 0.0, 0.0),
        # Engine.step of replica 1 ran 1.5 ms of CPU (ca -> cs): a stall.
        (1.0, 0.5, "ca", 1, 0.0, 0.0),
        (1.0016, 0.5015, "cs", 1, 0.0, 0.0),
        # 3 ms of wall with 0.2 ms of CPU: the loop was idle or not running, no stall.
        (1.0046, 0.5017, "a", -1, 0.0, 0.0),
        # 1.2 ms of CPU with no trace point between: untraced work, a stall.
        (1.0060, 0.5029, "w0", 2, 1.006, 1.006),
    ]
    found = stalls(events, lo=0.5, hi=2.0, min_cpu_s=0.001)
    assert [(e[2], round(e[1], 4)) for e in found] == [("ca", 0.0015), ("a", 0.0012)]
    lines = stall_report(events, 0.5, 2.0, 0.001)
    assert lines[0] == "stalls over 1 ms of CPU: 2"
    assert any("ca>cs: 1" in line for line in lines)
    assert any("a>w0: 1" in line for line in lines)
