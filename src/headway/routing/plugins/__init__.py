"""Built-in plugins, one module each; `BUILTIN_SPECS` is what the default registry holds."""

from __future__ import annotations

from typing import Any

from headway.routing.plugin import PluginSpec
from headway.routing.plugins import (
    approx_prefix,
    healthy,
    kv_usage,
    least_request,
    lora_affinity,
    max_score,
    power_of_two,
    precise_prefix,
    prefill_cost,
    prefix_affinity,
    queue_depth,
    round_robin,
    routed_load,
    running_requests,
    saturation,
    serves_model,
    session_affinity,
    token_load,
    weighted_random,
)

BUILTIN_SPECS: tuple[PluginSpec[Any], ...] = (
    # filters
    healthy.SPEC,
    serves_model.SPEC,
    saturation.SPEC,
    prefix_affinity.SPEC,
    # scorers
    least_request.SPEC,
    round_robin.SPEC,
    queue_depth.SPEC,
    running_requests.SPEC,
    kv_usage.SPEC,
    token_load.SPEC,
    routed_load.SPEC,
    approx_prefix.SPEC,
    precise_prefix.SPEC,
    prefill_cost.SPEC,
    session_affinity.SPEC,
    lora_affinity.SPEC,
    # pickers
    max_score.SPEC,
    weighted_random.SPEC,
    power_of_two.SPEC,
)
