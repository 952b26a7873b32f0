"""What runs in the next engine step (vLLM v1's scheduler, FCFS policy).

Per step, under a token budget of `max_num_batched_tokens`:
1. running sequences first, in order: each gets the tokens it still needs (one for a
   decode, a chunk for an unfinished prefill). If its blocks cannot be allocated, the
   most recently admitted running sequence is preempted (blocks freed, recompute
   later) until it fits, or the sequence itself is the one preempted;
2. then waiting sequences, first come first served, while fewer than `max_num_seqs`
   run and budget and blocks remain: the cached prefix is reused, the rest of the
   prompt (or a chunk of it, with chunked prefill) is scheduled.

Invariants: the tokens scheduled in a step never exceed the budget; at most
`max_num_seqs` sequences run; a sequence is in exactly one of waiting/running.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from headway.core.block_pool import PrefixHit
from headway.core.kv_cache_manager import KvCacheManager
from headway.core.sequence import SeqStatus, Sequence

_NO_PREFIX = PrefixHit(())


@dataclass(frozen=True)
class SchedulerConfig:
    """Batching limits, named as vLLM's engine flags."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0  # 0 = no cap per request per step

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs: must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(
                f"max_num_batched_tokens: must be >= 1, got {self.max_num_batched_tokens}"
            )


_GIB = 1024**3


def vllm_default_limits(device_memory_bytes: float) -> tuple[int, int]:
    """vLLM 0.32's API-server defaults by GPU memory (`EngineArgs.get_batch_defaults`):
    (max_num_batched_tokens, max_num_seqs)."""
    if device_memory_bytes >= 160 * _GIB:
        return 16384, 1024
    if device_memory_bytes >= 70 * _GIB:
        return 8192, 1024
    return 2048, 256


class ScheduledSeq(NamedTuple):
    """A sequence's share of a step (a named tuple: one is built per sequence per step)."""

    seq: Sequence
    num_new_tokens: int
    num_context_tokens: int  # tokens already in its KV cache before this step


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    admitted: list[Sequence] = field(default_factory=list)  # moved from waiting to running
    num_prefix_query_tokens: int = 0
    num_prefix_hit_tokens: int = 0

    @property
    def num_scheduled_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


class Scheduler:
    """FCFS continuous-batching scheduler with chunked prefill and recompute preemption."""

    def __init__(self, config: SchedulerConfig, kv: KvCacheManager) -> None:
        self.config = config
        self.kv = kv
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        seq.status = SeqStatus.WAITING
        self.waiting.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Drop a sequence from whichever queue holds it (abort, finish)."""
        if seq.status == SeqStatus.RUNNING:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def _chunk(self, num_tokens: int, budget: int) -> int:
        cap = self.config.long_prefill_token_threshold
        if cap > 0:
            num_tokens = min(num_tokens, cap)
        return min(num_tokens, budget)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        scheduled_running: list[Sequence] = []

        # 1. Running sequences.
        bs = self.kv.block_size
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            remaining = seq.num_tokens - seq.num_computed_tokens
            # A decode (one token) needs no chunking: budget > 0 here.
            num_new = 1 if remaining == 1 else self._chunk(remaining, budget)
            if num_new <= 0:
                i += 1
                continue
            allocated = True
            # The common decode step fits the last block: no allocation to attempt.
            fits = seq.num_computed_tokens + num_new <= len(seq.block_ids) * bs
            while not fits and not self.kv.allocate(seq, num_new, _NO_PREFIX):
                victim = self.running.pop()  # most recently admitted
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is seq:
                    allocated = False
                    break
            if not allocated:
                break
            # Inline check: this runs for every running sequence of every step.
            if (seq.num_computed_tokens + num_new) // bs > seq.num_cached_blocks:
                self._cache_scheduled(seq, seq.num_computed_tokens + num_new)
            scheduled_running.append(seq)
            out.scheduled.append(ScheduledSeq(seq, num_new, seq.num_computed_tokens))
            budget -= num_new
            i += 1

        # 2. Waiting sequences (none are admitted in a step that had to preempt).
        if not out.preempted:
            while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
                seq = self.waiting[0]
                prefix = self.kv.computed_prefix(seq)
                # KV computed elsewhere (P/D) is loaded, not computed: it needs blocks
                # but no step tokens. A recompute after preemption has none left.
                start = prefix.num_tokens
                if seq.num_preemptions == 0:
                    start = max(start, self._external_tokens(seq))
                num_new = seq.num_tokens - start
                if not self.config.enable_chunked_prefill and num_new > budget:
                    break
                num_new = self._chunk(num_new, budget)
                if not self.kv.allocate(seq, start - prefix.num_tokens + num_new, prefix.hit):
                    break
                self.waiting.popleft()
                seq.status = SeqStatus.RUNNING
                seq.num_computed_tokens = start
                if seq.num_cached_tokens < 0:
                    seq.num_cached_tokens = prefix.num_tokens
                out.num_prefix_query_tokens += seq.num_tokens
                out.num_prefix_hit_tokens += prefix.num_tokens
                self._cache_scheduled(seq, start + num_new)
                self.running.append(seq)
                out.admitted.append(seq)
                out.scheduled.append(ScheduledSeq(seq, num_new, start))
                budget -= num_new
        return out

    def _cache_scheduled(self, seq: Sequence, num_tokens_after_step: int) -> None:
        """Cache the blocks this step fills, at scheduling time (vLLM's
        `allocate_slots`), so that a request admitted after `seq` in the same step can
        reuse them; the step computes them before it ends."""
        bs = self.kv.block_size
        if min(num_tokens_after_step // bs, len(seq.block_hashes)) > seq.num_cached_blocks:
            self.kv.cache_full_blocks(seq, min(num_tokens_after_step, seq.num_tokens))

    def _external_tokens(self, seq: Sequence) -> int:
        """Prompt tokens whose KV another engine computed: whole blocks, and never the
        last token (it is computed here to produce logits, as with a cache hit)."""
        n = seq.request.num_external_computed_tokens
        if n <= 0:
            return 0
        bs = self.kv.block_size
        return min(n, seq.num_tokens - 1) // bs * bs

    def _preempt(self, seq: Sequence) -> None:
        self.kv.free(seq)
        seq.status = SeqStatus.PREEMPTED
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.waiting.appendleft(seq)
        seq.status = SeqStatus.WAITING
