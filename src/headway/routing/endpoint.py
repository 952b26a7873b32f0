"""Per-endpoint snapshot scope: what the collectors know about one engine endpoint.

A snapshot is an immutable value. Collectors (metrics scraper, KV-event subscriber,
in-flight tracker, health checker) build a fresh one whenever their view changes;
plugins only read it. Nothing in a decision ever writes to a snapshot.

Invariants (checked on construction): counts are >= 0, `kv_cache_usage` is in [0, 1],
`block_size` is >= 1 when known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


class EndpointRole(StrEnum):
    """What an endpoint does in prefill/decode disaggregation."""

    BOTH = "both"  # an ordinary, aggregated engine
    PREFILL = "prefill"
    DECODE = "decode"


class EndpointField(StrEnum):
    """The snapshot fields a plugin may declare that it reads (`PluginSpec.reads`).

    Each value is the name of an `EndpointSnapshot` attribute. `endpoint_id` is not
    listed: every plugin may use the identity.
    """

    ROLE = "role"
    MODELS = "models"
    LORA_ADAPTERS = "lora_adapters"
    IS_HEALTHY = "is_healthy"
    IS_EJECTED = "is_ejected"
    NUM_QUEUED_REQUESTS = "num_queued_requests"
    NUM_RUNNING_REQUESTS = "num_running_requests"
    KV_CACHE_USAGE = "kv_cache_usage"
    NUM_IN_FLIGHT_REQUESTS = "num_in_flight_requests"
    NUM_IN_FLIGHT_TOKENS = "num_in_flight_tokens"
    METRICS_UPDATED_AT = "metrics_updated_at"
    ACTIVE_LORA_ADAPTERS = "active_lora_adapters"
    MAX_LORA_ADAPTERS = "max_lora_adapters"
    BLOCK_SIZE = "block_size"
    NUM_GPU_BLOCKS = "num_gpu_blocks"
    IS_METRICS_STALE = "is_metrics_stale"


@dataclass(frozen=True)
class EndpointSnapshot:
    """One endpoint's state at the time of a decision.

    Engine-reported fields (`num_queued_requests`, `num_running_requests`,
    `kv_cache_usage`) are as fresh as `metrics_updated_at` (None: never scraped).
    Gateway-tracked fields (`num_in_flight_*`) are exact for this gateway process.
    """

    endpoint_id: str
    models: frozenset[str] = frozenset()  # base model names it serves
    lora_adapters: frozenset[str] = frozenset()  # LoRA adapters it can serve
    role: EndpointRole = EndpointRole.BOTH
    is_healthy: bool = True  # active health checks pass
    is_ejected: bool = False  # passive outlier detection took it out
    num_queued_requests: int = 0  # waiting in the engine's queue
    num_running_requests: int = 0  # in the engine's running batch
    kv_cache_usage: float | None = 0.0  # fraction of KV blocks in use, 0..1; None: unknown
    num_in_flight_requests: int = 0  # sent by this gateway, not yet finished
    num_in_flight_tokens: int = 0  # estimated prefill + decode tokens of those
    metrics_updated_at: float | None = None  # when engine metrics were last read
    # Adapters running or waiting on the engine (vLLM's `vllm:lora_requests_info`
    # running_lora_adapters + waiting_lora_adapters labels).
    active_lora_adapters: frozenset[str] = frozenset()
    max_lora_adapters: int | None = None  # adapters the engine holds at once (max_lora label)
    block_size: int | None = None  # engine KV block size in tokens; None: unknown
    num_gpu_blocks: int | None = None  # engine KV capacity in blocks; None: unknown
    is_metrics_stale: bool = False  # scrapes failing or too old: engine fields are not current

    def __post_init__(self) -> None:
        if not self.endpoint_id:
            raise ValueError("endpoint_id: must not be empty")
        for name in (
            "num_queued_requests",
            "num_running_requests",
            "num_in_flight_requests",
            "num_in_flight_tokens",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("max_lora_adapters", "num_gpu_blocks"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}: must be >= 0 or None, got {value}")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"block_size: must be >= 1 or None, got {self.block_size}")
        usage = self.kv_cache_usage
        if usage is not None and not (math.isfinite(usage) and 0.0 <= usage <= 1.0):
            raise ValueError(f"kv_cache_usage: must be in [0, 1] or None, got {usage}")

    @property
    def kv_capacity_tokens(self) -> int | None:
        """KV cache capacity in tokens (`num_gpu_blocks * block_size`); None when unknown."""
        if self.num_gpu_blocks is None or self.block_size is None or self.num_gpu_blocks == 0:
            return None
        return self.num_gpu_blocks * self.block_size

    def metrics_age_s(self, now: float) -> float | None:
        """Seconds since engine metrics were last read; None when they never were."""
        if self.metrics_updated_at is None:
            return None
        return max(0.0, now - self.metrics_updated_at)
