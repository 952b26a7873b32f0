"""vLLM-compatible chained prefix-cache block hashing (`sha256_cbor`, vLLM 0.32).

Block i's digest is SHA-256 over canonical CBOR of the tuple
``(parent_digest, tuple(token_ids_of_block_i), extra_keys)`` where ``parent_digest``
is the previous block's full 32-byte digest, or NONE_HASH for the first block.
NONE_HASH is the hash of the string ``"vllm-none-hash"`` unless a seed (vLLM reads
``PYTHONHASHSEED``) is given, in which case it is the hash of that seed string.
Only full blocks are hashed. KV events carry the low 64 bits of the digest read
big-endian.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2

DEFAULT_NONE_HASH_SEED = "vllm-none-hash"
MASK_64 = (1 << 64) - 1

ExtraKeys = tuple[Any, ...] | None


def sha256_cbor(obj: object) -> bytes:
    """vLLM's `sha256_cbor`: SHA-256 of the canonical CBOR encoding of `obj`."""
    return hashlib.sha256(cbor2.dumps(obj, canonical=True)).digest()


def none_hash(seed: str | None = None) -> bytes:
    """The chain's root digest. `seed` mirrors vLLM's use of PYTHONHASHSEED."""
    return sha256_cbor(DEFAULT_NONE_HASH_SEED if seed is None else seed)


def hash_block(parent: bytes, token_ids: Sequence[int], extra_keys: ExtraKeys = None) -> bytes:
    """Digest of one full block chained on `parent`."""
    return sha256_cbor((parent, tuple(token_ids), extra_keys))


def to_event_int(digest: bytes) -> int:
    """The 64-bit integer vLLM 0.32 publishes in KV events for `digest`."""
    return int.from_bytes(digest, "big") & MASK_64


def normalize_event_hash(value: int | bytes) -> int:
    """Any published form (unsigned int, signed int, raw digest bytes) -> unsigned 64-bit."""
    if isinstance(value, bytes | bytearray):
        return int.from_bytes(value, "big") & MASK_64
    return value & MASK_64


class BlockHashMemo:
    """Remembers block digests by (parent digest, block tokens, extra keys).

    Prompts that share a prefix (a system prompt, the turns of a conversation) share
    their leading blocks' digests, so a gateway or simulator that hashes every prompt
    finds most of them here (a lookup, ~5x cheaper than SHA-256 over CBOR).

    Bounded, with a bounded cost per call: a table of a fixed number of slots (the
    largest power of two <= `max_entries`), allocated once, in pairs. A block goes to
    the slot its key hashes to; the block that was there moves to the other slot of
    the pair, and the one there is forgotten (two-way set-associative, newest first).
    A dict (an `OrderedDict` evicting its oldest) rebuilt its table as it grew and,
    once full, every ~100k insertions to clear the slots its evictions left: stalls of
    1-20 ms at 10k-87k entries, in the middle of a simulator step. Safe to share
    between threads in CPython: a slot holds one tuple, replaced whole (the counters
    may miss an increment).
    """

    __slots__ = ("_mask", "_num_entries", "_slots", "max_entries", "num_hits", "num_misses")

    def __init__(self, max_entries: int = 65536) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries: must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        num_slots = 1 << (max_entries.bit_length() - 1)
        self._mask = num_slots - 1
        # ((parent, token ids, extra keys), digest) per slot.
        self._slots: list[tuple[tuple[bytes, tuple[int, ...], ExtraKeys], bytes] | None] = [
            None
        ] * num_slots
        self._num_entries = 0
        self.num_hits = 0
        self.num_misses = 0

    def digest(self, parent: bytes, token_ids: tuple[int, ...], extra_keys: ExtraKeys) -> bytes:
        key = (parent, token_ids, extra_keys)
        slots = self._slots
        mask = self._mask
        i = hash(key) & mask
        entry = slots[i]
        if entry is not None and entry[0] == key:
            self.num_hits += 1
            return entry[1]
        j = (i ^ 1) & mask  # the pair's other slot (the same one in a 1-slot table)
        other = slots[j]
        if other is not None and other[0] == key:
            self.num_hits += 1
            return other[1]
        self.num_misses += 1
        digest = hash_block(parent, token_ids, extra_keys)
        if entry is None or other is None:
            self._num_entries += 1
        if entry is not None:
            slots[j] = entry
        slots[i] = (key, digest)
        return digest

    def __len__(self) -> int:
        return self._num_entries


@dataclass(frozen=True)
class BlockHasher:
    """Hashes token sequences block by block, chained, for one block size and seed.

    With a `memo`, digests of blocks seen before are looked up instead of recomputed.
    """

    block_size: int
    seed: str | None = None
    memo: BlockHashMemo | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size: must be >= 1, got {self.block_size}")

    @property
    def root(self) -> bytes:
        return none_hash(self.seed)

    def extend(
        self,
        digests: list[bytes],
        token_ids: Sequence[int],
        extra_keys_first_block: ExtraKeys = None,
        extra_keys: ExtraKeys = None,
        token_offset: int = 0,
    ) -> list[bytes]:
        """Append the digests of every newly full block of `token_ids` to `digests`.

        `digests` holds the hashes already computed for the first len(digests) blocks,
        so growing sequences are hashed incrementally. `extra_keys_first_block` applies
        to block 0 only (vLLM's cache salt); `extra_keys` to every block (LoRA).
        `token_offset`: `token_ids` starts at this token of the sequence (at most
        len(digests) * block_size), so a caller can pass only the unhashed tail.
        """
        bs = self.block_size
        if token_offset > len(digests) * bs:
            raise ValueError(
                f"token_offset: {token_offset} skips tokens of unhashed blocks "
                f"({len(digests)} blocks of {bs} hashed)"
            )
        num_full = (token_offset + len(token_ids)) // bs
        parent = digests[-1] if digests else self.root
        memo = self.memo
        for i in range(len(digests), num_full):
            keys = _merge_keys(extra_keys, extra_keys_first_block if i == 0 else None)
            start = i * bs - token_offset
            block = tuple(token_ids[start : start + bs])
            parent = (
                hash_block(parent, block, keys)
                if memo is None
                else memo.digest(parent, block, keys)
            )
            digests.append(parent)
        return digests

    def hash_all(self, token_ids: Sequence[int], extra_keys: ExtraKeys = None) -> list[bytes]:
        return self.extend([], token_ids, extra_keys=extra_keys)


def _merge_keys(every: ExtraKeys, first: ExtraKeys) -> ExtraKeys:
    if every is None and first is None:
        return None
    return (every or ()) + (first or ())
