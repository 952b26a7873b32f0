"""Fidelity of the cluster simulation: one workload and routing policy run both live
(`headway serve` in front of a `headway sim` fleet, driven by `headway bench`'s runner)
and in virtual time (`headway.cluster`), side by side.

Both runs use the same engines (model, GPU, KV blocks), the same routing preset, the
same seeded sessions and the same arrival schedule: the bench plans session i at
`arrival_offsets_s(...)[i]` in wall seconds at rate `rate * time_scale`, which is the
model-time schedule stretched by 1 / time_scale, so the cluster gets those offsets
times `time_scale`. Live latencies are converted to model time (times `time_scale`);
the gateway's 250 ms wall scrape interval is `0.25 * time_scale` s of model time.

The live path costs more per call than the engine model: HTTP, the gateway's and the
engine's parsing, tokenization and hashing, the proxy hop, the step-end write and its
relay. It is measured in two calibration runs, one just before the load run and one
just after (so that a machine whose load drifts is sampled on both sides of it): the
load run's workload and rate with other seeds (`seed + 1`, `seed + 2`: other sessions,
other arrival times; none of their calls is compared), live and in the cluster without
overhead. Each call's excess, live TTFT minus simulated TTFT (`excess_s`, negatives as
0), is one sample; the cluster draws one of the pooled samples per call
(`ClusterConfig.frontend_overhead_samples_s`, seeded). The samples' median as a
constant (`frontend_overhead_s`) and the lone requests' excess (sent twice: cold, then
warm; the warm pass) are reported beside it, for comparison.

Why at load and per call. A load run (time-scale 0.25, 400 calls, the shared machine
at a quiet moment) timed per call with debug stamps (the gateway's arrival and first
upstream byte, the replica's arrival and its step's admission, the first token's step
end from `headway_debug_timing`, the client's send and first chunk; a diagnostic
wrapper around the processes, not part of this script), medians in model ms, with the
simulator's causal admission (a step takes only calls that arrived by its start,
commit 1acaac6):

    client -> gateway 0.17, gateway -> replica's engine 1.75 (p90 2.29; lone warm
    0.39, lone cold 4.2), wait at the replica 0.64 (p90 2.80), first step 4.11, step
    end -> gateway 0.09 (p90 0.40), gateway -> client 0.12; TTFT 7.23 (p90 9.58).
    Replica arrival -> step end 4.88 (p90 7.16); the cluster's TTFT without overhead
    4.79 (p90 7.07); per call their difference has median 0.00, mean -0.05, p10/p90
    -1.67/+1.77 ms (the two sides route and batch a few calls differently).
    Front end (TTFT minus replica arrival -> step end) p10/50/90: 1.70/2.26/3.05;
    excess (live minus simulated TTFT) p10/50/90: 0.42/2.30/4.14.

So the engine part agrees (in distribution; call by call up to that routing spread)
and the front end adds to it. Under load it costs ~4x a lone warm request's (each
call's new question is tokenized by the gateway and the engine, whose event loops are
busy with other streams). On that run's own calls: the front end drawn per call lands
at TTFT p50/p90 7.24/9.69, the excess drawn per call (what this script does) at
7.44/10.24 (+3%/+7%: the excess also carries the routing spread, so its tail is a
little wide), the median excess as a constant at 7.10/9.38 (-2%/-2%). On a busier
machine the front end is skewed (one run, just before commit 1acaac6: p10/50/90
1.76/2.76/6.52 ms) and the constant falls short (TTFT p50/p90 -6%/-20% on that run's
calls) where the drawn excess stays close (+2%/+5%). Hence the drawn excess; the front
end proper would be better still, but needs the replica's arrival time in the chunk's
debug stamps, which `headway sim` does not send.

Before that commit the simulator let a call join a step computed after the call
arrived but dated from the previous step's end (a third of the calls, a median 1.09
ms early), which shortened the live engine part (p50/p90 4.19/5.42 against the
model's 4.79/7.07) by about what a busy loop added to the front end, so a constant
median then matched best (6.94/9.22 for 7.04/9.24 live) and the distribution
overshot p90 by 14%. The lone warm probe (0.7-1.4 ms) falls 13-30% short at p50.

Printed for each: TTFT p50/p90, TPOT p50, output tokens/s (model time) and the
engines' prefix-cache hit rate, live against simulated with the front end drawn per
call (and with its median as a constant, without any, and with the lone requests');
the target is agreement within 10% on each. The live figures are wall-clock on
whatever machine runs them: a run in which the bench client fell behind its schedule
(another process had the CPU) is flagged as not representative, and each calibration
run's own figures are in the JSON (their excess medians differed by 0.6 ms in one run,
hence two). Runs of the committed command on a shared 2-CPU machine (other agents'
tests and engines running), TTFT p50/p90 error with the front end drawn per call:
1.3/1.2%, 0.0/2.0%, 3.1/7.8%, 4.5/5.4%, 2.5/7.6% (the simulated p90 a little high: a
call's excess also holds the per-call spread of routing between the two sides); with
the median constant: 6.2/10.6%, 5.6/11.0%, 1.9/4.1%, 0.1/4.8%, 1.5/3.1%; with the lone
warm probe: 21-29% at p50. With one calibration run, before the load run only:
3.9/3.1%, 10.3/12.6%, 2.0/1.9%; three more runs were flagged (the client fell behind)
and missed the target by far at p90. One run at a quiet moment (load average ~0.3):
1.0/5.2% drawn, 1.9/4.0% with the median constant, 22.5% with the lone probe. TPOT p50,
throughput and hit rate: <= 0.2% in every unflagged run.

    .venv/bin/python benchmarks/cluster_vs_live.py --time-scale 0.25 --probe-rate 2 \
        --out benchmarks/results/cluster_vs_live.json
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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Live:
    """What the live runs gave: per-call TTFTs (model seconds) of the lone probe's
    cold and warm passes and of the calibration runs (before and after the load run,
    in `_calibration_seeds` order), and the load run's figures."""

    probe_cold_ttft_s: dict[str, float]
    probe_warm_ttft_s: dict[str, float]
    calibration_ttft_s: tuple[dict[str, float], ...]
    figures: dict[str, float]
    # The bench client's own schedule keeping in the calibration and load runs: a
    # client that fell behind means a machine too busy for the live figures to count.
    clients: dict[str, dict[str, Any]]


