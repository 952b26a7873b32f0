"""`serves-model` filter: keeps endpoints that serve the request's model and adapter.

Rule: keep `e` if `ctx.model in e.models` and, for a LoRA request, `ctx.lora_adapter
in e.lora_adapters` or `e.lora_adapters` is empty. An empty adapter list means
"unknown" (engines that load adapters on demand, or whose model listing the gateway
did not read), not "none": dropping those would send every LoRA request to 503.

Never fails open: an endpoint without the model would answer 404.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from headway.routing.context import RequestContext
from headway.routing.decision import PluginKind
from headway.routing.endpoint import EndpointField
from headway.routing.plugin import Endpoints, PluginSpec
from headway.routing.state import RequestScratch


@dataclass(frozen=True)
class ServesModelParams:
    """No parameters."""


class ServesModelFilter:
    """Keeps endpoints whose `models` contain `ctx.model` and, for a LoRA request,
    whose `lora_adapters` contain `ctx.lora_adapter` or are empty (unknown)."""

    TYPE: ClassVar[str] = "serves-model"

    def __init__(self, params: ServesModelParams) -> None:
        self.params = params

    def filter(
        self, ctx: RequestContext, endpoints: Endpoints, scratch: RequestScratch
    ) -> Endpoints:
        adapter = ctx.lora_adapter
        return tuple(
            e
            for e in endpoints
            if ctx.model in e.models
            and (adapter is None or not e.lora_adapters or adapter in e.lora_adapters)
        )


SPEC = PluginSpec(
    type=ServesModelFilter.TYPE,
    kind=PluginKind.FILTER,
    params_type=ServesModelParams,
    factory=ServesModelFilter,
    reads=frozenset({EndpointField.MODELS, EndpointField.LORA_ADAPTERS}),
    summary="keeps endpoints serving the request's model (and LoRA adapter)",
)
