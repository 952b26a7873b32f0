"""vLLM-compatible chained block hashing (sha256_cbor, vLLM 0.32) against REFERENCE.md."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway.core.block_hash import (
    MASK_64,
    BlockHasher,
    hash_block,
    none_hash,
    normalize_event_hash,
    sha256_cbor,
    to_event_int,
)

# REFERENCE.md: vLLM 0.32, sha256_cbor, PYTHONHASHSEED unset, no extra keys, block size 16.
NONE_HASH_HEX = "9bd96a485ad84efdafb72ee48a1d7a69bcead0f8f0433173941b276b9581eef0"
BLOCK0_HEX = "dc918a88b139e5afe60b88eda27508d4aee16c10fdc354791efea06206ac0749"
BLOCK1_HEX = "c300ec275d7bf08af8fc63e76cdc0086911bbc7091e03c5cf892553bef84ef0c"
BLOCK0_INT = 2233398808101521225
BLOCK1_INT = 17911472383915781900


def test_none_hash_matches_vllm() -> None:
    assert none_hash().hex() == NONE_HASH_HEX
    assert none_hash() == sha256_cbor("vllm-none-hash")


@pytest.mark.parametrize(
    ("index", "digest_hex", "event_int"),
    [(0, BLOCK0_HEX, BLOCK0_INT), (1, BLOCK1_HEX, BLOCK1_INT)],
    ids=["block0-tokens-0..15", "block1-tokens-16..31"],
)
def test_reference_vectors(index: int, digest_hex: str, event_int: int) -> None:
    digests = BlockHasher(16).hash_all(list(range(32)))
    assert len(digests) == 2
    assert digests[index].hex() == digest_hex
    assert to_event_int(digests[index]) == event_int


def test_chain_uses_full_parent_digest() -> None:
    d0 = hash_block(none_hash(), range(16))
    d1 = hash_block(d0, range(16, 32))
    assert d0.hex() == BLOCK0_HEX
    assert d1.hex() == BLOCK1_HEX
    # Same tokens under a different parent give a different block hash.
    assert hash_block(none_hash(), range(16, 32)) != d1


@pytest.mark.parametrize(
    ("num_tokens", "block_size", "expected_blocks"),
    [(0, 16, 0), (15, 16, 0), (16, 16, 1), (31, 16, 1), (32, 16, 2), (10, 1, 10), (100, 32, 3)],
    ids=["empty", "partial-only", "one-full", "one-plus-partial", "two-full", "bs1", "bs32"],
)
def test_only_full_blocks_hashed(num_tokens: int, block_size: int, expected_blocks: int) -> None:
    assert len(BlockHasher(block_size).hash_all(list(range(num_tokens)))) == expected_blocks


@pytest.mark.parametrize(
    ("extra_a", "extra_b"),
    [
        (None, ("lora-a",)),
        (("lora-a",), ("lora-b",)),
        (None, (("cache_salt", "s"),)),
        ((("cache_salt", "s1"),), (("cache_salt", "s2"),)),
    ],
    ids=["none-vs-lora", "lora-a-vs-b", "none-vs-salt", "salt1-vs-salt2"],
)
def test_extra_keys_change_hash(extra_a: tuple | None, extra_b: tuple | None) -> None:
    parent = none_hash()
    assert hash_block(parent, range(16), extra_a) != hash_block(parent, range(16), extra_b)


def test_cache_salt_applies_to_first_block_only_but_changes_the_chain() -> None:
    hasher = BlockHasher(4)
    tokens = list(range(12))
    plain = hasher.extend([], tokens)
    salted = hasher.extend([], tokens, extra_keys_first_block=(("cache_salt", "x"),))
    assert all(a != b for a, b in zip(plain, salted, strict=True))
    # Block 1 of the salted chain is hashed without keys, on the salted parent.
    assert salted[1] == hash_block(salted[0], tokens[4:8], None)
    assert salted[0] == hash_block(hasher.root, tokens[:4], (("cache_salt", "x"),))


def test_extra_keys_every_block_and_first_block_are_merged() -> None:
    hasher = BlockHasher(2)
    tokens = [1, 2, 3, 4]
    got = hasher.extend([], tokens, extra_keys_first_block=("salt",), extra_keys=("lora",))
    assert got[0] == hash_block(hasher.root, [1, 2], ("lora", "salt"))
    assert got[1] == hash_block(got[0], [3, 4], ("lora",))


@pytest.mark.parametrize(
    ("seed_a", "seed_b"),
    [(None, "0"), ("0", "1"), ("42", "43")],
    ids=["default-vs-0", "0-vs-1", "42-vs-43"],
)
def test_seed_changes_root_and_chain(seed_a: str | None, seed_b: str | None) -> None:
    a, b = BlockHasher(16, seed_a), BlockHasher(16, seed_b)
    assert a.root != b.root
    assert a.hash_all(list(range(16))) != b.hash_all(list(range(16)))
    assert BlockHasher(16, "42").root == sha256_cbor("42")


def test_block_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="block_size"):
        BlockHasher(0)


DIGEST = bytes.fromhex(BLOCK0_HEX)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (BLOCK0_INT, BLOCK0_INT),
        (0, 0),
        (MASK_64, MASK_64),
        (-1, MASK_64),
        (BLOCK1_INT - (1 << 64), BLOCK1_INT),  # the same hash published as a signed int64
        (DIGEST, BLOCK0_INT),  # raw 32-byte digest
        (bytearray(DIGEST), BLOCK0_INT),
        (DIGEST[-8:], BLOCK0_INT),  # only the low 8 bytes
        (b"\x00" * 7 + b"\x05", 5),
    ],
    ids=[
        "unsigned",
        "zero",
        "max",
        "signed-minus-one",
        "signed-int64",
        "raw-digest",
        "bytearray",
        "low-8-bytes",
        "short-bytes",
    ],
)
def test_normalize_event_hash(value: int | bytes, expected: int) -> None:
    assert normalize_event_hash(value) == expected


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=32, max_size=32))
def test_normalize_agrees_with_to_event_int(digest: bytes) -> None:
    n = to_event_int(digest)
    assert 0 <= n <= MASK_64
    assert normalize_event_hash(digest) == n
    signed = n - (1 << 64) if n >= 1 << 63 else n
    assert normalize_event_hash(signed) == n


@settings(max_examples=40, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 2**31 - 1), max_size=80),
    cuts=st.lists(st.integers(0, 80), max_size=6),
    block_size=st.sampled_from([1, 3, 4, 16]),
    salt=st.one_of(st.none(), st.just((("cache_salt", "s"),))),
)
def test_extend_incremental_equals_hash_all(
    tokens: list[int], cuts: list[int], block_size: int, salt: tuple | None
) -> None:
    hasher = BlockHasher(block_size)
    digests: list[bytes] = []
    for cut in sorted(c for c in cuts if c <= len(tokens)):
        hasher.extend(digests, tokens[:cut], extra_keys_first_block=salt)
    hasher.extend(digests, tokens, extra_keys_first_block=salt)
    assert digests == hasher.extend([], tokens, extra_keys_first_block=salt)
    if salt is None:
        assert digests == hasher.hash_all(tokens)
    assert len(digests) == len(tokens) // block_size
