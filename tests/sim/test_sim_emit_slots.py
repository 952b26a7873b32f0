"""`EmitSlots`: where each replica's writes start when steps end close together (alone:
centered on the step's end; overlapping: end to end, centered on the span-weighted mean
of the ends), independent of booking order."""

from __future__ import annotations

import itertools

import pytest

from headway.sim.clock import EmitSlots


@pytest.mark.parametrize(
    ("slots", "starts"),
    [
        ({0: (10.0, 1.0)}, {0: 9.5}),
        ({0: (10.0, 1.0), 1: (12.0, 1.0)}, {0: 9.5, 1: 11.5}),  # apart: each alone
        ({0: (10.0, 1.0), 1: (11.0, 1.0)}, {0: 9.5, 1: 10.5}),  # touching: no overlap
        ({0: (10.0, 1.0), 1: (10.2, 1.0)}, {0: 9.1, 1: 10.1}),  # end to end around 10.1
        ({0: (10.0, 1.0), 1: (10.0, 1.0)}, {0: 9.0, 1: 10.0}),  # a tie: by key
        # weighted: center (10*1 + 10.1*0.5 + 10.2*1) / 2.5 = 10.1, run of 2.5
        ({0: (10.0, 1.0), 3: (10.1, 0.5), 1: (10.2, 1.0)}, {0: 8.85, 3: 9.85, 1: 10.35}),
        # a merged run that then reaches back into an earlier slot merges with it too
        (
            {0: (9.0, 1.0), 1: (10.3, 1.0), 2: (10.3, 1.0)},
            {0: 8.3667, 1: 9.3667, 2: 10.3667},  # center (9 + 2 * 10.3) / 3, run of 3
        ),
        ({0: (10.0, 0.0), 1: (10.0, 0.0)}, {0: 10.0, 1: 10.0}),  # no span yet
    ],
    ids=["alone", "apart", "touching", "overlap", "tie", "weighted", "cascade", "zero-span"],
)
def test_emit_slots_lay_overlapping_spans_end_to_end(
    slots: dict[int, tuple[float, float]], starts: dict[int, float]
) -> None:
    for order in itertools.permutations(slots):
        board = EmitSlots()
        for key in order:
            board.book(key, *slots[key])
        got = {key: board.start_of(key) for key in slots}
        assert got == pytest.approx(starts, abs=1e-4), order


def test_emit_slots_release_and_rebook() -> None:
    board = EmitSlots()
    board.book(0, 10.0, 1.0)
    board.book(1, 10.2, 1.0)
    assert board.start_of(1) == pytest.approx(10.1)
    board.release(0)
    assert board.start_of(1) == pytest.approx(9.7)  # alone again
    board.book(1, 20.0, 1.0)  # the next step moves it
    assert board.start_of(1) == pytest.approx(19.5)
    board.release(0)  # releasing twice is harmless
    with pytest.raises(KeyError):
        board.start_of(0)
