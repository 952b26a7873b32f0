"""Built-in plugins, one module each; `BUILTIN_SPECS` is what the default registry holds."""

from __future__ import annotations

from typing import Any

from headway.routing.plugin import PluginSpec
from headway.routing.plugins import healthy, least_request, max_score, round_robin, serves_model

BUILTIN_SPECS: tuple[PluginSpec[Any], ...] = (
    healthy.SPEC,
    serves_model.SPEC,
    least_request.SPEC,
    round_robin.SPEC,
    max_score.SPEC,
)
