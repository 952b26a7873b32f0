"""The KV-event subscriber's diagnostics: the first-block hash check (against frames
and hashes produced by vLLM 0.32's own code, tests/core/vectors) and the index-stale
series existing from construction for every endpoint."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from headway.core.kv_events import BlockStored, EventBatch, decode_batch
from headway.gateway.config import CollectorsConfig, KvEventSource, config_from_mapping
from headway.gateway.kv_metrics import KvEventMetrics
from headway.gateway.kv_subscriber import FirstBlockCheck, KvEventSubscriber
from headway.gateway.server import Gateway
from headway.routing import KvBlockIndex

VECTORS = Path(__file__).resolve().parents[1] / "core" / "vectors"
EVENT_VECTORS = json.loads((VECTORS / "vllm_kv_events.json").read_text())
HASH_VECTORS = json.loads((VECTORS / "vllm_block_hashes.json").read_text())
ENDPOINT = "http://engine:8000"
METRIC = "headway_gateway_kv_event_hash_checks_total"


def vllm_payload(encoding: str, name: str) -> bytes:
    """The payload frame of a message vLLM's publisher sent (PYTHONHASHSEED unset)."""
    (msg,) = [m for m in EVENT_VECTORS["encodings"][encoding]["messages"] if m["name"] == name]
    return bytes.fromhex(msg["frames_hex"][-1])


# (encoding, message, gateway hash seed) -> counts; vLLM made these with no seed.
FRAME_CASES = {
    "map-prefill-no-seed": ("map_form", "engine_prefill_store", None, {"match": 1}),
    "map-prefill-seed-0": ("map_form", "engine_prefill_store", "0", {"mismatch": 1}),
    "array-prefill-no-seed": ("array_form", "engine_prefill_store", None, {"match": 1}),
    "map-bytes-hashes": ("map_form", "engine_byteshash_prefill_store", None, {"match": 1}),
    "map-evict-then-store": ("map_form", "engine_evict_and_store", None, {"match": 1}),
    "map-store-with-parent": ("map_form", "engine_decode_store_with_parent", None, {}),
    "map-bytes-with-parent": ("map_form", "engine_byteshash_decode_store_with_parent", None, {}),
    "map-lora-mm-salt": ("map_form", "engine_store_lora_mm_salt_session", None, {"skipped": 1}),
    "array-lora-mm-salt": ("array_form", "engine_store_lora_mm_salt_session", "0", {"skipped": 1}),
    "map-cache-reset": ("map_form", "engine_reset_prefix_cache", None, {}),
}


@pytest.mark.parametrize(
    ("encoding", "name", "seed", "expected"), FRAME_CASES.values(), ids=FRAME_CASES.keys()
)
def test_first_block_check_on_vllm_frames(
    encoding: str, name: str, seed: str | None, expected: dict[str, int]
) -> None:
    check = FirstBlockCheck(seed)
    check.check_batch(ENDPOINT, decode_batch(vllm_payload(encoding, name)))
    assert {r: n for (_, r), n in check.counts.items()} == expected


def _vector_event(case: dict[str, Any]) -> BlockStored:
    """The BlockStored vLLM publishes for the case's request (parent None: the
    request's first block starts the chain), from vLLM's own hashes and keys."""
    blocks = case["blocks"]
    bs = case["block_size"]

    def untagged(keys: Any) -> Any:
        if keys is None:
            return None
        return tuple(
            bytes.fromhex(k["$bytes"]) if isinstance(k, dict) else tuple(k) if isinstance(k, list) else k
            for k in keys
        )  # fmt: skip

    lora = case.get("request", {}).get("lora_request")
    return BlockStored(
        block_hashes=tuple(b["event_block_hash"] for b in blocks),
        parent_block_hash=None,
        token_ids=tuple(case["token_ids"][: len(blocks) * bs]),
        block_size=bs,
        lora_id=None if lora is None else lora["lora_int_id"],
        lora_name=None if lora is None else lora["lora_name"],
        extra_keys=tuple(untagged(b.get("event_extra_keys")) for b in blocks),
    )


