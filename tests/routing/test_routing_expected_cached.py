"""`expected_cached_tokens`: the prompt tokens an endpoint should serve from its cache,
the amount the gateway and the cluster simulation take off a request's in-flight load."""

from __future__ import annotations

import pytest
from routing_helpers import ctx

from headway.routing import ApproxPrefixIndex, KvBlockIndex
from headway.routing.prefix.matching import expected_cached_tokens

BLOCKS = (11, 12, 13, 14)  # 4 full blocks of 16 tokens; the prompt has 70 tokens
CHUNKS = (101, 102, 103, 104, 105)


def _indexes(stale: bool = False) -> tuple[KvBlockIndex, ApproxPrefixIndex]:
    kv = KvBlockIndex()
    kv.store("a", BLOCKS[:3])  # leading 3 blocks
    kv.store("b", BLOCKS[1:])  # no leading block: nothing reusable
    if stale:
        kv.mark_stale("a")
    approx = ApproxPrefixIndex()
    approx.record("a", CHUNKS[:2])
    approx.record("c", CHUNKS)
    return kv, approx


@pytest.mark.parametrize(
    ("endpoint", "stale", "block_size", "expected"),
    [
        ("a", False, 16, 48),  # precise: 3 leading blocks x 16
        ("b", False, 16, 0),  # holds later blocks only: a prefix cache cannot use them
        ("a", True, 16, 28),  # stale: approximate, 2 of 5 chunks x 70 tokens
        ("a", False, None, 28),  # block size unknown: approximate
        ("c", False, 16, 0),  # precise index trusted and knows nothing of c
        ("c", False, None, 69),  # whole prompt recorded: all but the last token
    ],
    ids=["precise", "non-leading", "stale-approx", "no-block-size", "precise-miss", "cap"],
)
def test_expected_cached_tokens(
    endpoint: str, stale: bool, block_size: int | None, expected: int
) -> None:
    kv, approx = _indexes(stale)
    request = ctx(num_prompt_tokens_est=70, block_hashes=BLOCKS, chunk_hashes=CHUNKS)
    assert expected_cached_tokens(request, endpoint, kv, approx, block_size) == expected


def test_without_indexes_or_hashes_nothing_is_expected() -> None:
    kv, approx = _indexes()
    bare = ctx(num_prompt_tokens_est=70)
    assert expected_cached_tokens(bare, "a", kv, approx, 16) == 0
    assert expected_cached_tokens(ctx(num_prompt_tokens_est=70, chunk_hashes=CHUNKS), "c", None, None, 16) == 0  # fmt: skip
    assert expected_cached_tokens(ctx(num_prompt_tokens_est=0), "a", kv, approx, 16) == 0
