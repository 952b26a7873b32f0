"""Per-request block bookkeeping on top of the block pool (vLLM's KVCacheManager).

Rules kept from vLLM v1:
* a prompt's last token is never served from cache: the longest hit is
  ``num_tokens - 1`` rounded down to whole blocks, so at least one token is computed
  and produces logits;
* blocks are allocated for the tokens a step will compute, not ahead;
* a request's blocks are freed tail-first, so the end of its prefix is evicted first.
"""

from __future__ import annotations

from dataclasses import dataclass

from headway.core.block_hash import BlockHasher
from headway.core.block_pool import BlockPool, PrefixHit
from headway.core.sequence import Sequence


@dataclass(frozen=True)
class ComputedPrefix:
    """Cached blocks a waiting request can reuse, and the tokens they cover."""

    hit: PrefixHit
    num_tokens: int


class KvCacheManager:
    """Allocates, caches and frees a sequence's KV blocks."""

    def __init__(self, pool: BlockPool, hasher: BlockHasher) -> None:
        self.pool = pool
        self.hasher = hasher
        self.block_size = pool.block_size

    def update_hashes(self, seq: Sequence) -> None:
        """Hash any newly full blocks of the sequence's tokens (prompt and output)."""
        bs = self.block_size
        num_full = seq.num_tokens // bs
        done = len(seq.block_hashes)
        if num_full <= done:
            return
        self.hasher.extend(
            seq.block_hashes,
            seq.tokens_between(done * bs, num_full * bs),
            extra_keys_first_block=seq.hash_keys_first_block,
            extra_keys=seq.hash_keys_every_block,
            token_offset=done * bs,
        )

    def computed_prefix(self, seq: Sequence) -> ComputedPrefix:
        """Longest cached prefix of a sequence that has computed nothing yet."""
        if not self.pool.enable_caching:
            return ComputedPrefix(PrefixHit(()), 0)
        max_blocks = (seq.num_tokens - 1) // self.block_size
        hit = self.pool.find_prefix(seq.block_hashes, max_blocks)
        return ComputedPrefix(hit, hit.num_blocks * self.block_size)

    def can_allocate(self, seq: Sequence, num_new_tokens: int, prefix: PrefixHit) -> bool:
        return self._num_blocks_needed(seq, num_new_tokens, prefix) <= self.pool.num_free

    def _num_blocks_needed(self, seq: Sequence, num_new_tokens: int, prefix: PrefixHit) -> int:
        bs = self.block_size
        total_tokens = seq.num_computed_tokens + prefix.num_blocks * bs + num_new_tokens
        blocks_for_total = -(-total_tokens // bs)
        new_blocks = max(0, blocks_for_total - len(seq.block_ids) - prefix.num_blocks)
        # Reused blocks that sit in the free queue stop being free once touched.
        return new_blocks + self.pool.num_evictable_in(prefix.block_ids)

    def allocate(self, seq: Sequence, num_new_tokens: int, prefix: PrefixHit) -> bool:
        """Reserve blocks for `num_new_tokens` more tokens (after reusing `prefix`).

        Returns False, changing nothing, if the pool has too few free blocks.
        """
        if not prefix.num_blocks and (
            seq.num_computed_tokens + num_new_tokens <= len(seq.block_ids) * self.block_size
        ):
            return True  # the common decode step: the last block still has room
        if not self.can_allocate(seq, num_new_tokens, prefix):
            return False
        if prefix.num_blocks:
            self.pool.touch(prefix.block_ids)
            seq.block_ids.extend(prefix.block_ids)
            seq.num_cached_blocks = len(seq.block_ids)
        bs = self.block_size
        total_tokens = seq.num_computed_tokens + prefix.num_blocks * bs + num_new_tokens
        blocks_for_total = -(-total_tokens // bs)
        missing = blocks_for_total - len(seq.block_ids)
        if missing > 0:
            seq.block_ids.extend(self.pool.allocate(missing))
        return True

    def cache_full_blocks(self, seq: Sequence, num_tokens: int | None = None) -> None:
        """Register the full blocks of the first `num_tokens` tokens (default: those
        computed) in the prefix cache. The scheduler passes the tokens a step will
        have computed once it ends, as vLLM's `allocate_slots` does: a request admitted
        later in the same step may then reuse blocks computed in that step."""
        if num_tokens is None:
            num_tokens = seq.num_computed_tokens
        num_full = min(num_tokens // self.block_size, len(seq.block_hashes))
        start = seq.num_cached_blocks
        if num_full <= start:
            return
        bs = self.block_size
        tokens = seq.tokens_between(start * bs, num_full * bs)
        parent = seq.block_hashes[start - 1] if start > 0 else None
        req = seq.request
        self.pool.cache_blocks(
            seq.block_ids[start:num_full],
            seq.block_hashes[start:num_full],
            tokens,
            parent,
            lora_id=req.lora_id,
            lora_name=req.lora_name,
            extra_keys=[seq.event_extra_keys(i) for i in range(start, num_full)],
        )
        seq.num_cached_blocks = num_full

    def free(self, seq: Sequence) -> int:
        """Release all of a sequence's blocks, tail first. Returns blocks made free."""
        freed = self.pool.free(reversed(seq.block_ids))
        seq.block_ids.clear()
        seq.num_cached_blocks = 0
        return freed
