"""Roofline cost model of one engine step, and KV capacity.

A step runs one forward pass over a batch that mixes prefill chunks and decode
tokens. Its time is

    max(linear_compute_s, weight_memory_s) + max(attention_compute_s, kv_memory_s)
        + comm_s + overhead_s

a roofline per kind of operator: the linear layers (GEMMs) and attention run one after
the other, each bounded by its own resource, so the KV reads of decode attention do not
hide under the GEMMs of a big prefill chunk (a single max over the whole step did that,
and overestimated mixed batches; see docs/costmodel.md).

* linear_compute_s: 2 x active parameters per token, over the peak of the weight
  format's tensor cores times an achieved MFU that grows with the number of tokens in
  the step (small batches cannot fill the GPU); FP4 tensor cores reach a smaller share
  of their peak (`fp4_mfu_scale`).
* attention_compute_s: each new token against every earlier token of its sequence,
  over the BF16 peak times max_mfu (the MFU ramp is for GEMMs that a few tokens cannot
  fill; it would make batch-1 decode attention compute-bound, which it is not).
* weight_memory_s: weight bytes (for MoE only the experts some token picked) over the
  HBM bandwidth times an achievable fraction; kv_memory_s: KV bytes written (the new
  tokens) and read by attention (each sequence's whole context and its new tokens),
  likewise.
* compute_s and memory_s in `StepCost` are the sums of the two compute and the two
  memory terms.
* comm_s: two all-reduces per layer of the step's activations under tensor
  parallelism, ring algorithm, plus a fixed latency per all-reduce.
* overhead_s: fixed per-step launch/scheduling time plus a small per-sequence cost.

Everything is per GPU: work divides by the tensor-parallel degree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from headway.core.catalog import Dtype, GpuSpec, ModelSpec, Precision


@dataclass(frozen=True)
class Efficiency:
    """Achievable fractions of datasheet peaks, and fixed costs.

    memory_bandwidth_fraction, per_sequence_overhead_s and fp4_mfu_scale are fitted
    (rounded) on the calibration split of TensorRT-LLM's published v1.0 offline
    throughput (Llama-3.1-8B and Llama-3.3-70B on H100/H200 FP8 and B200/GB200 NVFP4):
    see `benchmarks/costmodel_vs_published.py`, its result in `benchmarks/results/`,
    and docs/costmodel.md. The others keep reference values that those runs do not pin
    down better: max_mfu and mfu_half_saturation_tokens (fitting them too does not
    lower the held-out error), step_overhead_s (a few hundred microseconds, as public
    simulators use), the interconnect terms, and vLLM's memory settings.
    """

    max_mfu: float = 0.6
    mfu_half_saturation_tokens: float = 128.0
    memory_bandwidth_fraction: float = 0.74
    interconnect_fraction: float = 0.7
    allreduce_latency_s: float = 8e-6
    step_overhead_s: float = 300e-6
    per_sequence_overhead_s: float = 1.25e-6
    gpu_memory_utilization: float = 0.9
    activation_reserve_fraction: float = 0.05
    fp4_mfu_scale: float = 0.58

    def mfu(self, num_tokens: int) -> float:
        """Achieved fraction of peak FLOPs for a step of `num_tokens` tokens."""
        if num_tokens <= 0:
            return self.max_mfu
        return self.max_mfu * num_tokens / (num_tokens + self.mfu_half_saturation_tokens)


@dataclass(frozen=True)
class SeqWork:
    """One sequence's share of a step: `num_new_tokens` computed after
    `num_context_tokens` already in its KV cache."""

    num_new_tokens: int
    num_context_tokens: int


@dataclass(frozen=True)
class StepCost:
    """A step's modeled time and where it came from."""

    duration_s: float
    compute_s: float
    memory_s: float
    comm_s: float
    overhead_s: float
    num_tokens: int

    @property
    def is_compute_bound(self) -> bool:
        return self.compute_s >= self.memory_s


@dataclass(frozen=True)
class Deployment:
    """A model on a GPU type at a precision and tensor-parallel degree."""

    model: ModelSpec
    gpu: GpuSpec
    precision: Precision = field(default_factory=Precision)
    tp: int = 1

    def __post_init__(self) -> None:
        if self.tp < 1:
            raise ValueError(f"tp: must be >= 1, got {self.tp}")

    @property
    def weight_bytes_total(self) -> float:
        return self.model.total_params * self.precision.weights.bytes_per_element

    @property
    def weight_bytes_per_gpu(self) -> float:
        return self.weight_bytes_total / self.tp

    @property
    def kv_bytes_per_token_per_gpu(self) -> float:
        return self.model.kv_bytes_per_token_per_gpu(self.precision.kv_cache, self.tp)

    @property
    def compute_dtype(self) -> Dtype:
        """Weight-only INT4 runs its matmuls in BF16; FP8/FP4 use their own tensor cores."""
        if self.precision.weights == Dtype.INT4:
            return Dtype.BF16
        return self.precision.weights