def _calibration_seeds(args: argparse.Namespace) -> tuple[int, int]:
    """The calibration runs' seeds, before and after the load run: never the load
    run's, so none of the compared calls is used."""
    return int(args.seed) + 1, int(args.seed) + 2


def _live(args: argparse.Namespace, tmp: Path) -> Live:
    """Run the lone probe (twice), the calibration runs and the load run, live."""
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

            def bench(rate: float, num_requests: int, seed: int) -> dict[str, Any]:
                config = BenchConfig(
                    targets=(BenchTarget(gateway["url"], args.profile, tuple(urls)),),
                    model=MODEL,
                    workload="shared-prefix",
                    workload_params=_workload_params(args),
                    request_rate=rate * args.time_scale,
                    num_requests=num_requests,
                    reset_cache=True,
                    seed=seed,
                    show_progress=False,
                    command=" ".join(sys.argv),
                )
                point: dict[str, Any] = asyncio.run(run_bench(config))["arms"][0]["points"][0]
                return point

            cold = bench(args.probe_rate, args.probe_requests, args.seed)
            probe = bench(args.probe_rate, args.probe_requests, args.seed)  # the same again
            # The calibration runs: the load run's rate, other seeds (other sessions,
            # other arrival times); their calls are never compared. One before the
            # load run and one after, so that a machine whose load drifts during the
            # benchmark is sampled on both sides of the compared run.
            before_seed, after_seed = _calibration_seeds(args)
            before = bench(args.rate, args.calibration_requests, before_seed)
            q0, h0 = _prefix_counters(urls)
            point = bench(args.rate, args.num_requests, args.seed)
            q1, h1 = _prefix_counters(urls)
            after = bench(args.rate, args.calibration_requests, after_seed)

    def ttfts(p: dict[str, Any]) -> dict[str, float]:
        return {
            r["call_id"]: r["ttft_s"] * args.time_scale
            for r in p["requests"]
            if r["ttft_s"] is not None
        }

    hit_rate = (h1 - h0) / (q1 - q0) if q1 > q0 else 0.0
    return Live(
        ttfts(cold),
        ttfts(probe),
        (ttfts(before), ttfts(after)),
        _figures(point["summary"], args.time_scale, hit_rate),
        {
            "calibration before": before["client"],
            "load": point["client"],
            "calibration after": after["client"],
        },
    )


