"""BlockHashMemo: digests looked up are the digests computed; the memo stays bounded."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway.core.block_hash import BlockHasher, BlockHashMemo

tokens = st.lists(st.integers(0, 4095), max_size=80)


@settings(max_examples=60, deadline=None)
@given(prompts=st.lists(tokens, min_size=1, max_size=6), block_size=st.sampled_from([1, 4, 16]))
def test_memoized_digests_equal_computed_ones(prompts: list[list[int]], block_size: int) -> None:
    memo = BlockHashMemo(max_entries=7)  # small: evictions happen along the way
    plain = BlockHasher(block_size, seed="42")
    memoized = BlockHasher(block_size, seed="42", memo=memo)
    for prompt in prompts + prompts:  # the second pass finds (some) blocks in the memo
        assert memoized.hash_all(prompt) == plain.hash_all(prompt)
        assert len(memo) <= 7


def test_shared_prefix_blocks_are_looked_up() -> None:
    memo = BlockHashMemo()
    hasher = BlockHasher(4, memo=memo)
    system = list(range(40))  # 10 blocks
    hasher.hash_all([*system, 100, 101, 102, 103])
    assert (memo.num_hits, memo.num_misses) == (0, 11)
    hasher.hash_all([*system, 200, 201, 202, 203])
    assert (memo.num_hits, memo.num_misses) == (10, 12)


@pytest.mark.parametrize("bad", [0, -1])
def test_memo_size_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        BlockHashMemo(bad)


@settings(max_examples=60, deadline=None)
@given(first=tokens, more=tokens, block_size=st.sampled_from([1, 4, 16]))
def test_extending_from_the_unhashed_tail_equals_hashing_everything(
    first: list[int], more: list[int], block_size: int
) -> None:
    hasher = BlockHasher(block_size)
    digests = hasher.hash_all(first)
    offset = len(digests) * block_size
    hasher.extend(digests, (first + more)[offset:], token_offset=offset)
    assert digests == hasher.hash_all(first + more)


def test_an_offset_past_the_hashed_blocks_is_refused() -> None:
    with pytest.raises(ValueError, match="token_offset"):
        BlockHasher(4).extend([], [1, 2, 3, 4], token_offset=4)
