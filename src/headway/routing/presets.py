"""Named presets: ready-made profiles, written as the same plain config a user writes.

`build_handler({"preset": name})` expands a preset into a single profile of that
name, so presets go through exactly the validation user profiles do.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

_ELIGIBLE = ("healthy", "serves-model")  # every preset first drops what cannot serve

PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        # Cycles over eligible endpoints in endpoint-id order; load-blind.
        "round-robin": MappingProxyType(
            {
                "filters": _ELIGIBLE,
                "scorers": (MappingProxyType({"type": "round-robin", "weight": 1.0}),),
                "picker": "max-score",
            }
        ),
        # Fewest in-flight requests (gateway-tracked); ties broken by the seeded rng.
        "least-request": MappingProxyType(
            {
                "filters": _ELIGIBLE,
                "scorers": (MappingProxyType({"type": "least-request", "weight": 1.0}),),
                "picker": "max-score",
            }
        ),
    }
)


def default_preset(has_kv_events: bool) -> str:
    """The preset a pool gets when its config names none: `kv-aware` when its engines
    publish KV events (precise prefix matches), else `kv-aware-approx`."""
    return "kv-aware" if has_kv_events else "kv-aware-approx"
