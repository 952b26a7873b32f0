"""Simulate a routed fleet in virtual time and report it as `headway bench` would.

`headway plan simulate` runs one workload at one request rate through N simulated
engines (`headway.cluster`) once per routing profile, and writes the same results.json,
summary and HTML report as `headway bench`, so live and simulated runs compare with
`headway bench compare`. A run of thousands of requests takes seconds; nothing is
served over the network.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from headway import __version__
from headway.cli_support import goodput_arg, key_value_arg
from headway.core.engine_factory import DEFAULT_PRECISION


def add_arguments(p: argparse.ArgumentParser) -> None:
    f = p.add_argument_group("fleet")
    f.add_argument("--model", default="llama-3.1-8b", help="catalog model")
    f.add_argument("--gpu", default="h100", help="catalog GPU")
    f.add_argument("--precision", default=DEFAULT_PRECISION)
    f.add_argument("--tp", type=int, default=1)
    f.add_argument("--replicas", type=int, default=8)
    f.add_argument("--block-size", type=int, default=16)
    f.add_argument("--num-gpu-blocks-override", type=int)
    f.add_argument("--max-num-seqs", type=int)
    f.add_argument("--max-num-batched-tokens", type=int)
    f.add_argument("--catalog", action="append", default=[], help="extra catalog YAML")
    r = p.add_argument_group("routing")
    r.add_argument(
        "--profile",
        action="append",
        help="routing preset; repeat for side-by-side arms (default: round-robin and kv-aware)",
    )
    r.add_argument("--scrape-interval", type=float, default=0.25, help="seconds")
    r.add_argument("--kv-event-delay", type=float, default=0.005, help="seconds")
    r.add_argument("--no-kv-events", action="store_true", help="no precise prefix index")
    r.add_argument(
        "--frontend-overhead-ms",
        type=float,
        default=0.0,
        help="model ms from a request's send to its routing (the live front end's cost)",
    )
    a = p.add_argument_group("admission (the gateway's; off unless a cap is given)")
    a.add_argument("--max-in-flight-per-endpoint", type=int, help="in-flight cap per replica")
    a.add_argument("--admission-max-queue", type=int, default=1024, help="calls waiting at most")
    a.add_argument(
        "--admission-max-wait", type=float, default=30.0, help="seconds a call waits at most"
    )
    w = p.add_argument_group("load")
    w.add_argument("--workload", default="shared-prefix", help="workload name or trace file")
    w.add_argument(
        "--workload-param", type=key_value_arg, action="append", default=[], metavar="KEY=VALUE"
    )
    w.add_argument("--request-rate", type=float, default=16.0, help="sessions/s of model time")
    w.add_argument("--burstiness", type=float, default=1.0)
    w.add_argument("--num-requests", type=int, default=500, help="sessions to simulate")
    w.add_argument("--tokenizer", help="tokenizer.json (default: the shipped one)")
    w.add_argument("--seed", type=int, default=0)
    o = p.add_argument_group("output")
    o.add_argument("--goodput", type=goodput_arg, nargs="+", metavar="METRIC:MS")
    o.add_argument("--gpu-hourly-usd", type=float, help="price per GPU-hour, for costs")
    o.add_argument("--out", type=Path, help="write results.json and report.html here")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from headway.bench.report import print_summary, write_report
    from headway.bench.workload_source import build_from_source
    from headway.cluster.results import document, point
    from headway.cluster.simulation import (
        AdmissionLimits,
        ClusterConfig,
        ClusterConfigError,
        ClusterSimulation,
        ReplicaGroup,
    )
    from headway.core.arrivals import arrival_offsets_s
    from headway.core.engine_factory import EngineSpec
    from headway.core.serving_metrics import CostInputs, GoodputSlo
    from headway.resources.catalog import load_catalog

    def fail(message: str) -> int:
        print(f"headway plan simulate: error: {message}", file=sys.stderr)
        return 2

    for name in ("replicas", "num_requests", "tp", "block_size"):
        if getattr(args, name) < 1:
            return fail(f"--{name.replace('_', '-')}: must be >= 1")
    if not args.request_rate > 0:
        return fail("--request-rate: must be > 0")
    if not args.burstiness > 0:
        return fail("--burstiness: must be > 0")
    profiles = args.profile or ["round-robin", "kv-aware"]
    try:
        admission = (
            AdmissionLimits(
                args.max_in_flight_per_endpoint, args.admission_max_queue, args.admission_max_wait
            )
            if args.max_in_flight_per_endpoint is not None
            else None
        )
    except ClusterConfigError as exc:
        field, detail = str(exc).split(": ", 1)
        flags = {
            "admission.max_in_flight_per_endpoint": "--max-in-flight-per-endpoint",
            "admission.max_queue": "--admission-max-queue",
            "admission.max_wait_s": "--admission-max-wait",
        }
        return fail(f"{flags.get(field, field)}: {detail}")
    try:
        workload, tokenizer = build_from_source(
            args.workload, dict(args.workload_param), args.tokenizer
        )
        catalog = load_catalog(args.catalog)
    except (ValueError, OSError) as exc:
        return fail(f"--workload: {exc}")
    sessions = list(workload.sessions(args.num_requests, args.seed))
    rng = np.random.default_rng(args.seed)
    offsets = arrival_offsets_s(len(sessions), args.request_rate, args.burstiness, rng)
    # Trace sessions carry their own arrival times.
    arrivals = [
        (s.arrival_s if s.arrival_s is not None else float(t), s)
        for t, s in zip(offsets.tolist(), sessions, strict=True)
    ]
    engine = EngineSpec(
        model=args.model,
        gpu=args.gpu,
        precision=args.precision,
        tp=args.tp,
        block_size=args.block_size,
        num_gpu_blocks_override=args.num_gpu_blocks_override,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )
    goodput = GoodputSlo(**dict(args.goodput)) if args.goodput else None
    cost = (
        CostInputs(args.replicas * args.tp, args.gpu_hourly_usd)
        if args.gpu_hourly_usd is not None
        else None
    )
    load = {"request_rate": args.request_rate, "burstiness": args.burstiness}
    arms: list[tuple[str, list[dict[str, Any]]]] = []
    for profile in profiles:
        try:
            config = ClusterConfig(
                groups=(ReplicaGroup(engine, args.replicas),),
                routing={"preset": profile},
                scrape_interval_s=args.scrape_interval,
                kv_event_delay_s=args.kv_event_delay,
                is_kv_events_enabled=not args.no_kv_events,
                seed=args.seed,
                frontend_overhead_s=args.frontend_overhead_ms / 1e3,
                admission=admission,
            )
            sim = ClusterSimulation(config, catalog, tokenizer, tokenizer.output_vocab())
        except ClusterConfigError as exc:
            return fail(f"--profile {profile}: {exc}" if "routing" in str(exc) else str(exc))
        result = sim.run(arrivals)
        arms.append((profile, [point(result, load, goodput=goodput, cost=cost)]))
    results = document(_metadata(args, workload.params()), arms)
    print_summary(results, Console())
    if args.out is not None:
        from headway.bench.api import write_results

        path = write_results(results, args.out)
        write_report(results, args.out)
        print(f"results: {path}\nreport: {args.out / 'report.html'}")
    return 0


def _metadata(args: argparse.Namespace, params: Any) -> dict[str, Any]:
    from headway.provenance import git_sha, machine_facts

    return {
        "git_sha": git_sha(),
        "command": shlex.join(["headway", *sys.argv[1:]]),
        "machine": machine_facts(),
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "headway_version": __version__,
        "workload": {"name": args.workload, "params": {k: str(v) for k, v in params.items()}},
        "seed": args.seed,
        "model": args.model,
        "goodput": dict(args.goodput) if args.goodput else None,
        "gpu_count": args.replicas * args.tp,
        "gpu_hourly_usd": args.gpu_hourly_usd,
        "simulation": {
            "gpu": args.gpu,
            "precision": args.precision,
            "tp": args.tp,
            "replicas": args.replicas,
            "scrape_interval_s": args.scrape_interval,
            "kv_event_delay_s": args.kv_event_delay,
            "is_kv_events_enabled": not args.no_kv_events,
            "frontend_overhead_ms": args.frontend_overhead_ms,
            "max_in_flight_per_endpoint": args.max_in_flight_per_endpoint,
            "admission_max_queue": args.admission_max_queue,
            "admission_max_wait_s": args.admission_max_wait,
        },
        "warnings": [],
        "is_partial": False,
    }
