"""Paged KV block pool with prefix caching, in vLLM v1's shape.

Invariants (checked by `check_invariants`, exercised by Hypothesis tests):

* conservation: every block is either free (ref_cnt == 0, in the free queue) or in
  use (ref_cnt > 0, not in the queue): num_free + num_in_use == num_blocks;
* a cached hash maps only to blocks that still carry that hash: a lookup never
  returns a block that was evicted and reused;
* eviction order is LRU over free blocks: blocks freed earlier go first; a request's
  blocks are freed tail-first so the end of a prefix is evicted before its start.

Every change to the set of cached hashes is reported as a KV event
(BlockStored / BlockRemoved / AllBlocksCleared), drained by the engine each step.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

from headway.core.block_hash import to_event_int
from headway.core.kv_events import (
    FULL_ATTENTION,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KvEvent,
)


class OutOfBlocksError(RuntimeError):
    """Raised when more blocks are requested than are free; check `num_free` first."""


@dataclass(frozen=True)
class PrefixHit:
    """The longest cached prefix of a block-hash chain: block ids in chain order."""

    block_ids: tuple[int, ...]

    @property
    def num_blocks(self) -> int:
        return len(self.block_ids)


class BlockPool:
    """Fixed-size pool of KV blocks with a hash -> block prefix cache and LRU eviction."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_caching: bool = True,
        medium: str = "GPU",
    ) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks: must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size: must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.medium = medium
        self._ref_cnt = [0] * num_blocks
        self._hash: list[bytes | None] = [None] * num_blocks
        # The free queue, LRU first: a doubly linked list over block ids in two arrays
        # (index `num_blocks` is the sentinel), as vLLM's FreeKVCacheBlockQueue. An
        # `OrderedDict` rebuilt its table every ~110k frees to clear the slots its
        # allocations left: a 3.5-5 ms stall for a pool of 60k blocks.
        end = num_blocks
        self._next = [*range(1, num_blocks + 1), 0]
        self._prev = [end, *range(num_blocks)]
        self._num_free = num_blocks
        # One hash may live in several blocks (two identical prompts computed at once).
        self._cached: dict[bytes, dict[int, None]] = {}
        self._events: list[KvEvent] = []
        self.num_evicted_blocks = 0

    # -- queries ----------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return self._num_free

    @property
    def num_in_use(self) -> int:
        return self.num_blocks - self._num_free

    @property
    def usage(self) -> float:
        """Fraction of blocks in use (vLLM's `kv_cache_usage_perc`, 0..1)."""
        return self.num_in_use / self.num_blocks

    def free_queue(self) -> list[int]:
        """The free blocks in eviction order (least recently freed first)."""
        return list(self._free_order())

    @property
    def _free(self) -> list[int]:
        # What tests that compare two engines' pools read (the queue was an OrderedDict).
        return self.free_queue()

    def ref_count(self, block_id: int) -> int:
        return self._ref_cnt[block_id]

    def block_hash(self, block_id: int) -> bytes | None:
        return self._hash[block_id]

    def cached_hashes(self) -> list[bytes]:
        """Every hash currently in the cache (in use or free-but-cached)."""
        return list(self._cached)

    def find_prefix(self, block_hashes: Sequence[bytes], max_blocks: int) -> PrefixHit:
        """Longest run of `block_hashes[:max_blocks]` present in the cache."""
        hit: list[int] = []
        if not self.enable_caching:
            return PrefixHit(())
        for h in block_hashes[:max_blocks]:
            blocks = self._cached.get(h)
            if not blocks:
                break
            hit.append(next(iter(blocks)))
        return PrefixHit(tuple(hit))

    def can_allocate_silently(self, num_blocks: int) -> bool:
        """Whether the next `num_blocks` allocations find free blocks that cache
        nothing (so none is evicted and no KV event is emitted)."""
        if num_blocks > self._num_free:
            return False
        hashes = self._hash
        return all(hashes[b] is None for b in islice(self._free_order(), num_blocks))

    def num_evictable_in(self, block_ids: Iterable[int]) -> int:
        """How many of `block_ids` sit in the free queue (touching them uses up free space)."""
        return sum(1 for b in block_ids if self._ref_cnt[b] == 0)

    # -- mutations --------------------------------------------------------------
    def touch(self, block_ids: Iterable[int]) -> None:
        """Take a reference on cached blocks being reused by a request."""
        for b in block_ids:
            if self._ref_cnt[b] == 0:
                self._unlink(b)
            self._ref_cnt[b] += 1

    def allocate(self, num_blocks: int) -> list[int]:
        """Take `num_blocks` free blocks, evicting the least recently freed cached ones."""
        if num_blocks > self._num_free:
            raise OutOfBlocksError(f"asked for {num_blocks} blocks, {self._num_free} free")
        out: list[int] = []
        nxt = self._next
        for _ in range(num_blocks):
            b = nxt[self.num_blocks]
            self._unlink(b)
            self._evict(b)
            self._ref_cnt[b] = 1
            out.append(b)
        return out

    def free(self, block_ids: Iterable[int]) -> int:
        """Drop one reference on each block, in the given order (first freed = first
        evicted). Returns how many blocks became free."""
        freed = 0
        for b in block_ids:
            rc = self._ref_cnt[b] - 1
            if rc < 0:
                raise RuntimeError(f"block {b} freed more often than allocated")
            self._ref_cnt[b] = rc
            if rc == 0:
                self._append(b)
                freed += 1
        return freed

    def cache_blocks(
        self,
        block_ids: Sequence[int],
        block_hashes: Sequence[bytes],
        token_ids: Sequence[int],
        parent_hash: bytes | None,
        lora_id: int | None = None,
        lora_name: str | None = None,
        extra_keys: Sequence[tuple[object, ...] | None] | None = None,
    ) -> None:
        """Mark newly full blocks as cached under their hashes and report them.

        `token_ids` are the tokens of exactly these blocks, concatenated; `extra_keys`
        holds each block's keys in the untagged form events carry (None: no keys).
        """
        if not self.enable_caching or not block_ids:
            return
        for b, h in zip(block_ids, block_hashes, strict=True):
            self._hash[b] = h
            self._cached.setdefault(h, {})[b] = None
        self._events.append(
            BlockStored(
                block_hashes=tuple(to_event_int(h) for h in block_hashes),
                parent_block_hash=to_event_int(parent_hash) if parent_hash is not None else None,
                token_ids=tuple(token_ids),
                block_size=self.block_size,
                lora_id=lora_id,
                medium=self.medium,
                lora_name=lora_name,
                extra_keys=tuple(extra_keys)
                if extra_keys is not None
                else (None,) * len(block_ids),
                group_idx=0,
                kv_cache_spec_kind=FULL_ATTENTION,
            )
        )

    def reset_prefix_cache(self) -> bool:
        """Forget every cached hash; only allowed when no block is in use (as vLLM)."""
        if self.num_in_use:
            return False
        for b in range(self.num_blocks):
            self._hash[b] = None
        self._cached.clear()
        if self.enable_caching:
            self._events.append(AllBlocksCleared())
        return True

    def drain_events(self) -> list[KvEvent]:
        events, self._events = self._events, []
        return events

    def _unlink(self, b: int) -> None:
        """Take free block `b` out of the free queue."""
        nxt, prev = self._next, self._prev
        n, p = nxt[b], prev[b]
        nxt[p] = n
        prev[n] = p
        self._num_free -= 1

    def _append(self, b: int) -> None:
        """Put block `b` at the free queue's end (evicted last)."""
        nxt, prev = self._next, self._prev
        end = self.num_blocks
        last = prev[end]
        nxt[last] = b
        prev[b] = last
        nxt[b] = end
        prev[end] = b
        self._num_free += 1

    def _free_order(self) -> Iterator[int]:
        """The free blocks, first to be evicted first."""
        nxt, end = self._next, self.num_blocks
        b = nxt[end]
        while b != end:
            yield b
            b = nxt[b]

    def _evict(self, b: int) -> None:
        h = self._hash[b]
        if h is None:
            return
        self._hash[b] = None
        holders = self._cached.get(h)
        if holders is not None:
            holders.pop(b, None)
            if not holders:
                del self._cached[h]
        self.num_evicted_blocks += 1
        self._events.append(BlockRemoved((to_event_int(h),), medium=self.medium, group_idx=0))

    def check_invariants(self) -> None:
        """Raise AssertionError if the pool's accounting is inconsistent."""
        in_use = sum(1 for rc in self._ref_cnt if rc > 0)
        free = list(islice(self._free_order(), self.num_blocks + 1))  # a cycle: too many
        assert len(free) == self._num_free, "free count != free queue length"
        assert in_use + len(free) == self.num_blocks, "free + in use != total"
        for b in free:
            assert self._ref_cnt[b] == 0, f"free block {b} has references"
        for h, blocks in self._cached.items():
            for b in blocks:
                assert self._hash[b] == h, f"cache maps {h.hex()[:8]} to block {b} without it"
