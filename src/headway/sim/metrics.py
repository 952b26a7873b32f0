"""A replica's Prometheus metrics under vLLM's names (vllm/v1/metrics/loggers.py).

Gauges and counters are read from the engine at scrape time (a custom collector, so
they are never stale); latency histograms are observed as requests progress. Times are
wall-clock seconds as the replica experiences them (model time / time-scale).
Simulator-only extras use the `headway_sim:` prefix.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from headway.core.engine import Engine

# Bucket boundaries as in vLLM's loggers.
TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                  2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
                 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)  # fmt: skip
REQUEST_LATENCY_BUCKETS_S = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                             40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip


@dataclass
class ReplicaCounters:
    """Counts kept by the HTTP layer (the engine keeps its own)."""

    num_requests_success: dict[str, int]
    num_aborted_requests: int = 0
    num_aborted_freed_blocks: int = 0
    num_injected_errors: int = 0


class TokenHistogram(Collector):
    """A histogram of one label set for observations made once per streamed token
    (inter-token latency): `observe` is a bisect and two additions, where
    prometheus_client's `Histogram.observe` takes two locks and walks the buckets in
    Python (about 2 us, a few percent of the simulator's CPU per token).

    Scraped as prometheus_client's `Histogram` is: the same bucket, count, sum and
    `_created` samples (float values), from a custom collector. Observations come
    from the one event loop (no lock). NaN is not observed (never a latency).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: dict[str, str],
        buckets: tuple[float, ...],
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labels = labels
        self._bounds = (*buckets, math.inf) if buckets[-1] != math.inf else buckets
        self._le = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._created = time.time()
        registry.register(self)

    def observe(self, amount: float) -> None:
        """Count `amount` in the first bucket whose upper bound is >= it."""
        self._counts[bisect.bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=list(self._labels))
        cumulative, acc = [], 0.0
        for le, count in zip(self._le, self._counts, strict=True):
            acc += count
            cumulative.append((le, acc))
        family.add_metric(list(self._labels.values()), cumulative, self._sum)
        family.add_sample(self._name + "_created", dict(self._labels), self._created)
        yield family


class _EngineCollector(Collector):
    def __init__(
        self,
        engine: Engine,
        labels: dict[str, str],
        cache_info: dict[str, str],
        counters: ReplicaCounters,
    ) -> None:
        self._engine = engine
        self._labels = labels
        self._cache_info = cache_info
        self._counters = counters

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=list(self._labels))
        g.add_metric(list(self._labels.values()), value)
        return g

    def _counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        c = CounterMetricFamily(name, doc, labels=list(self._labels))
        c.add_metric(list(self._labels.values()), value)
        return c

    def collect(self) -> Iterator[Metric]:
        e, c = self._engine, self._engine.counters
        yield self._gauge(
            "vllm:num_requests_running", "Number of requests in model execution batches.",
            e.num_running,
        )  # fmt: skip
        yield self._gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.",
            e.num_waiting,
        )  # fmt: skip
        yield self._gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", e.kv_usage
        )
        # vLLM labels this info gauge with the cache config and an empty `engine`, and
        # no `model_name`.
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=[*self._cache_info, "engine"],
        )
        info.add_metric([*self._cache_info.values(), ""], 1.0)
        yield info
        yield self._counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", c.num_prompt_tokens
        )
        yield self._counter(
            "vllm:generation_tokens", "Number of generation tokens processed.",
            c.num_generation_tokens,
        )  # fmt: skip
        yield self._counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.",
            c.num_prefix_query_tokens,
        )  # fmt: skip
        yield self._counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.",
            c.num_prefix_hit_tokens,
        )  # fmt: skip
        yield self._counter(
            "vllm:prompt_tokens_cached", "Number of cached prompt tokens (local prefix cache).",
            c.num_prefix_hit_tokens,
        )  # fmt: skip
        yield self._counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine.",
            c.num_preemptions,
        )  # fmt: skip
        success = CounterMetricFamily(
            "vllm:request_success", "Count of successfully processed requests.",
            labels=[*self._labels, "finished_reason"],
        )  # fmt: skip
        # vLLM pre-creates every finished_reason at zero.
        reasons = dict.fromkeys(("stop", "length", "abort", "error", "repetition"), 0)
        reasons.update(self._counters.num_requests_success)
        for reason, n in reasons.items():
            success.add_metric([*self._labels.values(), reason], n)
        yield success
        yield self._counter(
            "headway_sim:aborted_requests", "Requests aborted because the client went away.",
            self._counters.num_aborted_requests,
        )  # fmt: skip
        yield self._counter(
            "headway_sim:aborted_freed_blocks", "KV blocks freed at once by aborts.",
            self._counters.num_aborted_freed_blocks,
        )  # fmt: skip
        yield self._counter(
            "headway_sim:injected_errors", "Requests failed by fault injection.",
            self._counters.num_injected_errors,
        )  # fmt: skip
        yield self._counter("headway_sim:engine_steps", "Engine steps run.", c.num_steps)


class ReplicaMetrics:
    """Per-replica registry (several replicas share one process)."""

    def __init__(
        self,
        engine: Engine,
        model_name: str,
        cache_info: dict[str, str],
        counters: ReplicaCounters,
    ) -> None:
        # auto_describe: the registry learns every collector's series names when it
        # registers it, so `render(names)` can restrict the page to those series.
        self.registry = CollectorRegistry(auto_describe=True)
        labels = {"model_name": model_name, "engine": "0"}
        label_names = list(labels)
        self.registry.register(_EngineCollector(engine, labels, cache_info, counters))

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Callable[[float], None]:
            h = Histogram(name, doc, label_names, registry=self.registry, buckets=buckets)
            return h.labels(**labels).observe

        self.observe_ttft = hist(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
            TTFT_BUCKETS_S,
        )  # fmt: skip
        self.observe_itl = TokenHistogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
            labels, ITL_BUCKETS_S, self.registry,
        ).observe  # fmt: skip
        self.observe_e2e = hist(
            "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS_S,
        )  # fmt: skip
        self.observe_queue = hist(
            "vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase.",
            REQUEST_LATENCY_BUCKETS_S,
        )  # fmt: skip
        self.observe_prefill = hist(
            "vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase.",
            REQUEST_LATENCY_BUCKETS_S,
        )  # fmt: skip
        self.observe_decode = hist(
            "vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase.",
            REQUEST_LATENCY_BUCKETS_S,
        )  # fmt: skip

    def render(self, names: Sequence[str] = ()) -> bytes:
        """The exposition page; with `names`, only those series (sample names), as
        prometheus_client's exposition apps answer `GET /metrics?name[]=...`: a scraper
        that asks for a few gauges does not have every histogram rendered on the loop
        that also runs the engine (vLLM renders its page in the API server process,
        away from the engine core, and ignores the query)."""
        registry = self.registry.restricted_registry(names) if names else self.registry
        return generate_latest(registry)
