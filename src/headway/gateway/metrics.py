"""The gateway's Prometheus metrics, in a registry of its own (several gateways can
share a process, as in tests)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "headway_gateway_requests",
            "Completion requests by model, endpoint and HTTP status sent to the client.",
            ("model", "endpoint", "status"),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "headway_gateway_in_flight_requests",
            "Requests sent upstream and not yet finished.",
            registry=self.registry,
        )
        self.queued = Gauge(
            "headway_gateway_queued_requests",
            "Requests waiting in a pool's admission queue for an endpoint below its cap.",
            ("model",),
            registry=self.registry,
        )
        self.rejected = Counter(
            "headway_gateway_rejected_requests",
            "Requests answered 429 by admission, by pool and reason (queue_full, wait_timeout).",
            ("model", "reason"),
            registry=self.registry,
        )
        self.ttft = Histogram(
            "headway_gateway_ttft_seconds",
            "Streamed requests: time from arrival to the first byte relayed to the client.",
            ("model",),
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.e2e = Histogram(
            "headway_gateway_e2e_seconds",
            "Time from arrival to the end of the response.",
            ("model",),
            buckets=_LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.tokens = Counter(
            "headway_gateway_tokens",
            "Tokens by kind (prompt, completion), from upstream usage.",
            ("model", "kind"),
            registry=self.registry,
        )

        self.ejections = Counter(
            "headway_gateway_ejections",
            "Endpoints ejected by passive outlier detection (incl. failed half-open probes).",
            ("endpoint",),
            registry=self.registry,
        )
        self.ejected = Gauge(
            "headway_gateway_ejected",
            "1 while an endpoint is ejected (back-off or half-open), else 0.",
            ("endpoint",),
            registry=self.registry,
        )
        self.retries = Counter(
            "headway_gateway_retries",
            "Upstream attempts retried on another endpoint, by pool and reason "
            "(connect_error, upstream_5xx, timeout, read_error).",
            ("model", "reason"),
            registry=self.registry,
        )

        # -- collectors (docs/collectors.md)
        self.metrics_stale = Gauge(
            "headway_gateway_endpoint_metrics_stale",
            "1 while an endpoint's scraped engine metrics are stale (no successful scrape "
            "for collectors.stale_after_intervals intervals), else 0.",
            ("endpoint",),
            registry=self.registry,
        )
        self.kv_index_stale = Gauge(
            "headway_gateway_kv_index_stale",
            "1 while the KV-event index cannot vouch for an endpoint (no source yet, "
            "or events missed and not replayed), else 0.",
            ("endpoint",),
            registry=self.registry,
        )
        self.kv_event_batches = Counter(
            "headway_gateway_kv_event_batches",
            "KV-event batches applied to the index, by endpoint.",
            ("endpoint",),
            registry=self.registry,
        )
        self.kv_index_blocks = Gauge(
            "headway_gateway_kv_index_blocks",
            "KV blocks the KV-event index says an endpoint holds (after its last batch).",
            ("endpoint",),
            registry=self.registry,
        )
        self.predicted_cached_tokens = Counter(
            "headway_gateway_predicted_cached_tokens",
            "Prompt tokens the KV-event index predicted the chosen engine would serve from "
            "its prefix cache, over requests whose engine reported cached_tokens.",
            ("model",),
            registry=self.registry,
        )
        self.engine_cached_tokens = Counter(
            "headway_gateway_engine_cached_tokens",
            "Prompt tokens the engine reported served from its prefix cache "
            "(usage.prompt_tokens_details.cached_tokens), over the same requests.",
            ("model",),
            registry=self.registry,
        )
        self.cache_predictions = Counter(
            "headway_gateway_cache_predictions",
            "Requests with both a predicted and an engine-reported cached token count, by "
            "outcome: exact, over (predicted more than served), under.",
            ("model", "outcome"),
            registry=self.registry,
        )

        # Labelled children bound once, not looked up per request (`labels()` locks
        # and builds a key each call); the label values are a small, fixed set.
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._e2e_children: dict[str, Any] = {}

    def request_done(self, model: str, endpoint: str, status: int, e2e_s: float) -> None:
        """Count a finished completion request and observe its end-to-end time."""
        key = (model, endpoint, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(
                model, endpoint, str(status)
            )
        counter.inc()
        histogram = self._e2e_children.get(model)
        if histogram is None:
            histogram = self._e2e_children[model] = self.e2e.labels(model)
        histogram.observe(e2e_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
