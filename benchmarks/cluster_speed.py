"""How fast the cluster simulation runs: simulated requests and engine steps per
core-second, for a fixed ISL/OSL shared-prefix workload across 64 replicas.

The target (issue: tokenomics and capacity planner): 100,000 requests in <= 5 minutes
on one core, with the same `core.engine` code that serves live. The script times the
simulation (process CPU time, so other processes on a shared machine count less) of
`--num-requests` requests and projects the time for 100,000.

    .venv/bin/python benchmarks/cluster_speed.py --out benchmarks/results/cluster_speed.json
    .venv/bin/python benchmarks/cluster_speed.py --tiny      # CI smoke configuration
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from headway.cluster.simulation import ClusterConfig, ClusterSimulation, ReplicaGroup
from headway.core.arrivals import arrival_offsets_s
from headway.core.engine_factory import EngineSpec
from headway.core.workloads import build_workload
from headway.resources.catalog import load_catalog
from headway.resources.tokenizer import default_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result

TARGET_REQUESTS = 100_000
TARGET_S = 300.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-requests", type=int, default=20_000)
    p.add_argument("--replicas", type=int, default=64)
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--gpu", default="h100")
    p.add_argument("--profile", default="kv-aware", help="routing preset")
    p.add_argument("--system-prompt-tokens", type=int, default=1024)
    p.add_argument("--question-tokens", type=int, default=128)
    p.add_argument("--output-tokens", type=int, default=128)
    p.add_argument("--num-groups", type=int, default=128, help="distinct system prompts")
    p.add_argument(
        "--rate-per-replica", type=float, default=8.0, help="requests/s of model time per replica"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-decode-jump-steps",
        type=int,
        default=64,
        help="engine steps one event may cover (1: no decode jumps; results are identical)",
    )
    p.add_argument("--tiny", action="store_true", help="CI smoke configuration")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.tiny:
        args.num_requests, args.replicas, args.num_groups = 200, 4, 8

    tokenizer = default_tokenizer()
    workload = build_workload(
        "shared-prefix",
        {
            "num_groups": args.num_groups,
            "prompts_per_group": 8,
            "system_prompt_tokens": args.system_prompt_tokens,
            "question_tokens": args.question_tokens,
            "output_tokens": args.output_tokens,
        },
        tokenizer,
    )
    t0 = time.process_time()
    sessions = list(workload.sessions(args.num_requests, args.seed))
    rate = args.rate_per_replica * args.replicas
    offsets = arrival_offsets_s(len(sessions), rate, 1.0, np.random.default_rng(args.seed))
    generate_cpu_s = time.process_time() - t0

    config = ClusterConfig(
        groups=(ReplicaGroup(EngineSpec(model=args.model, gpu=args.gpu), args.replicas),),
        routing={"preset": args.profile},
        seed=args.seed,
        max_decode_jump_steps=args.max_decode_jump_steps,
    )
    sim = ClusterSimulation(config, load_catalog(), tokenizer, tokenizer.word_token_ids())
    t1 = time.process_time()
    run = sim.run(zip(offsets.tolist(), sessions, strict=True))
    sim_cpu_s = time.process_time() - t1

    num_steps = sum(r.num_steps for r in run.replicas)
    num_tokens = sum(r.num_generation_tokens for r in run.replicas)
    requests_per_cpu_s = len(run.records) / sim_cpu_s
    projected_s = TARGET_REQUESTS / requests_per_cpu_s
    ttfts = [r.first_choice_at - r.sent_at for r in run.records if r.first_choice_at is not None]
    row = {
        "num_requests": len(run.records),
        "num_steps": num_steps,
        "num_output_tokens": num_tokens,
        "num_events": run.num_events,
        "model_duration_s": round(run.duration_s, 3),
        "generate_cpu_s": round(generate_cpu_s, 3),
        "sim_cpu_s": round(sim_cpu_s, 3),
        "requests_per_cpu_s": round(requests_per_cpu_s, 1),
        "steps_per_cpu_s": round(num_steps / sim_cpu_s, 1),
        "output_tokens_per_cpu_s": round(num_tokens / sim_cpu_s, 1),
        "projected_s_for_100k": round(projected_s, 1),
        "target_s_for_100k": TARGET_S,
        "target_ratio": round(TARGET_S / projected_s, 3),
        "prefix_hit_rate": round(run.prefix_hit_rate, 4),
        "ttft_p50_s": round(float(np.percentile(ttfts, 50)), 4),
        "ttft_p99_s": round(float(np.percentile(ttfts, 99)), 4),
    }
    print(
        f"{row['num_requests']} requests, {num_steps} engine steps over {args.replicas} "
        f"replicas in {sim_cpu_s:.1f} CPU s: {row['requests_per_cpu_s']} requests/core-s, "
        f"{row['steps_per_cpu_s']} steps/core-s"
    )
    print(
        f"projected for 100,000 requests: {projected_s:.0f} s (target <= {TARGET_S:.0f} s: "
        f"{'met' if projected_s <= TARGET_S else 'NOT met'}); model time {run.duration_s:.1f} s, "
        f"TTFT p50 {row['ttft_p50_s']} s p99 {row['ttft_p99_s']} s, "
        f"prefix hit rate {row['prefix_hit_rate']}"
    )
    write_result(
        args.out,
        {"benchmark": "cluster_speed", "config": vars(args) | {"out": None}, "rows": [row]},
        inputs=["src/headway/core", "src/headway/cluster", "src/headway/routing"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
