"""Load measures shared by load-aware plugins (pure functions of one snapshot or set).

Relative scores: `1 - v / max(v over candidates)`, the rule `least-request` uses, so
a candidate with nothing scores 1.0, the busiest 0.0, and values in between scale
linearly (unlike min-max scaling, two nearly equal loads get nearly equal scores).
"""

from __future__ import annotations

from collections.abc import Mapping

from headway.routing.endpoint import EndpointSnapshot


def inverse_relative(values: Mapping[str, float]) -> dict[str, float]:
    """`1 - v / max(v)` per key; every key scores 1.0 when all values are equal."""
    if not values:
        return {}
    most = max(values.values())
    if most == min(values.values()):
        return dict.fromkeys(values, 1.0)
    return {k: 1.0 - v / most for k, v in values.items()}


def token_load_fraction(e: EndpointSnapshot) -> float | None:
    """In-flight tokens (gateway estimate of prefill + decode) over the engine's KV
    capacity in tokens; None when the capacity is unknown. Can exceed 1.0 (queued)."""
    capacity = e.kv_capacity_tokens
    if capacity is None:
        return None
    return e.num_in_flight_tokens / capacity
