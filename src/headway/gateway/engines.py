"""Engine adapters: which Prometheus series of an engine's `/metrics` page the gateway
reads, and how they become one `EngineMetrics` value.

Metric names follow docs (REFERENCE.md, "Engine metrics used for routing"):

| signal        | vLLM                                  | SGLang                 | TRT-LLM serve                  | llama.cpp                      |
|---------------|---------------------------------------|------------------------|--------------------------------|--------------------------------|
| queued        | vllm:num_requests_waiting             | sglang:num_queue_reqs  | trtllm_num_requests_waiting    | llamacpp:requests_deferred     |
| running       | vllm:num_requests_running             | sglang:num_running_reqs| trtllm_num_requests_running    | llamacpp:requests_processing   |
| KV use (0..1) | vllm:kv_cache_usage_perc (older: vllm:gpu_cache_usage_perc) | sglang:token_usage | trtllm_kv_cache_utilization | llamacpp:kv_cache_usage_ratio (older builds) |
| geometry      | vllm:cache_config_info{block_size,num_gpu_blocks} | sglang:cache_config_info{page_size,num_pages} | - | - |
| LoRA          | vllm:lora_requests_info{running_lora_adapters,waiting_lora_adapters,max_lora} | - | - | - |

Rules: counts are summed over series (one per data-parallel engine), KV usage is the
mean over series, clamped to [0, 1]. vLLM sets `vllm:lora_requests_info` to the current
time for the label set in force and never removes old label sets, so the series with
the largest value is the current one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from headway.gateway.config import EngineKind


@dataclass(frozen=True)
class EngineMetrics:
    """What one scrape of an engine's `/metrics` told the gateway (None: not exported)."""

    num_queued_requests: int | None = None
    num_running_requests: int | None = None
    kv_cache_usage: float | None = None
    block_size: int | None = None
    num_gpu_blocks: int | None = None
    active_lora_adapters: frozenset[str] = frozenset()
    max_lora_adapters: int | None = None


@dataclass(frozen=True)
class EngineAdapter:
    """The series names of one engine kind (first name in a tuple that is present wins)."""

    kind: EngineKind
    queued: tuple[str, ...] = ()
    running: tuple[str, ...] = ()
    kv_usage: tuple[str, ...] = ()
    cache_info: str | None = None
    block_size_label: str = "block_size"
    num_blocks_label: str = "num_gpu_blocks"
    lora_info: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """Every series name this adapter reads."""
        out = [*self.queued, *self.running, *self.kv_usage]
        if self.cache_info:
            out.append(self.cache_info)
        if self.lora_info:
            out.append(self.lora_info)
        return tuple(out)

    @property
    def is_scraped(self) -> bool:
        return bool(self.names)

    def line_filter(self) -> re.Pattern[bytes]:
        """Matches exactly the sample lines of the series this adapter reads, so the
        rest of a page (histograms, HELP/TYPE lines) is never decoded nor parsed.

        The pattern starts with the literal newline (the page gets one prepended), which
        lets the regex engine skip ahead to line starts: ~7x faster than `^` with
        MULTILINE on a 170 KB page."""
        alternatives = "|".join(re.escape(n) for n in sorted(self.names, key=len, reverse=True))
        return re.compile(rf"\n((?:{alternatives})[{{ ][^\n]*)".encode())

    def read(self, text: str) -> EngineMetrics:
        """Parse the kept lines (already filtered) strictly with prometheus_client."""
        series: dict[str, list[tuple[Mapping[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                series.setdefault(sample.name, []).append((sample.labels, sample.value))
        block_size = num_blocks = None
        if self.cache_info and series.get(self.cache_info):
            labels = series[self.cache_info][0][0]
            block_size = _label_int(labels, self.block_size_label)
            num_blocks = _label_int(labels, self.num_blocks_label)
        adapters: frozenset[str] = frozenset()
        max_lora = None
        if self.lora_info and series.get(self.lora_info):
            labels = max(series[self.lora_info], key=lambda s: s[1])[0]
            adapters = frozenset(
                name.strip()
                for key in ("running_lora_adapters", "waiting_lora_adapters")
                for name in labels.get(key, "").split(",")
                if name.strip()
            )
            max_lora = _label_int(labels, "max_lora")
        usage = _first(series, self.kv_usage, _mean)
        return EngineMetrics(
            num_queued_requests=_as_count(_first(series, self.queued, sum)),
            num_running_requests=_as_count(_first(series, self.running, sum)),
            kv_cache_usage=None if usage is None else min(1.0, max(0.0, usage)),
            block_size=block_size,
            num_gpu_blocks=num_blocks,
            active_lora_adapters=adapters,
            max_lora_adapters=max_lora,
        )


def _mean(values: Iterable[float]) -> float:
    v = list(values)
    return sum(v) / len(v)


def _first(
    series: Mapping[str, list[tuple[Mapping[str, str], float]]],
    names: tuple[str, ...],
    combine: object,
) -> float | None:
    for name in names:
        samples = series.get(name)
        if samples:
            values = [v for _, v in samples if math.isfinite(v)]
            if values:
                return float(combine(values))  # type: ignore[operator]
    return None


def _as_count(value: float | None) -> int | None:
    return None if value is None else max(0, round(value))


def _label_int(labels: Mapping[str, str], key: str) -> int | None:
    raw = labels.get(key)
    try:
        value = int(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None


ADAPTERS: Mapping[EngineKind, EngineAdapter] = {
    EngineKind.VLLM: EngineAdapter(
        EngineKind.VLLM,
        queued=("vllm:num_requests_waiting",),
        running=("vllm:num_requests_running",),
        kv_usage=("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        cache_info="vllm:cache_config_info",
        lora_info="vllm:lora_requests_info",
    ),
    EngineKind.SGLANG: EngineAdapter(
        EngineKind.SGLANG,
        queued=("sglang:num_queue_reqs",),
        running=("sglang:num_running_reqs",),
        kv_usage=("sglang:token_usage",),
        cache_info="sglang:cache_config_info",
        block_size_label="page_size",
        num_blocks_label="num_pages",
    ),
    EngineKind.TRTLLM: EngineAdapter(
        EngineKind.TRTLLM,
        queued=("trtllm_num_requests_waiting",),
        running=("trtllm_num_requests_running",),
        kv_usage=("trtllm_kv_cache_utilization",),
    ),
    EngineKind.LLAMACPP: EngineAdapter(
        EngineKind.LLAMACPP,
        queued=("llamacpp:requests_deferred",),
        running=("llamacpp:requests_processing",),
        kv_usage=("llamacpp:kv_cache_usage_ratio",),
    ),
    EngineKind.OPENAI: EngineAdapter(EngineKind.OPENAI),  # a hosted API: nothing to scrape
}


def filter_page(pattern: re.Pattern[bytes], page: bytes) -> str:
    """The lines of `page` that `pattern` keeps, decoded and newline-terminated."""
    lines = pattern.findall(b"\n" + page)
    return (b"\n".join(lines) + b"\n").decode("utf-8", errors="replace") if lines else ""
