"""Value types: snapshots, request context, headers, decisions, scratch."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from headway.routing import (
    Decision,
    EndpointField,
    EndpointSnapshot,
    Headers,
    NoEndpointReason,
    Outcome,
    RequestContext,
    RequestScratch,
    ScratchKey,
    Slo,
)


def test_endpoint_fields_name_every_snapshot_field() -> None:
    names = {f.name for f in dataclasses.fields(EndpointSnapshot)}
    assert {f.value for f in EndpointField} == names - {"endpoint_id"}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"endpoint_id": ""}, "endpoint_id"),
        ({"num_queued_requests": -1}, "num_queued_requests"),
        ({"num_running_requests": -1}, "num_running_requests"),
        ({"num_in_flight_requests": -1}, "num_in_flight_requests"),
        ({"num_in_flight_tokens": -1}, "num_in_flight_tokens"),
        ({"kv_cache_usage": 1.01}, "kv_cache_usage"),
        ({"kv_cache_usage": -0.1}, "kv_cache_usage"),
        ({"kv_cache_usage": float("nan")}, "kv_cache_usage"),
        ({"max_lora_adapters": -1}, "max_lora_adapters"),
        ({"num_gpu_blocks": -1}, "num_gpu_blocks"),
        ({"block_size": 0}, "block_size"),
    ],
    ids=[
        "empty-id",
        "queued",
        "running",
        "in-flight",
        "in-flight-tokens",
        "kv-high",
        "kv-low",
        "kv-nan",
        "max-lora",
        "gpu-blocks",
        "block-size",
    ],
)
def test_snapshot_rejects(fields: dict[str, Any], field: str) -> None:
    fields.setdefault("endpoint_id", "e")
    with pytest.raises(ValueError, match=f"^{field}: "):
        EndpointSnapshot(**fields)


@pytest.mark.parametrize(
    ("fields", "capacity"),
    [
        ({}, None),
        ({"block_size": 16}, None),
        ({"num_gpu_blocks": 100}, None),
        ({"block_size": 16, "num_gpu_blocks": 0}, None),
        ({"block_size": 16, "num_gpu_blocks": 100}, 1600),
    ],
    ids=["unknown", "no-blocks", "no-block-size", "zero-blocks", "known"],
)
def test_kv_capacity_tokens(fields: dict[str, Any], capacity: int | None) -> None:
    assert EndpointSnapshot("e", **fields).kv_capacity_tokens == capacity


@pytest.mark.parametrize(
    ("updated_at", "now", "age"),
    [(None, 5.0, None), (3.0, 5.0, 2.0), (5.0, 4.0, 0.0)],
    ids=["never", "age", "clock-skew-clamped"],
)
def test_metrics_age(updated_at: float | None, now: float, age: float | None) -> None:
    assert EndpointSnapshot("e", metrics_updated_at=updated_at).metrics_age_s(now) == age


def test_snapshot_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        EndpointSnapshot("e").is_healthy = False  # type: ignore[misc]


@pytest.mark.parametrize(
    ("given", "name", "value"),
    [
        ({"X-Session-Id": "s1"}, "x-session-id", "s1"),
        ({"x-session-id": "s1"}, "X-SESSION-ID", "s1"),
        ([("A", "1"), ("a", "2")], "a", "1"),
        ({}, "a", None),
    ],
    ids=["lower-cased", "lookup-any-case", "repeated-first-wins", "absent"],
)
def test_headers(given: Any, name: str, value: str | None) -> None:
    assert Headers.of(given).get(name) == value


def test_headers_immutable_and_hashable() -> None:
    h = Headers.of({"A": "1", "B": "2"})
    assert list(h) == [("a", "1"), ("b", "2")] and len(h) == 2
    assert hash(RequestContext("r", "m", headers=h)) == hash(
        RequestContext("r", "m", headers=Headers.of({"a": "1", "b": "2"}))
    )
    with pytest.raises(ValueError, match="lower-case"):
        Headers((("A", "1"),))


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"model": ""}, "model"),
        ({"num_prompt_tokens_est": -1}, "num_prompt_tokens_est"),
        ({"max_output_tokens": -1}, "max_output_tokens"),
    ],
    ids=["empty-model", "negative-tokens", "negative-max-tokens"],
)
def test_context_rejects(fields: dict[str, Any], field: str) -> None:
    fields = {"request_id": "r", "model": "m", **fields}
    with pytest.raises(ValueError, match=f"^{field}: "):
        RequestContext(**fields)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"ttft_s": 0.0}, "ttft_s"),
        ({"tpot_s": -1.0}, "tpot_s"),
        ({"ttft_s": float("inf")}, "ttft_s"),
    ],
    ids=["zero-ttft", "negative-tpot", "infinite"],
)
def test_slo_rejects(fields: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        Slo(**fields)


def test_context_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RequestContext("r", "m").model = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("outcome", "endpoint_id", "reason", "field"),
    [
        (Outcome.ROUTED, None, None, "endpoint_id"),
        (Outcome.NO_ENDPOINT, "a", NoEndpointReason.NO_ENDPOINTS, "endpoint_id"),
        (Outcome.ROUTED, "a", NoEndpointReason.NO_ENDPOINTS, "reason"),
        (Outcome.NO_ENDPOINT, None, None, "reason"),
    ],
    ids=[
        "routed-without-endpoint",
        "none-with-endpoint",
        "routed-with-reason",
        "none-without-reason",
    ],
)
def test_decision_invariants(
    outcome: Outcome, endpoint_id: str | None, reason: NoEndpointReason | None, field: str
) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        Decision("p", outcome, 0.0, 1, 0, endpoint_id=endpoint_id, reason=reason)


def test_scratch_keys_are_write_once() -> None:
    key = ScratchKey[int]("k")
    scratch = RequestScratch(now=3.5)
    assert key not in scratch and scratch.now == 3.5
    with pytest.raises(KeyError):
        scratch.get(key)
    scratch.put(key, 7)
    assert key in scratch and scratch.get(key) == 7
    with pytest.raises(KeyError, match="already written"):
        scratch.put(key, 8)
