"""Resolve an engine description (model, GPU, precision, limits) into what an `Engine`
needs: its cost model and its `EngineConfig`.

The live simulator (`headway.sim`) and the cluster simulation (`headway.cluster`) size
engines the same way through this module, so a replica in a simulated cluster is the
replica `headway sim` serves. Sizing follows vLLM: the KV cache gets what the memory
fraction leaves after weights (or `num_gpu_blocks_override`); `max_model_len` defaults
to the model's context, capped at what the KV cache holds; batch limits default to
vLLM 0.32's by GPU memory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from headway.core.catalog import Catalog
from headway.core.catalog import precision as precision_by_name
from headway.core.costmodel import CostModel, Deployment, Efficiency
from headway.core.engine import EngineConfig
from headway.core.scheduler import SchedulerConfig, vllm_default_limits

# The precision every Headway tool assumes when none is given (`headway sim`, `headway
# plan`, the cluster simulation): FP8 weights and KV cache, as H100-class fleets commonly
# serve. One constant, so a simulated fleet and a plan of it agree by default.
DEFAULT_PRECISION = "fp8"


class EngineSpecError(ValueError):
    """An engine description that cannot run; the message starts with the offending
    field's name, which `field` also holds."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class EngineSpec:
    """One engine as a user describes it; fields are named as vLLM's flags."""

    model: str
    gpu: str
    precision: str = DEFAULT_PRECISION
    tp: int = 1
    block_size: int = 16
    num_gpu_blocks_override: int | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    hash_seed: str | None = None
    # The cost model's efficiency factors (None: the defaults); `gpu_memory_utilization`
    # above wins over the one inside, as with vLLM's flag. Calibration sets these.
    efficiency: Efficiency | None = None


@dataclass(frozen=True)
class ResolvedEngine:
    """An engine spec resolved against a catalog: build `Engine(config,
    cost_model.step_cost, sampler)` from it."""

    spec: EngineSpec
    cost_model: CostModel
    config: EngineConfig

    @property
    def capacity_tokens(self) -> int:
        return self.config.num_gpu_blocks * self.config.block_size


def resolve_engine(spec: EngineSpec, catalog: Catalog) -> ResolvedEngine:
    """Size `spec` on its GPU; raises EngineSpecError naming the field at fault."""
    if spec.block_size < 1:
        raise EngineSpecError("block_size", f"block_size: must be >= 1, got {spec.block_size}")
    if not 0.0 < spec.gpu_memory_utilization <= 1.0:
        raise EngineSpecError(
            "gpu_memory_utilization",
            f"gpu_memory_utilization: must be in (0, 1], got {spec.gpu_memory_utilization}",
        )
    try:
        model = catalog.model(spec.model)
    except ValueError as exc:
        raise EngineSpecError("model", str(exc)) from None
    try:
        gpu = catalog.gpu(spec.gpu)
    except ValueError as exc:
        raise EngineSpecError("gpu", str(exc)) from None
    try:
        prec = precision_by_name(spec.precision)
    except ValueError as exc:
        raise EngineSpecError("precision", str(exc)) from None
    try:
        deployment = Deployment(model, gpu, prec, spec.tp)
    except ValueError as exc:
        raise EngineSpecError("tp", str(exc)) from None
    # The spec's factors, else the device's fitted ones over the defaults; vLLM's
    # memory flag always comes from the spec.
    base = spec.efficiency or Efficiency(**dict(gpu.efficiency_overrides))
    efficiency = replace(base, gpu_memory_utilization=spec.gpu_memory_utilization)
    cost_model = CostModel(deployment, efficiency)
    num_blocks = spec.num_gpu_blocks_override or cost_model.kv_capacity_blocks(spec.block_size)
    if num_blocks < 1:
        raise EngineSpecError(
            "model",
            f"model: {spec.model} does not fit on {spec.gpu} at precision {spec.precision} with "
            f"tp {spec.tp}: no memory left for the KV cache",
        )
    capacity_tokens = num_blocks * spec.block_size
    if spec.max_model_len is not None and spec.max_model_len > capacity_tokens:
        # vLLM refuses to start when one max-length request cannot fit the KV cache.
        raise EngineSpecError(
            "max_model_len",
            f"max_model_len: {spec.max_model_len} is larger than the KV cache holds "
            f"({num_blocks} blocks x {spec.block_size} = {capacity_tokens} tokens)",
        )
    default_tokens, default_seqs = vllm_default_limits(gpu.hbm_bytes)
    config = EngineConfig(
        num_gpu_blocks=num_blocks,
        block_size=spec.block_size,
        max_model_len=spec.max_model_len or min(model.max_model_len, capacity_tokens),
        enable_prefix_caching=spec.enable_prefix_caching,
        hash_seed=spec.hash_seed,
        scheduler=SchedulerConfig(
            max_num_seqs=spec.max_num_seqs or default_seqs,
            max_num_batched_tokens=spec.max_num_batched_tokens or default_tokens,
        ),
    )
    return ResolvedEngine(spec, cost_model, config)
