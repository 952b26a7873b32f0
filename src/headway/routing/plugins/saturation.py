"""`saturation` filter: drops endpoints over a load threshold; fails open.

An endpoint is saturated when any configured bound is exceeded:

* `num_queued_requests > max_queued_requests` (engine queue; skipped when the
  endpoint's metrics are stale),
* `kv_cache_usage > max_kv_cache_usage` (skipped when metrics are stale or the engine
  reports no KV usage, e.g. llama.cpp),
* token load `num_in_flight_tokens / (num_gpu_blocks * block_size) > max_token_load`
  when the KV capacity is known, else `num_in_flight_tokens > max_in_flight_tokens`
  when that bound is set (gateway-tracked, never stale).

Fails open: when every candidate is saturated, all are kept, so the scorers still
spread the load (dropping them all would turn overload into errors; admission
control, not routing, is the gateway's backpressure). A None bound is not checked.
Defaults follow the Gateway API inference extension's saturation detector (queue 5,
KV cache 0.8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from headway.routing.config import ConfigError
from headway.routing.context import RequestContext
from headway.routing.decision import PluginKind
from headway.routing.endpoint import EndpointField, EndpointSnapshot
from headway.routing.load import token_load_fraction
from headway.routing.plugin import Endpoints, PluginSpec
from headway.routing.state import RequestScratch


@dataclass(frozen=True)
class SaturationParams:
    max_queued_requests: int | None = 5  # engine queue depth over this: saturated
    max_kv_cache_usage: float | None = 0.8  # KV use (0..1) over this: saturated
    max_token_load: float | None = 1.0  # in-flight tokens / KV capacity over this
    max_in_flight_tokens: int | None = None  # used when the KV capacity is unknown

    def __post_init__(self) -> None:
        if self.max_queued_requests is not None and self.max_queued_requests < 0:
            raise ConfigError("max_queued_requests", "must be >= 0")
        if self.max_kv_cache_usage is not None and not 0.0 <= self.max_kv_cache_usage <= 1.0:
            raise ConfigError("max_kv_cache_usage", "must be in [0, 1]")
        if self.max_token_load is not None and not self.max_token_load > 0.0:
            raise ConfigError("max_token_load", "must be > 0")
        if self.max_in_flight_tokens is not None and self.max_in_flight_tokens < 0:
            raise ConfigError("max_in_flight_tokens", "must be >= 0")


def is_saturated(e: EndpointSnapshot, p: SaturationParams) -> bool:
    """Whether `e` exceeds any of `p`'s bounds (see the module docstring)."""
    if not e.is_metrics_stale:
        if p.max_queued_requests is not None and e.num_queued_requests > p.max_queued_requests:
            return True
        usage = e.kv_cache_usage
        if p.max_kv_cache_usage is not None and usage is not None and usage > p.max_kv_cache_usage:
            return True
    load = token_load_fraction(e)
    if load is not None:
        return p.max_token_load is not None and load > p.max_token_load
    return p.max_in_flight_tokens is not None and e.num_in_flight_tokens > p.max_in_flight_tokens


class SaturationFilter:
    """Keeps endpoints under every load bound; all of them when none is."""

    TYPE: ClassVar[str] = "saturation"

    def __init__(self, params: SaturationParams) -> None:
        self.params = params

    def filter(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Endpoints:
        kept = tuple(e for e in endpoints if not is_saturated(e, self.params))
        return kept if kept else endpoints  # fail open


SPEC = PluginSpec(
    type=SaturationFilter.TYPE,
    kind=PluginKind.FILTER,
    params_type=SaturationParams,
    factory=SaturationFilter,
    reads=frozenset(
        {
            EndpointField.NUM_QUEUED_REQUESTS,
            EndpointField.KV_CACHE_USAGE,
            EndpointField.IS_METRICS_STALE,
            EndpointField.NUM_IN_FLIGHT_TOKENS,
            EndpointField.BLOCK_SIZE,
            EndpointField.NUM_GPU_BLOCKS,
        }
    ),
    summary="drops endpoints over queue / KV-use / token-load bounds; fails open",
)