# vLLM hash vector case -> the gateway's seed -> result
HASH_CASES = {
    "plain": ("request_plain_random300_bs16", None, "match"),
    "plain-bs128": ("request_plain_random384_bs128", None, "match"),
    "cache-salt": ("request_cache_salt_bs16", None, "match"),
    "seed-0-salt": ("seed0_request_salt_bs16", "0", "match"),
    "seed-0-engine-gateway-unset": ("seed0_range16_bs16", None, "mismatch"),
    "seed-0-both": ("seed0_range16_bs16", "0", "match"),
    "engine-unset-gateway-seed-0": ("range16_bs16", "0", "mismatch"),
    "engine-pickle-sha256": ("pickle_sha256_range16_bs16", None, "mismatch"),
    "lora": ("request_lora_bs16", None, "skipped"),
    "multimodal": ("request_mm_bs16", None, "skipped"),
    "lora-mm-salt": ("request_lora_mm_salt_bs16", None, "skipped"),
    "prompt-embeds": ("request_prompt_embeds_bs16", None, "skipped"),
}


@pytest.mark.parametrize(
    ("case_name", "seed", "expected"), HASH_CASES.values(), ids=HASH_CASES.keys()
)
def test_first_block_check_on_vllm_hashes(case_name: str, seed: str | None, expected: str) -> None:
    (case,) = [c for c in HASH_VECTORS["cases"] if c["name"] == case_name]
    assert FirstBlockCheck(seed).check(ENDPOINT, _vector_event(case)) == expected


def test_only_full_attention_group_0_gpu_chain_starts_are_checked() -> None:
    (case,) = [c for c in HASH_VECTORS["cases"] if c["name"] == "request_plain_random300_bs16"]
    ev = _vector_event(case)
    check = FirstBlockCheck(None)
    assert check.check(ENDPOINT, ev) == "match"
    for other in (
        replace(ev, group_idx=1),
        replace(ev, kv_cache_spec_kind="sliding_window"),
        replace(ev, medium="CPU"),
        replace(ev, token_ids=ev.token_ids[: ev.block_size - 1]),
        replace(ev, parent_block_hash=ev.block_hashes[0]),
    ):
        assert check.check(ENDPOINT, other) is None, other
    assert (
        check.check(ENDPOINT, replace(ev, group_idx=0, kv_cache_spec_kind="full_attention"))
        == "match"
    )


def _counter(registry: CollectorRegistry, endpoint: str, result: str) -> float:
    value = registry.get_sample_value(METRIC, {"endpoint": endpoint, "result": result})
    return 0.0 if value is None else value


def _subscriber(check: FirstBlockCheck, endpoints: list[str]) -> KvEventSubscriber:
    sources = {u: [KvEventSource(f"tcp://engine-{i}:5557")] for i, u in enumerate(endpoints)}
    return KvEventSubscriber(
        KvBlockIndex(), CollectorsConfig(), sources=sources, first_block_check=check
    )


def _feed(sub: KvEventSubscriber, endpoint: str, *payloads: bytes) -> None:
    (src,) = sub.sources(endpoint)

    async def run() -> None:
        for payload in payloads:
            seq = 0 if src.last_seq is None else src.last_seq + 1
            await sub.on_message(src, seq, payload)

    asyncio.run(run())


