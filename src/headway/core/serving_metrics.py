"""Serving metrics of a benchmark run, computed the way vLLM's `vllm bench serve` does
(`vllm/benchmarks/serve.py: calculate_metrics`), from what the client saw of each call.

Definitions (all latencies in the summary are milliseconds; record times are seconds on
one monotonic clock):

* A request *succeeded* when `error is None`; only successful requests contribute to the
  latency metrics and token totals. `failed` counts the others, by kind in
  `failures_by_kind`.
* TTFT = `first_choice_at - sent_at`: the first SSE message with non-empty `choices`,
  even if its content is empty (vLLM). `ttft_content` ends at the first non-empty content.
* E2EL = `last_token_at - sent_at`: the last content chunk, not the usage chunk.
* TPOT = (E2EL - TTFT) / (output_tokens - 1), only for requests with more than one output
  token. For goodput a request with <= 1 output token has TPOT 0 (vLLM).
* NTPOT (normalized TPOT) = E2EL / output_tokens, for requests with >= 1 output token:
  what guidellm calls its time per output token, TTFT included.
* ITL = the gaps between successive content chunks (`chunk_times`), pooled over requests.
  A chunk may carry several tokens (speculative decoding); vLLM's ITL is per chunk too.
  vLLM's client also counts the gap from a role-only first message to the first content
  chunk as an ITL; ours does not (chunk_times are content chunks only).
* ITL per token, only for requests whose `chunk_tokens` are known (continuous usage
  stats): a chunk of k tokens arriving g after the previous content chunk contributes k
  gaps of g/k; the first chunk contributes none (its tokens arrive with the TTFT).
  vLLM has no per-token ITL; guidellm's "inter-token latency" is the per-request mean
  (E2EL - TTFT) / (output_tokens - 1), which is our TPOT. Spreading each chunk's gap over
  its tokens keeps the pooled distribution per token (its mean over one request equals
  that request's TPOT when the first chunk holds one token), so percentiles stay
  comparable with a non-speculative run. None when no request has chunk token counts.
* Statistics: numpy mean, median, std (population, ddof 0) and linear-interpolated
  percentiles 90/95/99, like vLLM. The statistics of an empty set are 0 (vLLM computes
  `np.mean(xs or 0)`), never a division by zero.
* Throughputs are over `duration_s` (the benchmark's wall time); a non-positive duration
  gives 0 throughputs.
* Goodput: a request is *good* when it succeeded and meets every SLO given (metric <= SLO,
  inclusive as in vLLM; a missing TTFT or E2EL misses its SLO). `request_goodput` = good
  requests per second; `slo_attainment` = good / all requests (failed requests count as
  misses). Both are None when no `GoodputSlo` is given (vLLM reports goodput only when
  configured); an empty `GoodputSlo()` makes every successful request good.
* `cached_token_share` = cached prompt tokens / prompt tokens over successful requests.
* `max_output_tokens_per_s` / `max_concurrent_requests`: vLLM's peaks over one-second
  buckets from the first send (successful requests; see `peak_per_second`).
* Cost (REFERENCE.md tokenomics): $ per 1M tokens = (GPU $/h x GPUs) / (tokens/s x 3600)
  x 1e6, for input tokens, output tokens, and *useful* output tokens (output of requests
  that are good; without SLOs, of every successful request). None where the throughput
  is 0 (the cost is unbounded).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

MS_PER_S = 1000.0
# The summary's statistic suffixes, in order: mean, median, std, then percentiles.
PERCENTILES = (90, 95, 99)
LATENCY_METRICS = ("ttft", "ttft_content", "tpot", "ntpot", "itl", "e2el")


@dataclass(frozen=True)
class RequestRecord:
    """What the client saw of one call (times are seconds on one monotonic clock)."""

    call_id: str
    session_id: str
    sent_at: float
    first_choice_at: float | None  # first SSE message with non-empty choices (vLLM's TTFT end)
    first_content_at: float | None  # first non-empty content (ttft_content)
    chunk_times: tuple[float, ...]  # arrival time of each content chunk
    chunk_tokens: tuple[int, ...] | None  # tokens per content chunk (continuous usage), else None
    last_token_at: float | None  # last content chunk (E2E end; not the usage chunk)
    prompt_tokens: int | None  # from usage
    output_tokens: int | None  # from usage (fallback: tokenizer)
    cached_tokens: int | None  # usage.prompt_tokens_details.cached_tokens
    # None = success; else a kind: "http_429", "http_5xx", "timeout", "connection",
    # "cancelled", "invalid_stream", ...
    error: str | None = None
    status: int | None = None

    @property
    def is_success(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class GoodputSlo:
    """Per-request service-level objectives in milliseconds; None = not constrained."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2el_ms: float | None = None

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "tpot_ms", "e2el_ms"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"goodput.{name}: must be > 0, got {value}")


