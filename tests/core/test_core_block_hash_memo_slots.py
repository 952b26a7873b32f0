"""BlockHashMemo's table: fixed slots in pairs, the newest block always kept, the block
it displaces kept in the pair's other slot (whatever the keys hash to)."""

from __future__ import annotations

import itertools

import pytest

from headway.core.block_hash import BlockHashMemo, hash_block, none_hash

ROOT = none_hash()
BLOCKS = [tuple(range(k, k + 4)) for k in range(0, 40, 4)]


@pytest.mark.parametrize("max_entries", [2, 3], ids=["2-slots", "3-entries-2-slots"])
def test_two_slots_hold_two_blocks_whatever_their_hashes(max_entries: int) -> None:
    for older, newer in itertools.pairwise(BLOCKS):
        memo = BlockHashMemo(max_entries)
        memo.digest(ROOT, older, None)
        memo.digest(ROOT, newer, None)
        # Either in a slot each, or the newer took the older's slot and moved it.
        assert memo.digest(ROOT, older, None) == hash_block(ROOT, older)
        assert memo.digest(ROOT, newer, None) == hash_block(ROOT, newer)
        assert (memo.num_hits, memo.num_misses, len(memo)) == (2, 2, 2)


def test_one_slot_keeps_the_newest() -> None:
    memo = BlockHashMemo(1)
    for block in BLOCKS:
        memo.digest(ROOT, block, None)
        assert memo.digest(ROOT, block, None) == hash_block(ROOT, block)
        assert len(memo) == 1
    assert (memo.num_hits, memo.num_misses) == (len(BLOCKS), len(BLOCKS))


@pytest.mark.parametrize(("max_entries", "num_slots"), [(1000, 512), (1024, 1024), (65536, 65536)])
def test_the_table_never_outgrows_its_slots(max_entries: int, num_slots: int) -> None:
    memo = BlockHashMemo(max_entries)
    for k in range(3 * num_slots):
        memo.digest(ROOT, (k,), None)
        if k > num_slots and k % 997 == 0:
            assert len(memo) <= num_slots <= max_entries
    assert len(memo) <= num_slots
