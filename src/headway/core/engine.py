"""One inference engine as a pure, clock-free state machine.

`step()` = schedule -> cost -> advance. It returns everything that happened (tokens
produced, sequences finished or preempted, KV events, prefix-cache counters) and the
step's duration in model seconds; the caller owns time (the simulator maps model time
to the wall clock; the cluster simulation to a virtual clock).

Invariants: every added request ends FINISHED (stop, length) or is aborted; a
finished or aborted request holds no blocks; KV use never exceeds capacity; a step
never schedules more than `max_num_batched_tokens` tokens or `max_num_seqs` sequences.

Decode jumps (the cluster simulation's fast path; the live simulator never uses them):
`plan_decode_jump(k)` looks ahead from the current state for a run of *plain decode
steps*: every running sequence decodes one token per step, nothing waits, and no step
but the run's last can change what the outside world sees (a finish, a KV event, a
preemption or an admission; a step may allocate a block if the block it takes from
the free queue caches nothing, so that nothing is evicted). It returns each step's
cost without changing anything; `decode_jump(m)` then takes the first m planned steps
at once. Taking m <= k planned steps leaves the engine exactly as m calls of `step()`
would (tokens, block ids, hashes, cached blocks, KV events, counters, outputs with the
m tokens of each sequence), which tests/core/test_core_engine_jump.py checks against
single steps. Any other call (`step`, `add_request`, an abort...) drops the plan.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import NamedTuple

from headway.core.block_hash import BlockHasher, BlockHashMemo
from headway.core.block_pool import BlockPool, PrefixHit
from headway.core.costmodel import SeqWork, StepCost
from headway.core.kv_cache_manager import KvCacheManager
from headway.core.kv_events import KvEvent
from headway.core.sampler import DeterministicSampler
from headway.core.scheduler import Scheduler, SchedulerConfig
from headway.core.sequence import EngineRequest, FinishReason, SeqStatus, Sequence

StepCostFn = Callable[[Seq[SeqWork]], StepCost]

_NO_PREFIX = PrefixHit(())


class RequestError(ValueError):
    """A request the engine cannot take (duplicate id, prompt too long, bad limits)."""


@dataclass(frozen=True)
class EngineConfig:
    """Engine limits and cache geometry, named as vLLM's flags."""

    num_gpu_blocks: int
    block_size: int = 16
    max_model_len: int = 131072
    enable_prefix_caching: bool = True
    hash_seed: str | None = None
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


class TokenOutput(NamedTuple):
    """Tokens a sequence produced in one step, and whether it finished (a named tuple:
    one is built per sequence per step)."""

    request_id: str
    new_token_ids: tuple[int, ...]
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
    finish_reason: FinishReason | None


@dataclass(frozen=True)
class StepResult:
    """What one step did; `duration_s` is model time.

    A decode jump's result covers `num_steps` steps: each output carries one token per
    step, `step_durations_s` lists the steps' durations in order and `duration_s` is
    their sum added left to right; `cost` is the last step's.
    """

    duration_s: float
    cost: StepCost
    outputs: tuple[TokenOutput, ...]
    preempted_ids: tuple[str, ...]
    admitted_ids: tuple[str, ...]  # started (or, after preemption, restarted) running
    events: tuple[KvEvent, ...]
    num_prefill_tokens: int
    num_decode_tokens: int
    num_prefix_query_tokens: int
    num_prefix_hit_tokens: int
    step_durations_s: tuple[float, ...] = ()  # a decode jump's steps (empty: one step)

    @property
    def is_idle(self) -> bool:
        return not self.outputs and self.cost.num_tokens == 0

    @property
    def num_steps(self) -> int:
        return len(self.step_durations_s) or 1

    @property
    def is_silent(self) -> bool:
        """Nothing finished, nothing was preempted and no KV event was emitted: what
        the step did is visible only in its tokens (a decode jump may follow it)."""
        return (
            not self.events
            and not self.preempted_ids
            and all(o.finish_reason is None for o in self.outputs)
        )


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """What `add_request` computes for a request before it queues it (its prompt's
    block hashes and its sampling key), computed ahead by `prepare_request`: the
    simulator does it in a gap between step ends instead of inside a step."""

    request: EngineRequest
    block_hashes: tuple[bytes, ...]
    sample_key: int