@dataclass(frozen=True)
class CostInputs:
    """What the serving hardware costs: GPUs serving the run and their hourly price."""

    gpu_count: int
    gpu_hourly_usd: float

    def __post_init__(self) -> None:
        if self.gpu_count < 1:
            raise ValueError(f"gpu_count: must be >= 1, got {self.gpu_count}")
        if not self.gpu_hourly_usd >= 0:
            raise ValueError(f"gpu_hourly_usd: must be >= 0, got {self.gpu_hourly_usd}")


@dataclass(frozen=True)
class RequestTimings:
    """The per-request figures derived from one record (seconds; None = not defined)."""

    ttft_s: float | None
    ttft_content_s: float | None
    e2el_s: float | None
    tpot_s: float | None  # only for > 1 output token
    ntpot_s: float | None  # only for >= 1 output token
    output_tokens: int
    itl_s: tuple[float, ...]
    itl_per_token_s: tuple[float, ...] | None  # None when chunk token counts are unknown


def output_tokens_of(record: RequestRecord) -> int:
    """The record's output tokens: from usage, else the chunk token counts, else one
    token per content chunk (a lower bound when chunks hold several tokens)."""
    if record.output_tokens is not None:
        return record.output_tokens
    if record.chunk_tokens is not None:
        return sum(record.chunk_tokens)
    return len(record.chunk_times)


def per_token_gaps(chunk_times: Sequence[float], chunk_tokens: Sequence[int]) -> list[float]:
    """Per-token inter-token gaps: a chunk of k tokens arriving g after the previous chunk
    contributes k gaps of g/k. Chunks without tokens are skipped."""
    if len(chunk_times) != len(chunk_tokens):
        raise ValueError(
            f"chunk_tokens: {len(chunk_tokens)} counts for {len(chunk_times)} chunk times"
        )
    gaps: list[float] = []
    prev: float | None = None
    for t, k in zip(chunk_times, chunk_tokens, strict=True):
        if k <= 0:
            continue
        if prev is not None:
            gaps.extend([(t - prev) / k] * k)
        prev = t
    return gaps


def request_timings(record: RequestRecord) -> RequestTimings:
    """The per-request latencies of a record (vLLM's definitions, see the module doc)."""
    sent = record.sent_at
    # A stream whose first choices message was not seen separately ends TTFT at content.
    first = record.first_choice_at
    if first is None:
        first = record.first_content_at
    ttft = None if first is None else first - sent
    ttft_content = None if record.first_content_at is None else record.first_content_at - sent
    end = record.last_token_at if record.last_token_at is not None else first
    e2el = None if end is None else end - sent
    n_out = output_tokens_of(record)
    tpot = None
    if n_out > 1 and e2el is not None and ttft is not None:
        tpot = (e2el - ttft) / (n_out - 1)
    ntpot = e2el / n_out if n_out >= 1 and e2el is not None else None
    times = record.chunk_times
    itl = tuple(float(b - a) for a, b in pairwise(times))
    per_token = None
    # Counts that do not pair up with the chunk times are treated as unknown rather than
    # failing the whole summary.
    if record.chunk_tokens is not None and len(record.chunk_tokens) == len(times):
        per_token = tuple(per_token_gaps(times, record.chunk_tokens))
    return RequestTimings(ttft, ttft_content, e2el, tpot, ntpot, n_out, itl, per_token)


def _stats_ms(name: str, values_s: Sequence[float]) -> dict[str, float]:
    """vLLM's statistics of a list of seconds, in ms; all 0 for an empty list."""
    arr = np.asarray(values_s if len(values_s) else [0.0], dtype=np.float64) * MS_PER_S
    out = {
        f"mean_{name}_ms": float(np.mean(arr)),
        f"median_{name}_ms": float(np.median(arr)),
        f"std_{name}_ms": float(np.std(arr)),
    }
    for p in PERCENTILES:
        out[f"p{p}_{name}_ms"] = float(np.percentile(arr, p))
    return out


def _is_good(t: RequestTimings, slo: GoodputSlo) -> bool:
    """Meets every SLO given (inclusive). TPOT of a <= 1-token answer counts as 0 (vLLM)."""
    if slo.ttft_ms is not None and (t.ttft_s is None or t.ttft_s * MS_PER_S > slo.ttft_ms):
        return False
    if slo.tpot_ms is not None and (t.tpot_s or 0.0) * MS_PER_S > slo.tpot_ms:
        return False
    return not (slo.e2el_ms is not None and (t.e2el_s is None or t.e2el_s * MS_PER_S > slo.e2el_ms))


def _usd_per_1m(cost: CostInputs, tokens_per_s: float) -> float | None:
    """REFERENCE.md: (GPU $/h x GPUs) / (tokens/s x 3600) x 1e6; None when nothing was
    produced (unbounded cost)."""
    if tokens_per_s <= 0:
        return None
    return cost.gpu_hourly_usd * cost.gpu_count / (tokens_per_s * 3600.0) * 1e6


