"""Named presets: ready-made profiles, written as the same plain config a user writes.

`build_handler({"preset": name})` expands a preset into a single profile of that
name, so presets go through exactly the validation user profiles do.

The weights below are provisional, to be tuned with benchmarks/routing_quality.py;
docs/policies.md says why each was chosen.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

_ELIGIBLE = ("healthy", "serves-model")  # every preset first drops what cannot serve
_UNSATURATED = (*_ELIGIBLE, "saturation")  # ... and, for load-aware ones, the saturated


def _scorer(type_: str, weight: float) -> Mapping[str, Any]:
    return MappingProxyType({"type": type_, "weight": weight})


def _affinity(source: str) -> Mapping[str, Any]:
    return MappingProxyType(
        {"type": "prefix-affinity-until-saturated", "params": MappingProxyType({"source": source})}
    )


def _turnover(weight: float) -> Mapping[str, Any]:
    return MappingProxyType(
        {
            "type": "routed-load",
            "weight": weight,
            "params": MappingProxyType(
                {"unit": "new-tokens", "normalize": "range", "cold_below_match": 0.5}
            ),
        }
    )


def _profile(
    filters: tuple[Any, ...], *scorers: Mapping[str, Any], picker: str = "max-score"
) -> Mapping[str, Any]:
    return MappingProxyType({"filters": filters, "scorers": scorers, "picker": picker})


PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        # Cycles over eligible endpoints in endpoint-id order; load-blind.
        "round-robin": _profile(_ELIGIBLE, _scorer("round-robin", 1.0)),
        # Fewest in-flight requests (gateway-tracked); ties broken by the seeded rng.
        "least-request": _profile(_ELIGIBLE, _scorer("least-request", 1.0)),
        # The fewer in-flight requests of two random candidates.
        "power-of-two": _profile(_ELIGIBLE, _scorer("least-request", 1.0), picker="power-of-two"),
        # Bounded-load consistent hashing on the session id; least-request for
        # requests without one (and as a tie-break that never overrides the session).
        "session-sticky": _profile(
            _UNSATURATED, _scorer("session-affinity", 1.0), _scorer("least-request", 0.1)
        ),
        # Hard approximate cache affinity until the warm endpoints are overloaded
        # (SGLang's cache-aware rule), the lightest token load among what is left.
        # The filter records what it routed (its observe), so no prefix scorer:
        # once it lets every candidate through, load alone decides.
        "prefix-approx": _profile((*_ELIGIBLE, _affinity("approx")), _scorer("token-load", 1.0)),
        # Cache affinity first, then a trade-off. The prefix-affinity filter keeps the
        # endpoints holding the longest prefix (precise, from KV events; approximate
        # for a stale endpoint) unless their token load is out of bounds; saturation
        # then drops saturated endpoints from what is left (failing open, so a lone
        # warm holder stays: its engine queue or KV use is no reason to recompute the
        # prompt elsewhere, measured: saturation in front of affinity collapsed the hit
        # rate at 7x round-robin's knee in routing_quality); among the rest, precise
        # prefix 2 : token load 1 : in-flight requests 1 (load terms relative to the
        # candidates) : cache turnover 3. In-flight tokens are charged net of the
        # expected cache hit (gateway/routing.py). The turnover term (routed-load over
        # the new tokens each engine's cache was written lately, range-normalized, so
        # it outweighs the in-flight terms) places a prompt cached nowhere (a tenant's
        # first request, or one after eviction: no candidate holds half of it, so
        # most of it is new wherever it goes) where the cache turns over least, so
        # the prefix lives longest there; the in-flight terms near idle are timing
        # noise (measured on real vLLM: tenant misses 8-10 -> 7). A prompt mostly
        # held (its holders overloaded) it leaves to the prefix and load terms.
        # docs/policies.md has the numbers.
        "kv-aware": _profile(
            (*_ELIGIBLE, _affinity("auto"), "saturation"),
            _scorer("precise-prefix", 2.0),
            _scorer("token-load", 1.0),
            _scorer("least-request", 1.0),
            _turnover(3.0),
        ),
        # The same with the gateway's approximate prefix index (no KV events).
        "kv-aware-approx": _profile(
            (*_ELIGIBLE, _affinity("approx"), "saturation"),
            _scorer("approx-prefix", 2.0),
            _scorer("token-load", 1.0),
            _scorer("least-request", 1.0),
        ),
    }
)


def default_preset(has_kv_events: bool) -> str:
    """The preset a pool gets when its config names none: `kv-aware` when its engines
    publish KV events (precise prefix matches), else `kv-aware-approx`."""
    return "kv-aware" if has_kv_events else "kv-aware-approx"
