"""Metrics of the KV-event subscriber (gateway/kv_subscriber.py).

One `KvEventMetrics` per Prometheus registry: `KvEventMetrics.of(registry)` creates
the metric objects on first use and returns the same ones afterwards, so a subscriber
rebuilt on a config reload counts into the series the previous one used (registering
a metric name twice in one registry is an error in prometheus_client).
"""

from __future__ import annotations

import weakref
from typing import ClassVar

from prometheus_client import CollectorRegistry, Counter

HASH_CHECK_MATCH = "match"
HASH_CHECK_MISMATCH = "mismatch"
HASH_CHECK_SKIPPED = "skipped"


class KvEventMetrics:
    """The subscriber's metric objects in one registry."""

    _by_registry: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, KvEventMetrics]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        self.hash_checks = Counter(
            "headway_gateway_kv_event_hash_checks",
            "BlockStored events whose first block starts a chain (no parent) and carries "
            "token ids, re-hashed by the gateway (prompt.hash_seed, sha256_cbor), by "
            "endpoint and result: match, mismatch (the engine's hash seed or hash scheme "
            "differs from the gateway's: precise prefix routing will miss), skipped (the "
            "block has extra keys the gateway cannot rebuild: LoRA, multimodal, prompt "
            "embeddings).",
            ("endpoint", "result"),
            registry=registry,
        )

    @classmethod
    def of(cls, registry: CollectorRegistry) -> KvEventMetrics:
        """The registry's metrics, created on first use."""
        metrics = cls._by_registry.get(registry)
        if metrics is None:
            metrics = cls._by_registry[registry] = cls(registry)
        return metrics
