"""The gateway's Prometheus metrics, in a registry of its own (several gateways can
share a process, as in tests)."""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from headway.gateway.accounting import RequestRecord

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Per-token times: decode steps run in milliseconds to tens of them (vLLM's ITL
# buckets start at 10 ms; a fast small model goes below).
_TOKEN_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05,
    0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5,
)  # fmt: skip


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
        # Per-request latencies: bucket counts kept by `GapHistogram` (no lock or
        # child lookup per observation), exported as the same histograms.
        self.ttft = GapHistogram(
            "headway_gateway_ttft_seconds",
            "Streamed requests: time from arrival to the first byte relayed to the client.",
            ("model", "endpoint"),
            _LATENCY_BUCKETS_S,
        )
        self.registry.register(self.ttft)
        self.tpot = GapHistogram(
            "headway_gateway_tpot_seconds",
            "Streamed requests with > 1 completion token: (e2e - TTFT) / (completion_tokens - 1).",
            ("model", "endpoint"),
            _TOKEN_BUCKETS_S,
        )
        self.registry.register(self.tpot)
        self.itl = GapHistogram(
            "headway_gateway_inter_token_latency_seconds",
            "Streamed requests: gaps between successive chunks relayed to the client "
            "(one per chunk after the first; a chunk usually carries one token).",
            ("model", "endpoint"),
            _TOKEN_BUCKETS_S,
        )
        self.registry.register(self.itl)
        self.e2e = GapHistogram(
            "headway_gateway_e2e_seconds",
            "Time from arrival to the end of the response.",
            ("model", "endpoint"),
            _LATENCY_BUCKETS_S,
        )
        self.registry.register(self.e2e)
        self.tokens = Counter(
            "headway_gateway_tokens",
            "Tokens by kind (prompt, cached, completion), from upstream usage "
            "(cached: prompt_tokens_details.cached_tokens, a part of prompt).",
            ("model", "kind"),
            registry=self.registry,
        )
        self.outcomes = Counter(
            "headway_gateway_request_outcomes",
            "Completion requests by outcome (ok, stream_error, client_error, rejected, "
            "no_endpoint, upstream_error, cancelled, error), as in the access log.",
            ("model", "outcome"),
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
        self._outcome_children: dict[tuple[str, str], Any] = {}
        # (model, endpoint) -> its (ttft, tpot, e2e) series
        self._latency_children: dict[tuple[str, str], tuple[_Series, _Series, _Series]] = {}
        self._token_children: dict[tuple[str, str], Any] = {}

    def count_tokens(self, model: str, kind: str, num_tokens: int) -> None:
        """`headway_gateway_tokens_total{model,kind}` += num_tokens (the child bound
        at its first use, so a kind never counted has no series)."""
        key = (model, kind)
        child = self._token_children.get(key)
        if child is None:
            child = self._token_children[key] = self.tokens.labels(model, kind)
        child.inc(num_tokens)

    def request_done(self, record: RequestRecord) -> None:
        """Count a finished completion request and observe its latencies."""
        model, endpoint, status = record.pool, record.endpoint, record.status
        key = (model, endpoint, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(
                model, endpoint, str(status)
            )
        counter.inc()
        okey = (model, record.outcome)
        outcome = self._outcome_children.get(okey)
        if outcome is None:
            outcome = self._outcome_children[okey] = self.outcomes.labels(*okey)
        outcome.inc()
        lkey = (model, endpoint)
        children = self._latency_children.get(lkey)
        if children is None:  # every series shows from the first request on
            children = self._latency_children[lkey] = (
                self.ttft.series(lkey),
                self.tpot.series(lkey),
                self.e2e.series(lkey),
            )
        ttft, tpot, e2e = children
        e2e_s = record.e2e_s
        if e2e_s is not None:
            e2e.observe(e2e_s)
        ttft_s = record.ttft_s
        if ttft_s is not None:
            ttft.observe(ttft_s)
            tpot_s = record.tpot_s  # (streams only, like TTFT)
            if tpot_s is not None:
                tpot.observe(tpot_s)
        if record.chunk_gaps_s:
            self.itl.add(lkey, record.chunk_gaps_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Series:
    """One label set's histogram: counts per bucket (not cumulative; the last is for
    values above every bound) and the sum of the values."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # bucket `le` holds <= le
        self.total += value


class GapHistogram:
    """A Prometheus histogram whose bucket counts are kept here and exported through a
    collector: observing costs a bisect, not `Histogram.observe`'s lock and child
    lookup (~1.3 us against ~0.2 us), and a whole request's inter-chunk gaps are added
    at once (a stream has one gap per chunk). Single-threaded use, like the rest of
    the gateway's event loop."""

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Iterable[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.bounds = tuple(float(b) for b in buckets)
        self._les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        self._series: dict[tuple[str, ...], _Series] = {}

    def series(self, label_values: tuple[str, ...]) -> _Series:
        """The label set's series (created empty, and so exported, at the first call)."""
        series = self._series.get(label_values)
        if series is None:
            series = self._series[label_values] = _Series(self.bounds)
        return series

    def add(self, label_values: tuple[str, ...], values: Iterable[float]) -> None:
        series = self.series(label_values)
        counts, bounds, find = series.counts, self.bounds, bisect.bisect_left
        total = 0.0
        for value in values:
            counts[find(bounds, value)] += 1
            total += value
        series.total += total

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for label_values, series in self._series.items():
            cumulative = itertools.accumulate(series.counts)
            family.add_metric(
                list(label_values), list(zip(self._les, cumulative, strict=True)), series.total
            )
        yield family

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
