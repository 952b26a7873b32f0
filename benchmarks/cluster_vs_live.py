"""Fidelity of the cluster simulation: one workload and routing policy run both live
(`headway serve` in front of a `headway sim` fleet, driven by `headway bench`'s runner)
and in virtual time (`headway.cluster`), side by side.

Both runs use the same engines (model, GPU, KV blocks), the same routing preset, the
same seeded sessions and the same arrival schedule: the bench plans session i at
`arrival_offsets_s(...)[i]` in wall seconds at rate `rate * time_scale`, which is the
model-time schedule stretched by 1 / time_scale, so the cluster gets those offsets
times `time_scale`. Live latencies are converted to model time (times `time_scale`);
the gateway's 250 ms wall scrape interval is `0.25 * time_scale` s of model time.

The live path has a fixed front-end cost per request that the engine model leaves
out (HTTP, the gateway's and the engine's parsing, tokenization and hashing, the proxy
hop: ~15 ms of wall time). It is measured from lone requests, live against simulated
(their TTFT difference, median), and passed to the cluster as
`ClusterConfig.frontend_overhead_s` for the load run. The lone requests are sent twice
and the second pass counts: the first pass tokenizes cold prompts, which the load run,
whose prompts share system prompts, mostly does not (both passes are reported). A
probe of known system prompts with new questions (the load run's mix) was tried and
overestimated: 1.62 ms of model time where the load run's TTFT p50 showed 0.48 ms
(time-scale 0.1); the all-warm pass measured 0.47 ms in a run that showed 1.06 ms.
Run-to-run noise on a shared machine is of that order. On a quiet machine
(time-scale 0.25) one run measured warm 0.72 ms, known system prompt + new question
4.54 ms, cold 3.91 ms, while its load run showed 1.86 ms at TTFT p50 and 1.24 ms at
p90: a lone request's front end is not the loaded one's, and the warm probe is the
closer (and lower) estimate.

Printed for each: TTFT p50/p90, TPOT p50, output tokens/s (model time) and the
engines' prefix-cache hit rate, live against simulated with the measured front-end
overhead; the target is agreement within 10% on each.

    .venv/bin/python benchmarks/cluster_vs_live.py --out benchmarks/results/cluster_vs_live.json
    .venv/bin/python benchmarks/cluster_vs_live.py --tiny     # CI smoke configuration
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from headway.bench.api import BenchConfig, BenchTarget, run_bench
from headway.cluster.simulation import ClusterConfig, ClusterSimulation, ReplicaGroup
from headway.core.arrivals import arrival_offsets_s
from headway.core.engine_factory import DEFAULT_PRECISION, EngineSpec
from headway.core.serving_metrics import RequestRecord, summarize
from headway.core.workloads import build_workload
from headway.resources.catalog import load_catalog
from headway.resources.tokenizer import default_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import prefix_cache_counters, write_result

MODEL = "llama-3.1-8b"
GATEWAY_SCRAPE_INTERVAL_S = 0.25  # the gateway's default, wall seconds
TARGET_REL_ERROR = 0.10
METRICS = ("ttft_p50_ms", "ttft_p90_ms", "tpot_p50_ms", "output_tokens_per_s", "prefix_hit_rate")


@contextmanager
def _process(args: list[str], ready: Path, deadline_s: float = 30.0) -> Iterator[dict[str, Any]]:
    """Start a `headway` subcommand and yield its ready-file JSON; stop it after."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    proc = subprocess.Popen([sys.executable, "-m", "headway.cli", *args], stderr=log, stdout=log)
    try:
        end = time.monotonic() + deadline_s
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > end:
                log.seek(0)
                raise RuntimeError(f"{args[0]} did not start: {log.read().decode()[-2000:]}")
            time.sleep(0.05)
        yield json.loads(ready.read_text())
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _prefix_counters(urls: list[str]) -> tuple[float, float]:
    """Sum of vllm:prefix_cache_queries_total and _hits_total over the replicas."""
    queries = hits = 0.0
    for url in urls:
        text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
        q, h = prefix_cache_counters(text)
        queries += q
        hits += h
    return queries, hits