class CostModel:
    """Step time and KV capacity for one `Deployment`."""

    def __init__(self, deployment: Deployment, efficiency: Efficiency | None = None) -> None:
        self.deployment = deployment
        self.efficiency = efficiency or Efficiency()
        d, e = deployment, self.efficiency
        self._peak_flops = d.gpu.peak_flops_per_s(d.compute_dtype)
        if d.compute_dtype == Dtype.FP4 and Dtype.FP4 in d.gpu.flops_per_s:
            # Activation quantisation and block scales keep FP4 GEMMs further from
            # their peak than FP8/BF16 ones (not applied to weight-only fallbacks).
            self._peak_flops *= e.fp4_mfu_scale
        # Attention math runs in BF16 (FP8 attention is a separate, optional kernel).
        self._attn_flops = d.gpu.peak_flops_per_s(Dtype.BF16)
        self._mem_bw = d.gpu.hbm_bandwidth_bytes_per_s * e.memory_bandwidth_fraction
        self._weight_bytes_per_param = d.precision.weights.bytes_per_element
        self._kv_bytes = d.model.kv_bytes_per_token_per_gpu(d.precision.kv_cache, d.tp)
        self._dense_weight_bytes = (
            d.model.weight_params_touched(1) * self._weight_bytes_per_param / d.tp
            if d.model.moe is None
            else 0.0
        )

    # -- capacity ---------------------------------------------------------------
    def kv_capacity_tokens(self) -> int:
        """Tokens of KV cache that fit: the memory-utilisation share of HBM, less the
        weights and an activation reserve, divided by KV bytes per token (per GPU)."""
        d, e = self.deployment, self.efficiency
        budget = d.gpu.hbm_bytes * (e.gpu_memory_utilization - e.activation_reserve_fraction)
        free = budget - d.weight_bytes_per_gpu
        if free <= 0:
            return 0
        return int(free // self._kv_bytes)

    def kv_capacity_blocks(self, block_size: int) -> int:
        return self.kv_capacity_tokens() // block_size

    # -- step time --------------------------------------------------------------
    def step_cost(self, work: Sequence[SeqWork]) -> StepCost:
        """Modeled time of one forward pass over `work`."""
        d, e = self.deployment, self.efficiency
        tp = d.tp
        num_tokens = 0
        attn_pairs = 0.0
        kv_read_tokens = 0
        for w in work:
            n, c = w.num_new_tokens, w.num_context_tokens
            num_tokens += n
            # Each new token i (0-based) attends to c + i + 1 keys.
            attn_pairs += n * c + n * (n + 1) / 2
            kv_read_tokens += c
        if num_tokens == 0:
            return StepCost(0.0, 0.0, 0.0, 0.0, 0.0, 0)
        model = d.model
        linear_flops = 2.0 * model.active_params_per_token * num_tokens / tp
        attn_flops = model.attention_flops_per_query_key * attn_pairs / tp
        mfu = e.mfu(num_tokens)
        linear_compute_s = linear_flops / (self._peak_flops * mfu)
        # The MFU ramp is for GEMMs that a few tokens cannot fill; attention's work is
        # small in decode (memory-bound) and runs at full efficiency in long prefills.
        attn_compute_s = attn_flops / (self._attn_flops * e.max_mfu)

        if model.moe is None:
            weight_bytes = self._dense_weight_bytes
        else:
            weight_bytes = (
                model.weight_params_touched(num_tokens) * self._weight_bytes_per_param / tp
            )
        # New tokens' K/V are written to the cache, then read back with the context by
        # the attention kernel (paged attention reads every key it attends to).
        kv_bytes = (kv_read_tokens + 2 * num_tokens) * self._kv_bytes
        weight_memory_s = weight_bytes / self._mem_bw
        kv_memory_s = kv_bytes / self._mem_bw
        compute_s = linear_compute_s + attn_compute_s
        memory_s = weight_memory_s + kv_memory_s

        comm_s = 0.0
        if tp > 1:
            act_bytes = num_tokens * model.hidden_size * Dtype.BF16.bytes_per_element
            ring = 2.0 * (tp - 1) / tp * act_bytes
            link = d.gpu.interconnect_bandwidth_bytes_per_s * e.interconnect_fraction
            num_allreduce = 2 * model.num_layers
            comm_s = num_allreduce * (ring / link + e.allreduce_latency_s)

        overhead_s = e.step_overhead_s + e.per_sequence_overhead_s * len(work)
        duration_s = (
            max(linear_compute_s, weight_memory_s)
            + max(attn_compute_s, kv_memory_s)
            + comm_s
            + overhead_s
        )
        return StepCost(duration_s, compute_s, memory_s, comm_s, overhead_s, num_tokens)

    def step_time_s(self, work: Sequence[SeqWork]) -> float:
        return self.step_cost(work).duration_s
