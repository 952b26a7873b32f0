"""`KvBlockIndex`: which endpoint holds which KV blocks, per the engines' KV events.

Fed by the gateway's KV-event subscriber (`apply`), read by the `precise-prefix`
scorer and the `prefix-affinity-until-saturated` filter (`match_lengths`).

Invariants (checked by tests/routing/test_routing_kv_index.py with Hypothesis):

* The reverse map and the per-endpoint sets describe the same relation: endpoint `e`'s
  bit is set in `_holders[h]` exactly when `h` is in `_blocks[e]`; no zero mask and
  no empty set is kept, and an endpoint has a bit exactly while it holds blocks.
* With `max_blocks_per_endpoint` set, no endpoint ever holds more blocks than that.
  Past the bound the block stored longest ago (a re-store refreshes it) is dropped:
  the engine evicts in LRU order too, and the bound stops a lost `BlockRemoved`
  from leaking memory forever.
* `match_lengths` counts only the LEADING run of request blocks an endpoint holds
  (stops at the first miss): a prefix cache can only reuse a prefix.
* Staleness is a flag beside the contents: `mark_stale` never changes which blocks
  an endpoint holds, `clear_endpoint` never changes the flag. The subscriber marks
  an endpoint stale when it misses events it cannot replay, and clears it when the
  engine restarts (its sequence number goes backwards); plugins decide what stale
  means for them (`precise-prefix` falls back to its approximate index).

Events whose `medium` is not GPU are ignored (None counts as GPU): blocks offloaded
to CPU or disk are not a prefix-cache hit the engine can serve without a transfer.
Events of every KV-cache group update the same set: for hybrid models a hash counts
as held while any group's store of it has not been removed.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate, repeat, takewhile
from operator import and_

from headway.core.kv_events import (
    DEFAULT_MEDIUM,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
)


def _is_gpu(medium: str | None) -> bool:
    return medium is None or medium == DEFAULT_MEDIUM


def _lacks(bit: int) -> Callable[[int], bool]:
    """Key for bisecting a shrinking sequence of holder masks: False while `bit` is set."""
    return lambda mask: not mask & bit


class KvBlockIndex:
    """Which endpoint holds which KV blocks, per the engines' KV events.

    `max_blocks_per_endpoint` bounds each endpoint's set (None: unbounded); set it to
    at least the engine's `num_gpu_blocks` so that the bound only bites on leaks.

    Layout: each endpoint holding blocks owns one bit (recycled when it holds none);
    the reverse map stores, per block hash, the int bitmask of its holders. Small
    ints are shared objects in CPython, so a hash costs ~110 bytes plus ~105 per
    endpoint holding it, and a prefix match is one AND per request block.
    """

    __slots__ = ("_bit", "_blocks", "_free_bits", "_holders", "_stale", "max_blocks_per_endpoint")

    def __init__(self, max_blocks_per_endpoint: int | None = None) -> None:
        if max_blocks_per_endpoint is not None and max_blocks_per_endpoint < 1:
            raise ValueError(
                f"max_blocks_per_endpoint: must be >= 1 or None, got {max_blocks_per_endpoint}"
            )
        self.max_blocks_per_endpoint = max_blocks_per_endpoint
        # endpoint -> its block hashes, oldest store first (an OrderedDict used as an
        # ordered set: O(1) refresh and O(1) eviction of the oldest)
        self._blocks: dict[str, OrderedDict[int, None]] = {}
        self._bit: dict[str, int] = {}  # endpoint -> its bit (1 << k), while it holds blocks
        self._free_bits: list[int] = []  # bits of endpoints that hold nothing any more
        self._holders: dict[int, int] = {}  # block hash -> bitmask of endpoints holding it
        self._stale: set[str] = set()

    # -- updates -----------------------------------------------------------------------

    def apply(self, endpoint_id: str, batch: EventBatch) -> None:
        """Apply one batch of `endpoint_id`'s events, in order."""
        for ev in batch.events:
            if isinstance(ev, BlockStored):
                if _is_gpu(ev.medium):
                    self.store(endpoint_id, ev.block_hashes)
            elif isinstance(ev, BlockRemoved):
                if _is_gpu(ev.medium):
                    self.remove(endpoint_id, ev.block_hashes)
            elif isinstance(ev, AllBlocksCleared):
                self.clear_endpoint(endpoint_id)

    def store(self, endpoint_id: str, block_hashes: Iterable[int]) -> None:
        """`endpoint_id` now holds `block_hashes` (most recently stored last)."""
        blocks = self._blocks.get(endpoint_id)
        if blocks is None:
            blocks = OrderedDict()
            bit = self._free_bits.pop() if self._free_bits else 1 << len(self._bit)
        else:
            bit = self._bit[endpoint_id]
        holders = self._holders
        for h in block_hashes:
            if h in blocks:
                blocks.move_to_end(h)
                continue
            blocks[h] = None
            holders[h] = holders.get(h, 0) | bit
        if not blocks:  # stored nothing: do not take a bit
            if endpoint_id not in self._blocks:
                self._free_bits.append(bit)
            return
        self._blocks[endpoint_id] = blocks
        self._bit[endpoint_id] = bit
        bound = self.max_blocks_per_endpoint
        if bound is not None:
            while len(blocks) > bound:
                oldest, _ = blocks.popitem(last=False)
                self._drop_holder(oldest, bit)

    def remove(self, endpoint_id: str, block_hashes: Iterable[int]) -> None:
        """`endpoint_id` evicted `block_hashes`; unknown hashes are ignored."""
        blocks = self._blocks.get(endpoint_id)
        if blocks is None:
            return
        bit = self._bit[endpoint_id]
        for h in block_hashes:
            if h in blocks:
                del blocks[h]
                self._drop_holder(h, bit)
        if not blocks:
            self._release(endpoint_id)

    def clear_endpoint(self, endpoint_id: str) -> None:
        """Forget every block of `endpoint_id` (cache reset, engine restart, removal).

        Leaves the stale flag alone."""
        blocks = self._blocks.get(endpoint_id)
        if blocks is None:
            return
        bit = self._bit[endpoint_id]
        for h in blocks:
            self._drop_holder(h, bit)
        self._release(endpoint_id)

    def mark_stale(self, endpoint_id: str, is_stale: bool = True) -> None:
        """Flag (or unflag) `endpoint_id`'s contents as untrustworthy (missed events)."""
        if is_stale:
            self._stale.add(endpoint_id)
        else:
            self._stale.discard(endpoint_id)

    def _drop_holder(self, block_hash: int, bit: int) -> None:
        mask = self._holders[block_hash] & ~bit
        if mask:
            self._holders[block_hash] = mask
        else:
            del self._holders[block_hash]

    def _release(self, endpoint_id: str) -> None:
        del self._blocks[endpoint_id]
        self._free_bits.append(self._bit.pop(endpoint_id))

    # -- queries -----------------------------------------------------------------------

    def is_stale(self, endpoint_id: str) -> bool:
        return endpoint_id in self._stale

    def match_lengths(
        self, block_hashes: Sequence[int], endpoint_ids: Iterable[str]
    ) -> dict[str, int]:
        """For each endpoint, how many LEADING blocks of `block_hashes` it holds.

        Stale endpoints are answered from what the index holds; callers check
        `is_stale`. Cost: one dict lookup and one AND per request block up to the
        longest match (run in C by `map`/`accumulate`/`takewhile`), then a binary
        search per endpoint.
        """
        lengths = dict.fromkeys(endpoint_ids, 0)
        bits = self._bit
        candidates = [(e, bits[e]) for e in lengths if e in bits]
        alive = 0
        for _, bit in candidates:
            alive |= bit
        if not alive or not block_hashes:
            return lengths
        # held[k] = the candidates holding all of the first k request blocks; the
        # sequence only loses bits, and stops before the first empty set.
        masks = map(self._holders.get, block_hashes, repeat(0, len(block_hashes)))
        held = list(takewhile(bool, accumulate(masks, and_, initial=alive)))
        for e, bit in candidates:
            # first k whose set lacks `bit`; e holds k - 1 leading blocks
            lengths[e] = bisect_left(held, True, key=_lacks(bit)) - 1
        return lengths

    def blocks_of(self, endpoint_id: str) -> frozenset[int]:
        """Every block `endpoint_id` holds (a copy: O(blocks))."""
        return frozenset(self._blocks.get(endpoint_id, ()))

    def num_blocks(self, endpoint_id: str) -> int:
        blocks = self._blocks.get(endpoint_id)
        return 0 if blocks is None else len(blocks)

    def holders_of(self, block_hash: int) -> frozenset[str]:
        """The endpoints holding `block_hash`."""
        mask = self._holders.get(block_hash, 0)
        return frozenset(e for e, bit in self._bit.items() if bit & mask)

    def endpoint_ids(self) -> frozenset[str]:
        """Endpoints holding at least one block."""
        return frozenset(self._blocks)

    def num_hashes(self) -> int:
        """Distinct block hashes held by any endpoint."""
        return len(self._holders)
