"""The cluster's prompt encoder reuses the digests of leading blocks shared with the
last prompt that had the same leading messages; the result must equal hashing every
block of the prompt afresh."""

from __future__ import annotations

import pytest

from headway.cluster.simulation import PromptEncoder
from headway.core.block_hash import BlockHasher, to_event_int
from headway.core.workloads import Call, ChatMessage
from headway.resources.tokenizer import HfTokenizer, default_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> HfTokenizer:
    return default_tokenizer()


SYSTEM = "You route requests for a fleet of model servers; be brief. " * 12
OTHER = "You summarise incident reports for the on-call engineer. " * 12


def _call(i: int, *messages: tuple[str, str]) -> Call:
    return Call(f"c{i}", tuple(ChatMessage(r, c) for r, c in messages), 8, 0, ())


CALLS = [
    _call(0, ("system", SYSTEM), ("user", "How many replicas for 40 requests/s?")),
    _call(1, ("system", SYSTEM), ("user", "How many replicas for 40 requests/s?")),  # same
    _call(2, ("system", SYSTEM), ("user", "Why is TTFT high?")),
    _call(3, ("system", OTHER), ("user", "Why is TTFT high?")),
    _call(4, ("user", "hello")),  # no leading messages
    _call(
        5,
        ("system", SYSTEM),
        ("user", "Why is TTFT high?"),
        ("assistant", "Queueing."),
        ("user", "And TPOT?"),
    ),
    _call(
        6,
        ("system", SYSTEM),
        ("user", "Why is TTFT high?"),
        ("assistant", "Queueing."),
        ("user", "And throughput, " * 40),
    ),
    _call(7, ("system", SYSTEM[:200]), ("user", "short")),
]


@pytest.mark.parametrize("block_size", [16, 4, 64], ids=["16", "4", "64"])
def test_reused_digests_equal_fresh_hashing(tokenizer: HfTokenizer, block_size: int) -> None:
    enc = PromptEncoder(tokenizer, block_size, "seed")
    fresh = BlockHasher(block_size, "seed")
    for call in CALLS + CALLS[::-1]:
        token_ids, digests, ints = enc.encode_with_ints(call)
        expected = fresh.hash_all(token_ids)
        assert list(digests) == expected, call.call_id
        assert list(ints) == [to_event_int(h) for h in expected]
        assert len(digests) == len(token_ids) // block_size