def _figures(summary: dict[str, Any], scale: float, hit_rate: float) -> dict[str, float]:
    """Headline figures in model time (`scale` converts measured seconds to model)."""
    return {
        "ttft_p50_ms": summary["median_ttft_ms"] * scale,
        "ttft_p90_ms": summary["p90_ttft_ms"] * scale,
        "tpot_p50_ms": summary["median_tpot_ms"] * scale,
        "output_tokens_per_s": summary["output_throughput"] / scale,
        "prefix_hit_rate": hit_rate,
    }


def _live(
    args: argparse.Namespace, tmp: Path
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """The probe's per-call TTFTs (model s) in its cold and warm passes, and the load
    run's figures, live."""
    sim_args = [
        "sim", "--replicas", str(args.replicas), "--port", "0", "--model", MODEL,
        "--gpu", args.gpu, "--precision", args.precision,
        "--time-scale", str(args.time_scale), "--kv-events-port", "0",
        "--enable-prompt-tokens-details", "--num-gpu-blocks-override", str(args.blocks),
        "--seed", str(args.seed), "--ready-file", str(tmp / "sim.json"),
    ]  # fmt: skip
    with _process(sim_args, tmp / "sim.json") as fleet:
        urls = [r["url"] for r in fleet["replicas"]]
        gw_args = [
            "serve", "--port", "0", "--endpoints", ",".join(urls), "--model", MODEL,
            "--profile", args.profile, "--ready-file", str(tmp / "gw.json"),
        ]  # fmt: skip
        with _process(gw_args, tmp / "gw.json") as gateway:

            def bench(rate: float, num_requests: int) -> dict[str, Any]:
                config = BenchConfig(
                    targets=(BenchTarget(gateway["url"], args.profile, tuple(urls)),),
                    model=MODEL,
                    workload="shared-prefix",
                    workload_params=_workload_params(args),
                    request_rate=rate * args.time_scale,
                    num_requests=num_requests,
                    reset_cache=True,
                    seed=args.seed,
                    show_progress=False,
                    command=" ".join(sys.argv),
                )
                point: dict[str, Any] = asyncio.run(run_bench(config))["arms"][0]["points"][0]
                return point

            cold = bench(args.probe_rate, args.probe_requests)
            probe = bench(args.probe_rate, args.probe_requests)  # the same calls again
            q0, h0 = _prefix_counters(urls)
            point = bench(args.rate, args.num_requests)
            q1, h1 = _prefix_counters(urls)

    def ttfts(p: dict[str, Any]) -> dict[str, float]:
        return {
            r["call_id"]: r["ttft_s"] * args.time_scale
            for r in p["requests"]
            if r["ttft_s"] is not None
        }

    hit_rate = (h1 - h0) / (q1 - q0) if q1 > q0 else 0.0
    return ttfts(cold), ttfts(probe), _figures(point["summary"], args.time_scale, hit_rate)


def _workload_params(args: argparse.Namespace) -> dict[str, object]:
    return {
        "num_groups": args.num_groups,
        "prompts_per_group": 8,
        "system_prompt_tokens": args.system_prompt_tokens,
        "question_tokens": 128,
        "output_tokens": args.output_tokens,
    }


def _simulated(
    args: argparse.Namespace, rate: float, num_requests: int, frontend_overhead_s: float = 0.0
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-call TTFTs (s) and the run's figures, in the cluster simulation."""
    tokenizer = default_tokenizer()
    workload = build_workload("shared-prefix", _workload_params(args), tokenizer)
    sessions = list(workload.sessions(num_requests, args.seed))
    # The bench's schedule at its wall rate, mapped back to model time.
    wall = arrival_offsets_s(
        len(sessions), rate * args.time_scale, 1.0, np.random.default_rng(args.seed)
    )
    arrivals = zip((wall * args.time_scale).tolist(), sessions, strict=True)
    engine = EngineSpec(
        model=MODEL, gpu=args.gpu, precision=args.precision, num_gpu_blocks_override=args.blocks
    )
    config = ClusterConfig(
        groups=(ReplicaGroup(engine, args.replicas),),
        routing={"preset": args.profile},
        scrape_interval_s=GATEWAY_SCRAPE_INTERVAL_S * args.time_scale,
        kv_event_delay_s=0.002 * args.time_scale,
        seed=args.seed,
        frontend_overhead_s=frontend_overhead_s,
    )
    sim = ClusterSimulation(config, load_catalog(), tokenizer, tokenizer.word_token_ids())
    run = sim.run(arrivals)
    records: list[RequestRecord] = list(run.records)
    ttft = {
        r.call_id: r.first_choice_at - r.sent_at for r in records if r.first_choice_at is not None
    }
    return ttft, _figures(summarize(records, run.duration_s), 1.0, run.prefix_hit_rate)


def _rel(measured: float, predicted: float) -> float:
    if measured == 0:
        return 0.0 if predicted == 0 else float("inf")
    return abs(predicted - measured) / abs(measured)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--gpu", default="h100")
    p.add_argument("--precision", default=DEFAULT_PRECISION)
    p.add_argument("--blocks", type=int, default=4000, help="--num-gpu-blocks-override")
    p.add_argument("--profile", default="kv-aware")
    p.add_argument("--time-scale", type=float, default=0.5)
    p.add_argument("--rate", type=float, default=16.0, help="sessions/s of model time")
    p.add_argument("--num-requests", type=int, default=400)
    p.add_argument("--num-groups", type=int, default=12)
    p.add_argument("--system-prompt-tokens", type=int, default=2048)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument(
        "--probe-rate", type=float, default=0.5, help="lone requests: sessions/s of model time"
    )
    p.add_argument("--probe-requests", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="CI smoke configuration")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.tiny:
        args.replicas, args.num_requests, args.num_groups = 2, 24, 3
        args.system_prompt_tokens, args.output_tokens = 256, 8
        args.probe_rate, args.probe_requests = 4.0, 3

    probe_sim, _ = _simulated(args, args.probe_rate, args.probe_requests)
    with tempfile.TemporaryDirectory() as d:
        probe_cold, probe_live, live = _live(args, Path(d))

    def overhead_s(probe: dict[str, float]) -> float:
        # What the live path adds to a lone request outside the engine model.
        return float(np.median([probe[c] - probe_sim[c] for c in probe if c in probe_sim]))

    frontend_s = max(0.0, overhead_s(probe_live))
    cold_ms = 1000.0 * overhead_s(probe_cold)
    _, plain = _simulated(args, args.rate, args.num_requests)
    _, simulated = _simulated(args, args.rate, args.num_requests, frontend_s)
    overhead_ms = 1000.0 * frontend_s
    rows: list[dict[str, Any]] = []
    print(
        f"front-end overhead of the live path (lone requests): {overhead_ms:.2f} ms model "
        f"time (cold prompts: {cold_ms:.2f} ms), simulated as frontend_overhead_s"
    )
    print(f"{'metric':<22}{'live':>10}{'simulated':>11}{'error':>8}{'no-ovh':>10}{'error':>8}")
    for name in METRICS:
        a, b, c = live[name], simulated[name], plain[name]
        err = _rel(a, b)
        raw = _rel(a, c)
        rows.append(
            {
                "metric": name,
                "live": a,
                "simulated": b,
                "rel_error": err,
                "simulated_without_overhead": c,
                "raw_rel_error": raw,
            }
        )
        print(f"{name:<22}{a:>10.4g}{b:>11.4g}{err:>8.1%}{c:>10.4g}{raw:>8.1%}")
    worst = max(r["rel_error"] for r in rows)
    verdict = "met" if worst <= TARGET_REL_ERROR else "NOT met"
    print(
        f"largest relative error {worst:.1%} with the front-end overhead simulated "
        f"(target <= {TARGET_REL_ERROR:.0%}: {verdict}); without it "
        f"{max(r['raw_rel_error'] for r in rows):.1%}"
    )
    write_result(
        args.out,
        {
            "benchmark": "cluster_vs_live",
            "config": vars(args) | {"out": None},
            "front_end_overhead_ms": overhead_ms,
            "front_end_overhead_cold_ms": cold_ms,
            "rows": rows,
        },
        inputs=["src/headway"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
