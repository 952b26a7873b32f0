"""Saturated (offline, max-throughput) output rate of one deployment, from the cost model.

All requests are queued at once and every request has exactly `isl` prompt tokens and
`osl` output tokens, as in `trtllm-bench throughput` or `vllm bench throughput`. In
the steady state of continuous batching with B requests in flight:

* each request lives for `osl` steps: one step completes its prefill (and emits the
  first token), `osl - 1` decode steps emit the rest. So per step, on average, B/osl
  requests finish and as many start; the step carries
  - B x (osl - 1)/osl decode tokens, each at the mean decode context isl + osl/2, and
  - B x isl/osl prefill tokens (chunked prefill: whole prompts plus one partial
    chunk whose mean context is half the rest of its prompt, which reproduces the
    mean attention work B/osl x isl^2/2 exactly);
  and emits B output tokens. Output tokens/s = B / step_time; per GPU, / tp.
* B is bounded by
  - `max_num_seqs`;
  - the token budget: B x (isl + osl - 1)/osl <= `max_num_batched_tokens` (if prefill
    needs more than the budget leaves, fewer requests can be in flight: finishing
    requests are replaced only as fast as their prompts can be prefilled);
  - KV capacity: B x blocks_per_seq <= the cache's blocks, where blocks_per_seq is
    the mean occupancy ceil((isl + ceil(osl/2)) / block_size) under on-demand paged
    allocation (vLLM; `KvReservation.AVERAGE`), or the whole ceil((isl + osl) /
    block_size) reserved at admission (TensorRT-LLM's default GUARANTEED_NO_EVICT
    capacity scheduler; `KvReservation.FULL`).
* Within those bounds B is searched for the highest throughput. Under the roofline cost
  model throughput never falls as B grows (every step-time term is affine in B, with a
  positive intercept), so the answer is normally the tightest bound; the search still
  checks smaller batches so that a cost model with a real interior optimum is reported
  as `ThroughputBound.THROUGHPUT_PEAK`.

Approximations: one mean decode context instead of the spread of contexts (attention
and KV reads are linear in context, so the mean is exact for them); prefix caching off
(random prompts); no preemption (the KV bound keeps the batch inside the cache).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from headway.core.costmodel import CostModel, SeqWork, StepCost

# TensorRT-LLM's BuildConfig defaults (max_batch_size, max_num_tokens); vLLM's own
# defaults are smaller (256 sequences), which caps offline throughput well below this.
DEFAULT_MAX_NUM_SEQS = 2048
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192
DEFAULT_BLOCK_SIZE = 16


class ThroughputBound(StrEnum):
    """Which limit sets the batch size of the estimate."""

    KV_CAPACITY = "kv_capacity"
    MAX_NUM_SEQS = "max_num_seqs"
    MAX_NUM_BATCHED_TOKENS = "max_num_batched_tokens"
    THROUGHPUT_PEAK = "throughput_peak"


class KvReservation(StrEnum):
    """How much KV cache a request in flight is charged for."""

    AVERAGE = "average"  # on-demand paged blocks: mean occupancy isl + osl/2 (vLLM)
    FULL = "full"  # isl + osl reserved at admission (TensorRT-LLM GUARANTEED_NO_EVICT)


class ThroughputInputError(ValueError):
    """An input the estimate cannot use; `field` names it (isl, osl, tp, ...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ThroughputEstimate:
    """The saturated operating point and what limits it."""

    output_tokens_per_s: float
    output_tokens_per_s_per_gpu: float
    total_tokens_per_s: float  # prompt + output tokens, as vLLM's "total token throughput"
    total_tokens_per_s_per_gpu: float
    num_gpus: int
    num_seqs: int  # B: requests in flight
    bound: ThroughputBound
    max_num_seqs_by_kv: int
    max_num_seqs_by_token_budget: int
    max_num_seqs: int
    max_num_batched_tokens: int
    kv_reservation: KvReservation
    kv_capacity_tokens: int
    kv_capacity_blocks: int
    block_size: int
    kv_blocks_per_seq: int
    num_decode_tokens_per_step: int
    num_prefill_tokens_per_step: int
    step_time_s: float
    compute_s: float
    memory_s: float
    comm_s: float
    overhead_s: float
    is_compute_bound: bool
    tpot_s: float  # one token per request per step
    requests_per_s: float


def step_work(num_seqs: int, isl: int, osl: int) -> list[SeqWork]:
    """The mean step of the steady state with `num_seqs` requests in flight."""
    num_decode = round(num_seqs * (osl - 1) / osl)
    num_prefill = round(num_seqs * isl / osl)
    decode_context = isl + (osl + 1) // 2
    work = [SeqWork(1, decode_context)] * num_decode
    num_whole, remainder = divmod(num_prefill, isl)
    work.extend([SeqWork(isl, 0)] * num_whole)
    if remainder:
        work.append(SeqWork(remainder, (isl - remainder) // 2))
    return work


def kv_blocks_per_seq(isl: int, osl: int, block_size: int, reservation: KvReservation) -> int:
    tokens = isl + osl if reservation == KvReservation.FULL else isl + (osl + 1) // 2
    return math.ceil(tokens / block_size)


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ThroughputInputError(name, f"must be >= 1, got {value}")


def saturated_throughput(
    cost_model: CostModel,
    isl: int,
    osl: int,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
    kv_reservation: KvReservation = KvReservation.AVERAGE,
) -> ThroughputEstimate:
    """Highest steady-state output rate with all requests queued (see the module doc).

    Raises `ThroughputInputError` (naming the input) for non-positive lengths or limits,
    a model whose weights leave no room for KV cache (`tp`), or a request longer than
    the whole cache or the model's context (`isl`).
    """
    for name, value in (
        ("isl", isl),
        ("osl", osl),
        ("block_size", block_size),
        ("max_num_seqs", max_num_seqs),
        ("max_num_batched_tokens", max_num_batched_tokens),
    ):
        _check_positive(name, value)
    deployment = cost_model.deployment
    if isl + osl > deployment.model.max_model_len:
        raise ThroughputInputError(
            "isl",
            f"isl + osl = {isl + osl} exceeds {deployment.model.name}'s context of "
            f"{deployment.model.max_model_len} tokens",
        )
    capacity_tokens = cost_model.kv_capacity_tokens()
    capacity_blocks = cost_model.kv_capacity_blocks(block_size)
    if capacity_blocks < 1:
        weights_gib = deployment.weight_bytes_per_gpu / 1024**3
        raise ThroughputInputError(
            "tp",
            f"{deployment.model.name} does not fit: {weights_gib:.1f} GiB of "
            f"{deployment.precision.weights.value} weights per GPU leave no KV cache on "
            f"{deployment.gpu.name} at tp={deployment.tp}",
        )
    blocks_per_seq = kv_blocks_per_seq(isl, osl, block_size, kv_reservation)
    by_kv = capacity_blocks // blocks_per_seq
    if by_kv < 1:
        raise ThroughputInputError(
            "isl",
            f"one request of {isl}+{osl} tokens needs {blocks_per_seq} KV blocks; "
            f"only {capacity_blocks} fit",
        )
    # B x (isl + osl - 1) / osl tokens per step must fit the budget.
    by_budget = max_num_batched_tokens * osl // (isl + osl - 1)
    if by_budget < 1:
        # Even one request needs more than the budget per step: it still runs, with
        # its prompt chunked over several steps, so it is "one request in flight".
        by_budget = 1
    limits = {
        ThroughputBound.KV_CAPACITY: by_kv,
        ThroughputBound.MAX_NUM_SEQS: max_num_seqs,
        ThroughputBound.MAX_NUM_BATCHED_TOKENS: by_budget,
    }
    # Ties go to the earlier entry: KV capacity, then max_num_seqs, then the budget.
    limit_bound = min(limits, key=lambda b: limits[b])
    limit = limits[limit_bound]

    best_b, best_cost = _search(cost_model, isl, osl, limit)
    bound = limit_bound if best_b == limit else ThroughputBound.THROUGHPUT_PEAK
    return _estimate(
        cost_model,
        isl,
        osl,
        best_b,
        best_cost,
        bound=bound,
        by_kv=by_kv,
        by_budget=by_budget,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        kv_reservation=kv_reservation,
        capacity_tokens=capacity_tokens,
        capacity_blocks=capacity_blocks,
        block_size=block_size,
        blocks_per_seq=blocks_per_seq,
    )


def _rate(cost_model: CostModel, isl: int, osl: int, num_seqs: int) -> tuple[float, StepCost]:
    cost = cost_model.step_cost(step_work(num_seqs, isl, osl))
    if cost.duration_s <= 0:
        return 0.0, cost
    return num_seqs / cost.duration_s, cost


def _search(cost_model: CostModel, isl: int, osl: int, limit: int) -> tuple[int, StepCost]:
    """The batch size in [1, limit] with the highest rate.

    Evaluates the limit and a halving ladder below it, then narrows around the best
    rung by ternary search (the rate is unimodal in B for the cost models here). Ties
    go to the larger batch, the one an offline run with everything queued reaches.
    """
    candidates: dict[int, tuple[float, StepCost]] = {}

    def rate(b: int) -> float:
        if b not in candidates:
            candidates[b] = _rate(cost_model, isl, osl, b)
        return candidates[b][0]

    b = limit
    while b >= 1:
        rate(b)
        b //= 2
    best = max(candidates, key=lambda k: (candidates[k][0], k))
    if best != limit:
        lo, hi = max(1, best // 2), min(limit, best * 2)
        while hi - lo > 2:
            m1 = lo + (hi - lo) // 3
            m2 = hi - (hi - lo) // 3
            if rate(m1) < rate(m2):
                lo = m1
            else:
                hi = m2
        for k in range(lo, hi + 1):
            rate(k)
        best = max(candidates, key=lambda k: (candidates[k][0], k))
        # Within 0.1% of the limit's rate, report the limit: the difference is noise.
        if candidates[limit][0] >= candidates[best][0] * 0.999:
            best = limit
    return best, candidates[best][1]


def _estimate(
    cost_model: CostModel,
    isl: int,
    osl: int,
    num_seqs: int,
    cost: StepCost,
    *,
    bound: ThroughputBound,
    by_kv: int,
    by_budget: int,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    kv_reservation: KvReservation,
    capacity_tokens: int,
    capacity_blocks: int,
    block_size: int,
    blocks_per_seq: int,
) -> ThroughputEstimate:
    num_gpus = cost_model.deployment.tp
    step_s = cost.duration_s
    num_decode = round(num_seqs * (osl - 1) / osl)
    num_prefill = round(num_seqs * isl / osl)
    output_rate = num_seqs / step_s
    total_rate = output_rate * (isl + osl) / osl
    return ThroughputEstimate(
        output_tokens_per_s=output_rate,
        output_tokens_per_s_per_gpu=output_rate / num_gpus,
        total_tokens_per_s=total_rate,
        total_tokens_per_s_per_gpu=total_rate / num_gpus,
        num_gpus=num_gpus,
        num_seqs=num_seqs,
        bound=bound,
        max_num_seqs_by_kv=by_kv,
        max_num_seqs_by_token_budget=by_budget,
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        kv_reservation=kv_reservation,
        kv_capacity_tokens=capacity_tokens,
        kv_capacity_blocks=capacity_blocks,
        block_size=block_size,
        kv_blocks_per_seq=blocks_per_seq,
        num_decode_tokens_per_step=num_decode,
        num_prefill_tokens_per_step=num_prefill,
        step_time_s=step_s,
        compute_s=cost.compute_s,
        memory_s=cost.memory_s,
        comm_s=cost.comm_s,
        overhead_s=cost.overhead_s,
        is_compute_bound=cost.is_compute_bound,
        tpot_s=step_s,
        requests_per_s=output_rate / osl,
    )