def test_mismatches_are_counted_and_logged_once_per_endpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """vLLM hashed without a seed, the gateway is configured with "0": every chain
    start mismatches; the batches are applied all the same."""
    registry = CollectorRegistry()
    check = FirstBlockCheck("0", KvEventMetrics.of(registry))
    other = "http://engine-b:8000"
    sub = _subscriber(check, [ENDPOINT, other])
    prefill = vllm_payload("map_form", "engine_prefill_store")
    with caplog.at_level(logging.WARNING, logger="headway.gateway.kv_subscriber"):
        _feed(sub, ENDPOINT, prefill, vllm_payload("map_form", "engine_evict_and_store"))
        _feed(sub, other, prefill)
    assert _counter(registry, ENDPOINT, "mismatch") == 2.0
    assert _counter(registry, other, "mismatch") == 1.0
    assert _counter(registry, ENDPOINT, "match") == 0.0
    warnings = [r.getMessage() for r in caplog.records if "hash check failed" in r.getMessage()]
    assert len(warnings) == 2, warnings  # once per endpoint
    published = decode_batch(prefill).events[0]
    assert isinstance(published, BlockStored)
    assert str(published.block_hashes[0]) in warnings[0] and "hash seed '0'" in warnings[0]
    assert sub.index.num_blocks(ENDPOINT) > 0 and sub.is_synced(ENDPOINT)


def test_matches_are_counted_and_a_reload_reuses_the_series() -> None:
    registry = CollectorRegistry()
    prefill = vllm_payload("map_form", "engine_prefill_store")
    for _ in range(2):  # a reload builds a new subscriber on the same registry
        check = FirstBlockCheck(None, KvEventMetrics.of(registry))
        _feed(_subscriber(check, [ENDPOINT]), ENDPOINT, prefill)
        assert check.count(ENDPOINT, "match") == 1
    assert KvEventMetrics.of(registry) is KvEventMetrics.of(registry)
    assert _counter(registry, ENDPOINT, "match") == 2.0
    assert _counter(registry, ENDPOINT, "mismatch") == 0.0


def test_a_failing_check_does_not_unsync_the_source(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(FirstBlockCheck):
        def check_batch(self, endpoint_id: str, batch: EventBatch) -> None:
            raise RuntimeError("bug in the check")

    sub = _subscriber(Broken(None), [ENDPOINT])
    _feed(sub, ENDPOINT, vllm_payload("map_form", "engine_prefill_store"))
    assert sub.is_synced(ENDPOINT) and sub.index.num_blocks(ENDPOINT) == 2
    assert any("hash check failed to run" in r.getMessage() for r in caplog.records)


# -- the index-stale series --------------------------------------------------------


def test_stale_state_is_reported_for_every_endpoint_at_construction() -> None:
    """Every endpoint's stale series is set when the subscriber is built (configured
    source, discovery pending, no source), not first when something goes stale; a
    source that applies seq 0 is in sync at once."""
    changes: list[tuple[str, bool]] = []
    configured, discovered, sourceless = "http://a:1", "http://b:1", "http://c:1"
    sub = KvEventSubscriber(
        KvBlockIndex(),
        CollectorsConfig(),
        sources={configured: [KvEventSource("tcp://a:5557")]},
        discover=[discovered],
        without_source=[sourceless],
        on_stale_change=lambda url, stale: changes.append((url, stale)),
    )
    assert sorted(changes) == [(configured, True), (discovered, True), (sourceless, True)]
    _feed(sub, configured, vllm_payload("map_form", "engine_prefill_store"))
    assert changes[-1] == (configured, False)


def test_gateway_metrics_have_the_stale_series_before_start() -> None:
    """1 until the source is in sync (with a replay socket: right after subscribing)."""
    urls = ["http://127.0.0.1:10", "http://127.0.0.1:9"]
    config = config_from_mapping(
        {
            "pools": [
                {
                    "model": "m",
                    "engine": "vllm",
                    "endpoints": [
                        {"url": u, "kv_events": f"tcp://127.0.0.1:{5557 + i}"}
                        for i, u in enumerate(urls)
                    ],
                }
            ]
        }
    )
    gateway = Gateway(config)
    text = gateway.metrics.render().decode()
    (family,) = [
        f
        for f in text_string_to_metric_families(text)
        if f.name == "headway_gateway_kv_index_stale"
    ]
    assert {s.labels["endpoint"]: s.value for s in family.samples} == dict.fromkeys(urls, 1.0)
