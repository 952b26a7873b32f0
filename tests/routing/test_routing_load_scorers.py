"""queue-depth, running-requests, kv-usage, token-load and lora-affinity scorers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from routing_helpers import ctx, snap, zero_timer

from headway.routing import RequestScratch, build_handler, default_registry

CAP = {"block_size": 16, "num_gpu_blocks": 100}  # 1,600 tokens of KV


def scores(type_: str, *fields: dict[str, Any], **c: Any) -> dict[str, float]:
    """`type_` may carry one `:`-separated param value, e.g. "token-load:capacity"."""
    type_, _, normalize = type_.partition(":")
    spec = default_registry().get(type_)
    plugin = spec.create(spec.params_type(normalize=normalize) if normalize else None)
    eps = tuple(snap(f"e{i}", **f) for i, f in enumerate(fields))
    out = plugin.score(ctx(**c), eps, RequestScratch(0.0))  # type: ignore[union-attr]
    return {k: round(v, 6) for k, v in out.items()}


@pytest.mark.parametrize(
    ("type_", "fields", "expected"),
    [
        (
            "queue-depth",
            [{"num_queued_requests": 4}, {"num_queued_requests": 1}, {}],
            [0.0, 0.75, 1.0],
        ),
        ("queue-depth", [{"num_queued_requests": 3}] * 2, [1.0, 1.0]),
        (
            "queue-depth",
            [{"num_queued_requests": 4}, {"num_queued_requests": 0, "is_metrics_stale": True}],
            [1.0, 0.5],
        ),
        (
            "running-requests",
            [{"num_running_requests": 8}, {"num_running_requests": 2}],
            [0.0, 0.75],
        ),
        (
            "running-requests",
            [{"num_running_requests": 8, "is_metrics_stale": True}, {"num_running_requests": 2}],
            [0.5, 1.0],
        ),
        ("kv-usage", [{"kv_cache_usage": 0.25}, {"kv_cache_usage": 1.0}], [0.75, 0.0]),
        ("kv-usage", [{"kv_cache_usage": 0.9, "is_metrics_stale": True}], [0.5]),
        ("kv-usage", [{"kv_cache_usage": None}, {"kv_cache_usage": 0.75}], [0.5, 0.25]),
        ("token-load:capacity", [{"num_in_flight_tokens": 400, **CAP}, {**CAP}], [0.75, 1.0]),
        ("token-load:capacity", [{"num_in_flight_tokens": 4000, **CAP}], [0.0]),
        ("token-load", [{"num_in_flight_tokens": 400, **CAP}, {**CAP}], [0.0, 1.0]),
        ("token-load", [{"num_in_flight_tokens": 400}, {"num_in_flight_tokens": 100}], [0.0, 0.75]),
        (
            "token-load",
            [{"num_in_flight_tokens": 400, **CAP}, {"num_in_flight_tokens": 100}],
            [0.0, 0.75],
        ),
        ("token-load", [{"num_in_flight_tokens": 7}] * 3, [1.0, 1.0, 1.0]),
    ],
    ids=[
        "queue-relative",
        "queue-all-equal",
        "queue-stale-neutral",
        "running-relative",
        "running-stale-neutral",
        "kv-absolute",
        "kv-stale-neutral",
        "kv-unknown-neutral",
        "tokens-vs-capacity",
        "tokens-over-capacity-clamped",
        "tokens-relative-by-default",
        "tokens-relative-without-capacity",
        "tokens-relative-when-any-capacity-unknown",
        "tokens-all-equal",
    ],
)
def test_load_scorers(type_: str, fields: list[dict[str, Any]], expected: list[float]) -> None:
    assert scores(type_, *fields) == {f"e{i}": s for i, s in enumerate(expected)}


ACTIVE = {"active_lora_adapters": frozenset({"sql"}), "max_lora_adapters": 2}
FREE = {"active_lora_adapters": frozenset({"chat"}), "max_lora_adapters": 2}
FULL = {"active_lora_adapters": frozenset({"chat", "code"}), "max_lora_adapters": 2}
UNKNOWN: dict[str, Any] = {}


@pytest.mark.parametrize(
    ("adapter", "expected"),
    [("sql", [1.0, 0.5, 0.0, 0.25]), (None, [1.0, 1.0, 1.0, 1.0]), ("chat", [0.5, 1.0, 1.0, 0.25])],
    ids=["adapter-active-then-free-slot", "no-adapter-all-equal", "active-on-two"],
)
def test_lora_affinity(adapter: str | None, expected: list[float]) -> None:
    got = scores("lora-affinity", ACTIVE, FREE, FULL, UNKNOWN, lora_adapter=adapter)
    assert got == {f"e{i}": s for i, s in enumerate(expected)}


@pytest.mark.parametrize(
    ("holder_in_flight", "expected"),
    [(1, "has-sql"), (3, "free-slot")],
    ids=["holder-wins-at-equal-load", "busy-holder-loses-to-a-free-slot"],
)
def test_lora_affinity_in_a_profile(holder_in_flight: int, expected: str) -> None:
    """lora-affinity 1 : least-request 1. At equal load the endpoint with the adapter
    active wins; a holder with 3x the requests scores (1 + 0) / 2 < (0.5 + 2/3) / 2."""
    profile = {"filters": ["serves-model"], "scorers": ["lora-affinity", "least-request"]}
    handler = build_handler({"profiles": {"p": profile}})
    eps = (
        snap("has-sql", num_in_flight_requests=holder_in_flight, **ACTIVE),
        snap("free-slot", num_in_flight_requests=1, **FREE),
        snap("full", num_in_flight_requests=1, **FULL),
    )
    c = ctx(lora_adapter="sql")
    picks = {
        handler.decide(
            c, eps, now=0.0, rng=np.random.default_rng(seed), timer=zero_timer
        ).decision.endpoint_id
        for seed in range(8)
    }
    assert picks == {expected}
