"""Shared builders, a fake clock and Hypothesis strategies for the routing tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from headway.routing import (
    ApproxPrefixIndex,
    EndpointSnapshot,
    KvBlockIndex,
    RequestContext,
    RoutingResources,
)

MODEL = "llama"


def snap(endpoint_id: str, **fields: Any) -> EndpointSnapshot:
    """A healthy endpoint serving MODEL unless `fields` say otherwise."""
    fields.setdefault("models", frozenset({MODEL}))
    return EndpointSnapshot(endpoint_id, **fields)


def ctx(**fields: Any) -> RequestContext:
    fields.setdefault("request_id", "req-1")
    fields.setdefault("model", MODEL)
    return RequestContext(**fields)


class FakeClock:
    """A timer that moves only when told to: `advance` inside fake plugins."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start
        self.num_reads = 0

    def __call__(self) -> float:
        self.num_reads += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def zero_timer() -> float:
    return 0.0


# -- Hypothesis strategies ---------------------------------------------------------------

_IDS = [f"ep-{i:02d}" for i in range(12)]
_MODELS = [MODEL, "qwen"]
_ADAPTERS = ["sql", "chat"]


@st.composite
def snapshots(draw: st.DrawFn, endpoint_id: str) -> EndpointSnapshot:
    return EndpointSnapshot(
        endpoint_id=endpoint_id,
        models=frozenset(draw(st.sets(st.sampled_from(_MODELS)))),
        lora_adapters=frozenset(draw(st.sets(st.sampled_from(_ADAPTERS)))),
        is_healthy=draw(st.booleans()),
        is_ejected=draw(st.booleans()),
        num_queued_requests=draw(st.integers(0, 50)),
        num_running_requests=draw(st.integers(0, 50)),
        kv_cache_usage=draw(st.none() | st.floats(0.0, 1.0)),
        num_in_flight_requests=draw(st.integers(0, 1000)),
        num_in_flight_tokens=draw(st.integers(0, 10**6)),
        metrics_updated_at=draw(st.none() | st.floats(0.0, 1e6)),
        active_lora_adapters=frozenset(draw(st.sets(st.sampled_from(_ADAPTERS)))),
        max_lora_adapters=draw(st.none() | st.integers(0, 3)),
        block_size=draw(st.none() | st.sampled_from([16, 32])),
        num_gpu_blocks=draw(st.none() | st.integers(0, 5000)),
        is_metrics_stale=draw(st.booleans()),
    )


@st.composite
def endpoint_sets(draw: st.DrawFn, min_size: int = 0) -> tuple[EndpointSnapshot, ...]:
    """Endpoints with unique ids, in the ascending-id order the framework hands plugins."""
    ids = sorted(draw(st.sets(st.sampled_from(_IDS), min_size=min_size)))
    return tuple(draw(snapshots(i)) for i in ids)


# Prompts are leading runs of one chain, so they share prefixes with what
# `populated_resources` holds.
CHAIN = tuple(range(1000, 1012))
_prefixes = st.integers(0, len(CHAIN)).map(lambda n: CHAIN[:n])

contexts = st.builds(
    RequestContext,
    request_id=st.just("req"),
    model=st.sampled_from(_MODELS),
    lora_adapter=st.none() | st.sampled_from(_ADAPTERS),
    num_prompt_tokens_est=st.integers(0, 100_000),
    block_hashes=_prefixes,
    chunk_hashes=_prefixes,
    session_id=st.none() | st.sampled_from(["s1", "s2", "s3"]),
)


def populated_resources() -> RoutingResources:
    """Indexes where endpoint i holds the first i % len(CHAIN) hashes of CHAIN, and
    every third endpoint's KV events are stale."""
    kv, approx = KvBlockIndex(), ApproxPrefixIndex(64)
    for i, endpoint_id in enumerate(_IDS):
        kv.store(endpoint_id, CHAIN[: i % len(CHAIN)])
        approx.record(endpoint_id, CHAIN[: (i * 5) % len(CHAIN)])
        kv.mark_stale(endpoint_id, i % 3 == 0)
    return RoutingResources(kv_index=kv, approx_index=approx)


score_maps = st.dictionaries(
    st.sampled_from(_IDS), st.floats(0.0, 1.0) | st.sampled_from([0.0, 0.5, 1.0]), min_size=1
)