def peak_per_second(records: Sequence[RequestRecord]) -> tuple[float, int]:
    """vLLM's peak figures: the most output tokens in one whole-second bucket, and the
    most requests active in one bucket, buckets counted from the first send.

    A content chunk counts its `chunk_tokens` when known, else one token (vLLM counts one
    per chunk). A request is active in every bucket from its send to its last token."""
    if not records:
        return 0.0, 0
    start = min(r.sent_at for r in records)
    ends = [r.last_token_at if r.last_token_at is not None else r.sent_at for r in records]
    num_buckets = int(np.ceil(max(ends) - start)) + 1
    tokens = np.zeros(num_buckets)
    active = np.zeros(num_buckets, dtype=np.int64)
    for r, end in zip(records, ends, strict=True):
        counts = r.chunk_tokens if r.chunk_tokens is not None else (1,) * len(r.chunk_times)
        for t, k in zip(r.chunk_times, counts, strict=False):
            bucket = int(t - start)
            if 0 <= bucket < num_buckets:
                tokens[bucket] += k
        active[int(r.sent_at - start) : int(end - start) + 1] += 1
    return float(tokens.max()), int(active.max())


def summarize(
    records: Sequence[RequestRecord],
    duration_s: float,
    *,
    goodput: GoodputSlo | None = None,
    cost: CostInputs | None = None,
) -> dict[str, object]:
    """The summary of one benchmark point (vLLM key names, latencies in ms), JSON-ready."""
    lists: dict[str, list[float]] = {name: [] for name in LATENCY_METRICS}
    itl_per_token: list[float] = []
    has_per_token = False
    completed = failed = good = 0
    total_input = total_output = total_cached = total_useful_output = 0
    failures: Counter[str] = Counter()
    for record in records:
        if not record.is_success:
            failed += 1
            failures[str(record.error)] += 1
            continue
        completed += 1
        t = request_timings(record)
        total_output += t.output_tokens
        total_input += record.prompt_tokens or 0
        total_cached += record.cached_tokens or 0
        for name, value in (
            ("ttft", t.ttft_s),
            ("ttft_content", t.ttft_content_s),
            ("tpot", t.tpot_s),
            ("ntpot", t.ntpot_s),
            ("e2el", t.e2el_s),
        ):
            if value is not None:
                lists[name].append(value)
        lists["itl"].extend(t.itl_s)
        if t.itl_per_token_s is not None:
            has_per_token = True
            itl_per_token.extend(t.itl_per_token_s)
        if goodput is None or _is_good(t, goodput):
            good += 1
            total_useful_output += t.output_tokens

    def per_s(x: float) -> float:
        return x / duration_s if duration_s > 0 else 0.0

    summary: dict[str, object] = {
        "duration": float(duration_s),
        "num_requests": completed + failed,
        "completed": completed,
        "failed": failed,
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "total_useful_output_tokens": total_useful_output,
        "request_throughput": per_s(completed),
        "request_goodput": per_s(good) if goodput is not None else None,
        "output_throughput": per_s(total_output),
        "total_token_throughput": per_s(total_input + total_output),
    }
    for name in LATENCY_METRICS:
        summary.update(_stats_ms(name, lists[name]))
    per_token_stats = _stats_ms("itl_per_token", itl_per_token)
    for key, value in per_token_stats.items():
        summary[key] = value if has_per_token else None
    summary["cached_token_share"] = total_cached / total_input if total_input > 0 else 0.0
    num_requests = completed + failed
    summary["slo_attainment"] = (
        (good / num_requests if num_requests else 0.0) if goodput is not None else None
    )
    summary["failures_by_kind"] = dict(sorted(failures.items()))
    peak_tokens, peak_concurrency = peak_per_second([r for r in records if r.is_success])
    summary["max_output_tokens_per_s"] = peak_tokens
    summary["max_concurrent_requests"] = peak_concurrency
    if cost is not None:
        summary["cost_per_1m_input_tokens_usd"] = _usd_per_1m(cost, per_s(total_input))
        summary["cost_per_1m_output_tokens_usd"] = _usd_per_1m(cost, per_s(total_output))
        summary["cost_per_1m_useful_output_tokens_usd"] = _usd_per_1m(
            cost, per_s(total_useful_output)
        )
    return summary


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def request_rows(records: Sequence[RequestRecord], started_at: float) -> list[dict[str, object]]:
    """The per-request arrays of a benchmark point (section "requests" of results.json):
    seconds, `start_s` counted from `started_at`, rounded to the microsecond."""
    rows: list[dict[str, object]] = []
    for r in records:
        t = request_timings(r)
        rows.append(
            {
                "call_id": r.call_id,
                "session_id": r.session_id,
                "start_s": _rounded(r.sent_at - started_at),
                "ttft_s": _rounded(t.ttft_s),
                "ttft_content_s": _rounded(t.ttft_content_s),
                "e2el_s": _rounded(t.e2el_s),
                "itl_s": [round(x, 6) for x in t.itl_s],
                "prompt_tokens": r.prompt_tokens,
                "output_tokens": r.output_tokens,
                "cached_tokens": r.cached_tokens,
                "error": r.error,
            }
        )
    return rows
