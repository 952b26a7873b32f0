"""`lora-affinity` scorer: prefers endpoints where the request's LoRA adapter is loaded.

For a request naming adapter `a` (`ctx.lora_adapter`):

    score(e) = 1.0                if a in e.active_lora_adapters  (running or waiting)
               free_slot_score    elif e.max_lora_adapters is known and
                                       len(e.active_lora_adapters) < e.max_lora_adapters
               unknown_score      elif e.max_lora_adapters is None  (slots unknown)
               0.0                otherwise (every slot busy: loading `a` means waiting)

A request without an adapter: every candidate scores 1.0. Inputs come from vLLM's
`vllm:lora_requests_info{running_lora_adapters, waiting_lora_adapters, max_lora}`.
Whether an endpoint can serve `a` at all is the `serves-model` filter's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from headway.routing.config import ConfigError
from headway.routing.context import RequestContext
from headway.routing.decision import PluginKind
from headway.routing.endpoint import EndpointField, EndpointSnapshot
from headway.routing.plugin import Endpoints, PluginSpec
from headway.routing.state import RequestScratch


@dataclass(frozen=True)
class LoraAffinityParams:
    free_slot_score: float = 0.5  # adapter not loaded, but a slot is free
    unknown_score: float = 0.25  # adapter not loaded, slot count unknown

    def __post_init__(self) -> None:
        for name in ("free_slot_score", "unknown_score"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(name, "must be in [0, 1]")


class LoraAffinityScorer:
    TYPE: ClassVar[str] = "lora-affinity"

    def __init__(self, params: LoraAffinityParams) -> None:
        self.params = params

    def score(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Mapping[str, float]:
        adapter = ctx.lora_adapter
        if adapter is None:
            return {e.endpoint_id: 1.0 for e in endpoints}
        return {e.endpoint_id: self._one(adapter, e) for e in endpoints}

    def _one(self, adapter: str, e: EndpointSnapshot) -> float:
        if adapter in e.active_lora_adapters:
            return 1.0
        if e.max_lora_adapters is None:
            return self.params.unknown_score
        if len(e.active_lora_adapters) < e.max_lora_adapters:
            return self.params.free_slot_score
        return 0.0


SPEC = PluginSpec(
    type=LoraAffinityScorer.TYPE,
    kind=PluginKind.SCORER,
    params_type=LoraAffinityParams,
    factory=LoraAffinityScorer,
    reads=frozenset({EndpointField.ACTIVE_LORA_ADAPTERS, EndpointField.MAX_LORA_ADAPTERS}),
    summary="1.0 where the LoRA adapter is active, less where a slot is free",
)