def _workload_params(args: argparse.Namespace) -> dict[str, object]:
    return {
        "num_groups": args.num_groups,
        "prompts_per_group": 8,
        "system_prompt_tokens": args.system_prompt_tokens,
        "question_tokens": 128,
        "output_tokens": args.output_tokens,
    }


def _simulated(
    args: argparse.Namespace,
    rate: float,
    num_requests: int,
    frontend_overhead_s: float = 0.0,
    seed: int | None = None,
    frontend_overhead_samples_s: tuple[float, ...] = (),
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-call TTFTs (s) and the run's figures, in the cluster simulation (`seed`:
    the bench's seed for sessions and arrivals, `args.seed` if None; the front end a
    constant or drawn per call from samples)."""
    seed = args.seed if seed is None else seed
    tokenizer = default_tokenizer()
    workload = build_workload("shared-prefix", _workload_params(args), tokenizer)
    sessions = list(workload.sessions(num_requests, seed))
    # The bench's schedule at its wall rate, mapped back to model time.
    wall = arrival_offsets_s(
        len(sessions), rate * args.time_scale, 1.0, np.random.default_rng(seed)
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
        seed=seed,
        frontend_overhead_s=frontend_overhead_s,
        frontend_overhead_samples_s=frontend_overhead_samples_s,
    )
    sim = ClusterSimulation(config, load_catalog(), tokenizer, tokenizer.word_token_ids())
    run = sim.run(arrivals)
    records: list[RequestRecord] = list(run.records)
    ttft = {
        r.call_id: r.first_choice_at - r.sent_at for r in records if r.first_choice_at is not None
    }
    return ttft, _figures(summarize(records, run.duration_s), 1.0, run.prefix_hit_rate)


def excess_s(
    live_ttft_s: Mapping[str, float], simulated_ttft_s: Mapping[str, float]
) -> list[float]:
    """Per call, live TTFT minus simulated TTFT (same call id, both in model seconds;
    calls missing on either side are left out), in ascending order.

    Per call, not a difference of percentiles: both sides send the same call at the
    same instant, so the difference is what the live path adds to that call."""
    return sorted(t - simulated_ttft_s[c] for c, t in live_ttft_s.items() if c in simulated_ttft_s)


def median_excess_s(
    live_ttft_s: Mapping[str, float], simulated_ttft_s: Mapping[str, float]
) -> float:
    """The median of `excess_s` (0 if no call is on both sides)."""
    excess = excess_s(live_ttft_s, simulated_ttft_s)
    return float(np.median(excess)) if excess else 0.0


def overhead_samples_s(
    live_ttft_s: Mapping[str, float], simulated_ttft_s: Mapping[str, float]
) -> tuple[float, ...]:
    """The front-end samples the cluster draws from: `excess_s`, negatives (a call the
    live engine served faster than the model) as 0."""
    return tuple(max(0.0, x) for x in excess_s(live_ttft_s, simulated_ttft_s))


def _percentile_ms(ttft_s: Mapping[str, float], q: float) -> float:
    return float(np.percentile(list(ttft_s.values()), q)) * 1000.0 if ttft_s else 0.0


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
    p.add_argument(
        "--calibration-requests",
        type=int,
        default=200,
        help="sessions of each calibration run (the load run's rate; seeds + 1 before "
        "and + 2 after the load run)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="CI smoke configuration")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.tiny:
        args.replicas, args.num_requests, args.num_groups = 2, 24, 3
        args.system_prompt_tokens, args.output_tokens = 256, 8
        args.probe_rate, args.probe_requests = 4.0, 3
        args.calibration_requests = 8

    probe_sim, _ = _simulated(args, args.probe_rate, args.probe_requests)
    calibration_sims = [
        _simulated(args, args.rate, args.calibration_requests, seed=seed)
        for seed in _calibration_seeds(args)
    ]
    with tempfile.TemporaryDirectory() as d:
        live_runs = _live(args, Path(d))
    live = live_runs.figures

    # What the live path adds outside the engine model: per call under the load (the
    # method: its distribution; its median as a constant for comparison), and for lone
    # requests (reported, for comparison).
    pairs = list(zip(live_runs.calibration_ttft_s, calibration_sims, strict=True))
    samples_s = tuple(
        sorted(x for live_s, (sim_s, _) in pairs for x in overhead_samples_s(live_s, sim_s))
    )
    median_s = float(np.median(samples_s)) if samples_s else 0.0
    lone_s = max(0.0, median_excess_s(live_runs.probe_warm_ttft_s, probe_sim))
    cold_s = median_excess_s(live_runs.probe_cold_ttft_s, probe_sim)
    _, plain = _simulated(args, args.rate, args.num_requests)
    _, simulated = _simulated(
        args, args.rate, args.num_requests, frontend_overhead_samples_s=samples_s
    )
    _, with_median = _simulated(args, args.rate, args.num_requests, median_s)
    _, with_lone = _simulated(args, args.rate, args.num_requests, lone_s)
    p10, p50, p90 = (1000.0 * float(np.percentile(samples_s or [0.0], q)) for q in (10, 50, 90))
    rows: list[dict[str, Any]] = []
    print(
        f"front-end overhead of the live path under load (calibration runs, seeds "
        f"{_calibration_seeds(args)}, {len(samples_s)} calls), model ms: p10 {p10:.2f}, "
        f"p50 {p50:.2f}, p90 {p90:.2f}, drawn per call; lone requests: {1000 * lone_s:.2f} "
        f"warm, {1000 * cold_s:.2f} cold"
    )
    print(
        f"{'metric':<22}{'live':>10}{'simulated':>11}{'error':>8}{'median':>10}{'error':>8}"
        f"{'no-ovh':>10}{'error':>8}"
    )
    for name in METRICS:
        a, b, m, c = live[name], simulated[name], with_median[name], plain[name]
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
                "simulated_with_median_overhead": m,
                "median_rel_error": _rel(a, m),
                "simulated_with_lone_overhead": with_lone[name],
                "lone_rel_error": _rel(a, with_lone[name]),
            }
        )
        print(
            f"{name:<22}{a:>10.4g}{b:>11.4g}{err:>8.1%}{m:>10.4g}{_rel(a, m):>8.1%}"
            f"{c:>10.4g}{raw:>8.1%}"
        )
    worst = max(r["rel_error"] for r in rows)
    verdict = "met" if worst <= TARGET_REL_ERROR else "NOT met"
    behind = [run for run, c in live_runs.clients.items() if not c["is_schedule_kept"]]
    if behind:
        verdict += (
            f"; the client fell behind its schedule in the {' and '.join(behind)} run: "
            "a busy machine, the live figures are not representative"
        )
    print(
        f"largest relative error {worst:.1%} with the front-end overhead drawn per call "
        f"(target <= {TARGET_REL_ERROR:.0%}: {verdict}); with its median "
        f"{max(r['median_rel_error'] for r in rows):.1%}; without it "
        f"{max(r['raw_rel_error'] for r in rows):.1%}; with the lone requests' "
        f"{max(r['lone_rel_error'] for r in rows):.1%}"
    )
    write_result(
        args.out,
        {
            "benchmark": "cluster_vs_live",
            "config": vars(args) | {"out": None},
            "front_end_overhead_ms": 1000.0 * median_s,
            "front_end_overhead_samples": {
                "num": len(samples_s),
                "p10_ms": p10,
                "p50_ms": p50,
                "p90_ms": p90,
            },
            "front_end_overhead_lone_ms": 1000.0 * lone_s,
            "front_end_overhead_cold_ms": 1000.0 * cold_s,
            "live_client": live_runs.clients,
            "calibration": [
                {
                    "seed": seed,
                    "num_requests": args.calibration_requests,
                    "live_ttft_p50_ms": _percentile_ms(live_s, 50),
                    "live_ttft_p90_ms": _percentile_ms(live_s, 90),
                    "simulated_without_overhead_ttft_p50_ms": plain_figures["ttft_p50_ms"],
                    "simulated_without_overhead_ttft_p90_ms": plain_figures["ttft_p90_ms"],
                    "excess_p50_ms": 1000.0 * median_excess_s(live_s, sim_s),
                }
                for seed, (live_s, (sim_s, plain_figures)) in zip(
                    _calibration_seeds(args), pairs, strict=True
                )
            ],
            "rows": rows,
        },
        inputs=["src/headway"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