@dataclass(frozen=True)
class AbortResult:
    """A removed request: whether it existed and how many blocks became free at once."""

    found: bool
    num_freed_blocks: int


@dataclass
class EngineCounters:
    """Monotonic totals since start (vLLM's counters)."""

    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    num_prefix_query_tokens: int = 0
    num_prefix_hit_tokens: int = 0
    num_preemptions: int = 0
    num_finished: int = 0
    num_aborted: int = 0
    num_aborted_freed_blocks: int = 0
    num_steps: int = 0


class Engine:
    """Continuous-batching engine over a paged prefix cache."""

    def __init__(
        self,
        config: EngineConfig,
        step_cost: StepCostFn,
        sampler: DeterministicSampler,
        hash_memo: BlockHashMemo | None = None,
    ) -> None:
        """`hash_memo`: block digests shared with other engines of the same block size
        and hash seed (a simulated fleet hashes each shared prefix once)."""
        self.config = config
        self._step_cost = step_cost
        self.sampler = sampler
        self.pool = BlockPool(
            config.num_gpu_blocks, config.block_size, config.enable_prefix_caching
        )
        self.kv = KvCacheManager(
            self.pool, BlockHasher(config.block_size, config.hash_seed, memo=hash_memo)
        )
        self.scheduler = Scheduler(config.scheduler, self.kv)
        self.counters = EngineCounters()
        self._seqs: dict[str, Sequence] = {}
        self._natural_len: dict[str, int] = {}
        self._arrivals = 0
        # The planned decode jump: its steps' costs and how many have been taken.
        self._jump_costs: tuple[StepCost, ...] = ()
        self._jump_done = 0
        # (step, index in the batch) of each block allocation in the plan, in order.
        self._jump_allocs: list[tuple[int, int]] = []
        # `step()` takes the decode fast path when it can (tests turn it off to
        # compare it with the general path).
        self.use_decode_fast_path = True

    # -- queries ----------------------------------------------------------------
    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def has_work(self) -> bool:
        return bool(self._seqs)

    @property
    def kv_usage(self) -> float:
        return self.pool.usage

    def sequence(self, request_id: str) -> Sequence | None:
        return self._seqs.get(request_id)

    # -- requests ---------------------------------------------------------------
    def check_request(self, request: EngineRequest) -> None:
        """Raise `RequestError` if the engine could never serve `request` (a replica
        checks a request when it arrives, before it joins a step)."""
        rid = request.request_id
        if rid in self._seqs:
            raise RequestError(f"request_id: {rid!r} is already in the engine")
        n = len(request.prompt_token_ids)
        if n == 0:
            raise RequestError("prompt: must contain at least one token")
        if request.max_tokens < 1:
            raise RequestError(f"max_tokens: must be >= 1, got {request.max_tokens}")
        if n + request.max_tokens > self.config.max_model_len:
            raise RequestError(
                f"prompt ({n} tokens) plus max_tokens ({request.max_tokens}) exceeds the "
                f"model's context length of {self.config.max_model_len} tokens"
            )
        bs = self.config.block_size
        # Recompute preemption only makes progress if each request fits the pool (and,
        # without chunked prefill, one step) on its own: vLLM guarantees this by checking
        # max_model_len against both at start-up; here each request is checked.
        total = n + request.max_tokens
        if -(-total // bs) > self.config.num_gpu_blocks:
            raise RequestError(
                f"prompt ({n} tokens) plus max_tokens ({request.max_tokens}) needs more KV "
                f"blocks than the engine has ({self.config.num_gpu_blocks} blocks of {bs} tokens)"
            )
        sched = self.config.scheduler
        if not sched.enable_chunked_prefill and total - 1 > sched.max_num_batched_tokens:
            raise RequestError(
                f"prompt ({n} tokens) plus max_tokens ({request.max_tokens}) exceeds "
                f"max_num_batched_tokens ({sched.max_num_batched_tokens}) and chunked "
                f"prefill is disabled"
            )

    def prepare_request(self, request: EngineRequest) -> PreparedRequest:
        """The hashing `add_request(request)` would do, done now (it changes nothing:
        the prompt's block hashes and the sampling key depend only on the request and
        the engine's configuration); pass the result to `add_request`."""
        seq = Sequence(request, -1)
        if request.prompt_block_hashes is not None:
            seq.block_hashes = list(request.prompt_block_hashes)
        self.kv.update_hashes(seq)
        return PreparedRequest(
            request, tuple(seq.block_hashes), self.sampler.key_for(request.prompt_token_ids)
        )

    def add_request(self, request: EngineRequest, prepared: PreparedRequest | None = None) -> None:
        """Queue `request` (the next `step` may schedule it); raises `RequestError`
        as `check_request` does. `prepared`: `prepare_request(request)`'s result, if
        it was prepared ahead (the same sequence results either way)."""
        self.check_request(request)
        self._jump_costs = ()
        seq = Sequence(request, self._arrivals)
        self._arrivals += 1
        if prepared is not None and prepared.request is request:
            seq.sample_key = prepared.sample_key
            seq.block_hashes = list(prepared.block_hashes)
        else:
            seq.sample_key = self.sampler.key_for(request.prompt_token_ids)
            if request.prompt_block_hashes is not None:
                seq.block_hashes = list(request.prompt_block_hashes)
            self.kv.update_hashes(seq)
        self._seqs[request.request_id] = seq
        if not request.ignore_eos:
            self._natural_len[request.request_id] = self.sampler.natural_length(seq.sample_key)
        self.scheduler.add(seq)

    def abort_request(self, request_id: str) -> AbortResult:
        """Remove a request at once and free its blocks (client disconnect)."""
        seq = self._seqs.get(request_id)
        if seq is None:
            return AbortResult(False, 0)
        self._jump_costs = ()
        freed = self._finish(seq, FinishReason.ABORT)
        self.counters.num_aborted += 1
        self.counters.num_aborted_freed_blocks += freed
        return AbortResult(True, freed)

    def finish_request(self, request_id: str, reason: FinishReason) -> bool:
        """End a request early for a reason seen outside the engine (a stop string)."""
        seq = self._seqs.get(request_id)
        if seq is None:
            return False
        self._jump_costs = ()
        self._finish(seq, reason)
        self.counters.num_finished += 1
        return True

    def reset_prefix_cache(self) -> bool:
        self._jump_costs = ()
        return self.pool.reset_prefix_cache()

    def drain_events(self) -> list[KvEvent]:
        """KV events not yet returned by a step (e.g. after `reset_prefix_cache`)."""
        return self.pool.drain_events()

    # -- the step ---------------------------------------------------------------
    def step(self) -> StepResult:
        self._jump_costs = ()
        if self.use_decode_fast_path:
            result = self._decode_step()
            if result is not None:
                return result
        sched = self.scheduler.schedule()
        work = [SeqWork(s.num_new_tokens, s.num_context_tokens) for s in sched.scheduled]
        cost = self._step_cost(work)
        outputs: list[TokenOutput] = []
        num_prefill = num_decode = 0
        kv = self.kv
        bs = self.config.block_size
        counters = self.counters
        # The per-token path runs for every sequence of every step (here and in the
        # cluster simulation): the cheap "nothing to hash / cache yet" checks are done
        # inline before calling into the KV manager.
        for s in sched.scheduled:
            seq = s.seq
            num_new = s.num_new_tokens
            # A step that ends exactly at the last known token samples a new one.
            if num_new == 1 and s.num_context_tokens >= seq.num_prompt_tokens:
                num_decode += 1
            else:
                num_prefill += num_new
            num_computed = seq.num_computed_tokens = seq.num_computed_tokens + num_new
            if num_computed < seq.num_tokens:
                kv.cache_full_blocks(seq)
                continue
            token = self._sample(seq)
            seq.append_output(token)
            counters.num_generation_tokens += 1
            if seq.num_tokens // bs > len(seq.block_hashes):
                kv.update_hashes(seq)
            if min(num_computed // bs, len(seq.block_hashes)) > seq.num_cached_blocks:
                kv.cache_full_blocks(seq)
            reason = self._stop_reason(seq, token)
            num_output = len(seq.output_token_ids)
            if num_output == 1:
                counters.num_prompt_tokens += seq.num_prompt_tokens
            cached = seq.num_cached_tokens
            outputs.append(
                TokenOutput(
                    seq.request.request_id,
                    (token,),
                    seq.num_prompt_tokens,
                    num_output,
                    cached if cached > 0 else 0,
                    reason,
                )
            )
            if reason is not None:
                self._finish(seq, reason)
                counters.num_finished += 1
        self.counters.num_preemptions += len(sched.preempted)
        self.counters.num_prefix_query_tokens += sched.num_prefix_query_tokens
        self.counters.num_prefix_hit_tokens += sched.num_prefix_hit_tokens
        self.counters.num_steps += 1
        return StepResult(
            duration_s=cost.duration_s,
            cost=cost,
            outputs=tuple(outputs),
            preempted_ids=tuple(s.request_id for s in sched.preempted),
            admitted_ids=tuple(s.request_id for s in sched.admitted),
            events=tuple(self.pool.drain_events()),
            num_prefill_tokens=num_prefill,
            num_decode_tokens=num_decode,
            num_prefix_query_tokens=sched.num_prefix_query_tokens,
            num_prefix_hit_tokens=sched.num_prefix_hit_tokens,
        )

    def _decode_step(self) -> StepResult | None:
        """`step()` for the common step of a busy engine, or None (changing nothing)
        when it is not one: nothing waits, every running sequence has exactly one
        token left to compute and is scheduled, and the blocks it needs are free (no
        preemption). What it does, in what order, is what the scheduler and `step()`
        do for such a step (allocation and scheduled caching in batch order first,
        then sampling, hashing, caching and finishing in batch order), without the
        per-sequence scheduling objects; tests/core/test_core_engine_decode_path.py
        checks it against the general path."""
        sched = self.scheduler
        running = sched.running
        if sched.waiting or not running or len(running) > sched.config.max_num_batched_tokens:
            return None
        bs = self.config.block_size
        # Sequences with a block to allocate or a block to cache at scheduling time:
        # rare (a block boundary), done in batch order before anything else.
        edges: list[Sequence] = []
        num_allocs = 0
        for seq in running:
            c = seq.num_computed_tokens
            if seq.num_tokens - c != 1:
                return None
            if c >= len(seq.block_ids) * bs:
                num_allocs += 1
                edges.append(seq)
            elif (c + 1) // bs > seq.num_cached_blocks:
                edges.append(seq)
        # One block each: with this many free, every allocation succeeds as the
        # scheduler's would, so nothing is preempted.
        if num_allocs > self.pool.num_free:
            return None
        kv = self.kv
        for seq in edges:
            c = seq.num_computed_tokens
            if c >= len(seq.block_ids) * bs:
                kv.allocate(seq, 1, _NO_PREFIX)
            if (c + 1) // bs > seq.num_cached_blocks:
                sched._cache_scheduled(seq, c + 1)
        cost = self._step_cost([SeqWork(1, seq.num_computed_tokens) for seq in running])
        counters = self.counters
        sampler = self.sampler
        eos = sampler.eos_token_id
        token_at = sampler.token_at
        natural_len = self._natural_len
        max_model_len = self.config.max_model_len
        outputs: list[TokenOutput] = []
        finished: list[tuple[Sequence, FinishReason]] = []
        num_prefill = num_decode = 0
        for seq in running:
            req = seq.request
            num_prompt = seq.num_prompt_tokens
            c = seq.num_computed_tokens
            if c >= num_prompt:
                num_decode += 1
            else:  # the last token of a chunked prefill
                num_prefill += 1
            num_computed = seq.num_computed_tokens = c + 1
            out_ids = seq.output_token_ids
            pos = len(out_ids)
            # `_sample`, then `_stop_reason`, inline.
            rid = req.request_id
            natural = None if req.ignore_eos else natural_len.get(rid)
            token = (
                eos if natural is not None and pos + 1 >= natural else token_at(seq.sample_key, pos)
            )
            out_ids.append(token)
            num_tokens = seq.num_tokens = seq.num_tokens + 1
            if num_tokens // bs > len(seq.block_hashes):
                kv.update_hashes(seq)
            if min(num_computed // bs, len(seq.block_hashes)) > seq.num_cached_blocks:
                kv.cache_full_blocks(seq)
            num_output = pos + 1
            reason: FinishReason | None = None
            if (not req.ignore_eos and token == eos) or token in req.stop_token_ids:
                reason = FinishReason.STOP
            elif num_output >= req.max_tokens or num_tokens >= max_model_len:
                reason = FinishReason.LENGTH
            if num_output == 1:
                counters.num_prompt_tokens += num_prompt
            cached = seq.num_cached_tokens
            outputs.append(
                TokenOutput(
                    rid, (token,), num_prompt, num_output, cached if cached > 0 else 0, reason
                )
            )
            if reason is not None:
                finished.append((seq, reason))
        # Finishing frees blocks: after every sequence's tokens, in batch order, as the
        # general path's loop (which finishes each as it goes: nothing later in the
        # loop reads the pool but caching, which a finish cannot affect) leaves it.
        for seq, reason in finished:
            self._finish(seq, reason)
            counters.num_finished += 1
        counters.num_generation_tokens += len(outputs)
        counters.num_steps += 1
        return StepResult(
            duration_s=cost.duration_s,
            cost=cost,
            outputs=tuple(outputs),
            preempted_ids=(),
            admitted_ids=(),
            events=tuple(self.pool.drain_events()),
            num_prefill_tokens=num_prefill,
            num_decode_tokens=num_decode,
            num_prefix_query_tokens=0,
            num_prefix_hit_tokens=0,
        )

    # -- decode jumps -------------------------------------------------------------
    def plan_decode_jump(self, max_steps: int) -> tuple[StepCost, ...]:
        """Costs of the next k <= `max_steps` steps if they form a plain decode run
        (see the module docstring); () when the next step is not one. Changes nothing
        but the plan that `decode_jump` takes steps from."""
        self._jump_costs = ()
        self._jump_done = 0
        sched = self.scheduler
        running = sched.running
        if max_steps < 1 or sched.waiting or not running:
            return ()
        if len(running) > sched.config.max_num_batched_tokens:
            return ()  # not every sequence would be scheduled in each step
        bs = self.config.block_size
        max_model_len = self.config.max_model_len
        horizon = max_steps
        contexts: list[int] = []
        alloc_steps: list[int] = []
        for seq in running:
            c = seq.num_computed_tokens
            num_tokens = seq.num_tokens
            # Decoding: one token left to compute, and past the prompt (a chunked
            # prefill's last token counts as prefill and adds prompt counters).
            if c != num_tokens - 1 or c < seq.num_prompt_tokens:
                return ()
            if seq.num_cached_blocks != c // bs or len(seq.block_hashes) != num_tokens // bs:
                return ()
            # Step i computes token c + i - 1, into slot c + i - 1: a step past the
            # blocks held allocates one (at most one per sequence before its fill).
            alloc_steps.append(len(seq.block_ids) * bs - c + 1)
            # Step i fills a block when c + i is a multiple of the block size (a
            # BlockStored event): allowed only as the run's last step.
            horizon = min(horizon, bs - c % bs)
            # Finishing is allowed only in the last step too.
            num_output = num_tokens - seq.num_prompt_tokens
            req = seq.request
            horizon = min(horizon, req.max_tokens - num_output, max_model_len - num_tokens)
            if not req.ignore_eos or req.stop_token_ids:
                horizon = min(horizon, self._steps_to_stop(seq, num_output, horizon))
            if horizon < 1:
                return ()
            contexts.append(c)
        allocs = sorted((a, i) for i, a in enumerate(alloc_steps) if a <= horizon)
        if allocs and not self.pool.can_allocate_silently(len(allocs)):
            # Too few free blocks (a preemption) or one that caches a prefix (an
            # eviction: a KV event): stop before the first allocation.
            horizon = allocs[0][0] - 1
            allocs = []
            if horizon < 1:
                return ()
        self._jump_allocs = allocs
        step_cost = self._step_cost
        costs: list[StepCost] = []
        for i in range(horizon):
            costs.append(step_cost([SeqWork(1, c + i) for c in contexts]))
        self._jump_costs = tuple(costs)
        return self._jump_costs

    def _steps_to_stop(self, seq: Sequence, num_output: int, limit: int) -> int:
        """1-based index of the first of the next `limit` steps whose token stops `seq`
        (end-of-sequence or a stop token), else `limit`."""
        req = seq.request
        eos = self.sampler.eos_token_id
        natural = self._natural_len.get(req.request_id)
        for i in range(1, limit + 1):
            pos = num_output + i - 1
            if not req.ignore_eos and natural is not None and pos + 1 >= natural:
                return i
            token = self.sampler.token_at(seq.sample_key, pos)
            if (not req.ignore_eos and token == eos) or token in req.stop_token_ids:
                return i
        return limit

    def decode_jump(self, num_steps: int) -> StepResult:
        """Take the next `num_steps` steps of the planned decode run at once: the same
        state, outputs, events and counters as `num_steps` calls of `step()`."""
        done = self._jump_done
        costs = self._jump_costs[done : done + num_steps]
        if num_steps < 1 or len(costs) != num_steps:
            raise ValueError(
                f"num_steps: {num_steps} is not within the {len(self._jump_costs) - done} "
                f"planned decode steps left"
            )
        self._jump_done = done + num_steps
        pool = self.pool
        running = list(self.scheduler.running)
        # A step's allocations come before any of its tokens, and the steps before
        # them touch no block: taking them all first, in plan order, gives each
        # sequence the blocks single steps would.
        for step, index in self._jump_allocs:
            if done < step <= done + num_steps:
                running[index].block_ids.extend(pool.allocate(1))
        kv = self.kv
        bs = self.config.block_size
        counters = self.counters
        tokens_at = self.sampler.tokens_at
        outputs: list[TokenOutput] = []
        # Sequences share nothing in the steps before the last (no block is allocated,
        # cached or freed in them), so each one's m tokens are taken together; the last
        # step's effects (cache, finish) run in batch order as `step()` runs them.
        for seq in running:
            first = len(seq.output_token_ids)
            key = seq.sample_key
            tokens = tokens_at(key, first, num_steps - 1)
            seq.output_token_ids.extend(tokens)
            seq.num_tokens += num_steps - 1
            num_computed = seq.num_computed_tokens = seq.num_computed_tokens + num_steps
            token = self._sample(seq)
            seq.append_output(token)
            tokens.append(token)
            if seq.num_tokens // bs > len(seq.block_hashes):
                kv.update_hashes(seq)
            if min(num_computed // bs, len(seq.block_hashes)) > seq.num_cached_blocks:
                kv.cache_full_blocks(seq)
            reason = self._stop_reason(seq, token)
            cached = seq.num_cached_tokens
            outputs.append(
                TokenOutput(
                    seq.request.request_id,
                    tuple(tokens),
                    seq.num_prompt_tokens,
                    len(seq.output_token_ids),
                    cached if cached > 0 else 0,
                    reason,
                )
            )
            if reason is not None:
                self._finish(seq, reason)
                counters.num_finished += 1
        num_tokens = len(running) * num_steps
        counters.num_generation_tokens += num_tokens
        counters.num_steps += num_steps
        total_s = 0.0
        for c in costs:
            total_s += c.duration_s
        return StepResult(
            duration_s=total_s,
            cost=costs[-1],
            outputs=tuple(outputs),
            preempted_ids=(),
            admitted_ids=(),
            events=tuple(self.pool.drain_events()),
            num_prefill_tokens=0,
            num_decode_tokens=num_tokens,
            num_prefix_query_tokens=0,
            num_prefix_hit_tokens=0,
            step_durations_s=tuple(c.duration_s for c in costs),
        )

    def _sample(self, seq: Sequence) -> int:
        pos = len(seq.output_token_ids)
        if not seq.request.ignore_eos:
            natural = self._natural_len.get(seq.request.request_id)
            if natural is not None and pos + 1 >= natural:
                return self.sampler.eos_token_id
        return self.sampler.token_at(seq.sample_key, pos)

    def _stop_reason(self, seq: Sequence, token: int) -> FinishReason | None:
        req = seq.request
        if not req.ignore_eos and token == self.sampler.eos_token_id:
            return FinishReason.STOP
        if token in req.stop_token_ids:
            return FinishReason.STOP
        if len(seq.output_token_ids) >= req.max_tokens:
            return FinishReason.LENGTH
        if seq.num_tokens >= self.config.max_model_len:
            return FinishReason.LENGTH
        return None

    def _finish(self, seq: Sequence, reason: FinishReason) -> int:
        self.scheduler.remove(seq)
        freed = self.kv.free(seq)
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = reason
        del self._seqs[seq.request_id]
        self._natural_len.pop(seq.request_id, None)
        return freed
