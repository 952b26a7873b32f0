"""How large a fleet one `headway sim` process can simulate faithfully.

One simulator process runs R replicas; a separate client process holds C concurrent
streaming requests (closed loop, aiohttp; start times spread over a second, prompt
and output lengths uniform in [mean/2, 3*mean/2]). Each chunk carries the wall-clock time its
step was scheduled to end (`headway_debug.scheduled_at`); the client records arrival
minus schedule per token. For each time-scale it prints the p50/p99 lag as a fraction
of the step time (the request's scheduled inter-token gap), the ITL distortion
(measured mean ITL / scheduled mean ITL - 1), and the simulator's CPU use; then the
largest time-scale whose p99 lag stays <= 5% of step time.

    .venv/bin/python benchmarks/sim_capacity.py --out benchmarks/results/sim_capacity.json
    .venv/bin/python benchmarks/sim_capacity.py --tiny     # CI smoke configuration
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from headway.core.workloads import LengthDist, SyntheticWorkload

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_result

LAG_TARGET = 0.05


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


# -- client process -------------------------------------------------------------
async def _client_main(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    urls: list[str] = json.loads(args.urls)
    deadline = time.time() + args.duration
    warmup_until = time.time() + args.warmup
    lag_frac: list[float] = []
    lag_s: list[float] = []
    server_lag_s: list[float] = []
    sched_gaps: list[float] = []
    real_gaps: list[float] = []
    num_tokens = 0
    num_requests = 0
    rng = np.random.default_rng(args.seed)
    workload = SyntheticWorkload(LengthDist(args.prompt_tokens), LengthDist(args.max_tokens))

    async def one_client(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal num_tokens, num_requests
        url = urls[i % len(urls)] + "/v1/completions"
        # Clients start spread over the first second and draw lengths around the
        # configured means, as real traffic does; identical, simultaneous requests
        # would lock every replica's steps in phase, an artifact of the benchmark.
        await asyncio.sleep(float(rng.uniform(0.0, 1.0)))
        while time.time() < deadline:
            req = workload.sample(rng)
            body = {
                "model": "llama-3.1-8b",
                "prompt": list(req.prompt_token_ids),
                "max_tokens": req.max_tokens,
                "ignore_eos": True,
                "stream": True,
                "headway_debug_timing": True,
            }
            prev_sched = prev_arrival = None
            async with session.post(url, json=body) as resp:
                # Read whatever bytes are there and stamp them once: cheaper than
                # line iteration, so the client adds little lag of its own.
                buf = b""
                async for data in resp.content.iter_any():
                    arrival = time.time()
                    buf += data
                    *events, buf = buf.split(b"\n\n")
                    for ev in events:
                        k = ev.find(b'"scheduled_at":')
                        if k < 0:
                            continue
                        sched = float(ev[k + 15 : ev.find(b",", k)])
                        j = ev.find(b'"sent_at":', k)
                        sent = float(ev[j + 10 : ev.find(b"}", j)])
                        num_tokens += 1
                        if prev_sched is not None and arrival > warmup_until:
                            gap = sched - prev_sched
                            if gap > 0:
                                lag = arrival - sched
                                lag_frac.append(lag / gap)
                                lag_s.append(lag)
                                server_lag_s.append(sent - sched)
                                sched_gaps.append(gap)
                                real_gaps.append(arrival - prev_arrival)
                        prev_sched, prev_arrival = sched, arrival
            num_requests += 1

    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        tasks = [asyncio.create_task(one_client(i, session)) for i in range(args.clients)]
        # Stop at the deadline: streams still open are closed, not waited for.
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.time()))
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    lf = np.array(lag_frac) if lag_frac else np.array([np.nan])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "client_cpu_s": usage.ru_utime + usage.ru_stime,
        "num_requests": num_requests,
        "num_tokens": num_tokens,
        "lag_frac_p50": float(np.percentile(lf, 50)),
        "lag_frac_p99": float(np.percentile(lf, 99)),
        "lag_ms_p50": float(np.percentile(lag_s, 50) * 1e3) if lag_s else None,
        "lag_ms_p99": float(np.percentile(lag_s, 99) * 1e3) if lag_s else None,
        "server_lag_ms_p50": float(np.percentile(server_lag_s, 50) * 1e3) if lag_s else None,
        "server_lag_ms_p99": float(np.percentile(server_lag_s, 99) * 1e3) if lag_s else None,
        "scheduled_itl_ms_mean": float(np.mean(sched_gaps) * 1e3) if sched_gaps else None,
        "measured_itl_ms_mean": float(np.mean(real_gaps) * 1e3) if real_gaps else None,
        "itl_distortion": (
            float(np.mean(real_gaps) / np.mean(sched_gaps) - 1.0) if sched_gaps else None
        ),
    }


# -- driver ---------------------------------------------------------------------
def run_time_scale(args: argparse.Namespace, time_scale: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready.json"
        sim = subprocess.Popen(
            [sys.executable, "-m", "headway.cli", "sim", "--replicas", str(args.replicas),
             "--port", "0", "--ready-file", str(ready), "--time-scale", str(time_scale),
             "--model", "llama-3.1-8b", "--gpu", "h100", "--precision", "fp8"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            t0 = time.time()
            while not ready.exists():
                if sim.poll() is not None or time.time() - t0 > 30:
                    raise RuntimeError("simulator did not start")
                time.sleep(0.05)
            urls = [r["url"] for r in json.loads(ready.read_text())["replicas"]]
            cpu0, wall0 = _cpu_seconds(sim.pid), time.time()
            client = subprocess.run(
                [sys.executable, __file__, "--client", "--urls", json.dumps(urls),
                 "--clients", str(args.clients), "--duration", str(args.duration),
                 "--warmup", str(args.warmup), "--prompt-tokens", str(args.prompt_tokens),
                 "--max-tokens", str(args.max_tokens), "--seed", str(args.seed)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            cpu = (_cpu_seconds(sim.pid) - cpu0) / (time.time() - wall0)
            result = json.loads(client.stdout.strip().splitlines()[-1])
        finally:
            sim.terminate()
            sim.wait(10)
    result["time_scale"] = time_scale
    result["sim_cpu_cores"] = cpu
    return result


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--clients", type=int, default=256)
    ap.add_argument("--time-scales", default="0.05,0.1,0.25,0.5,1.0")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per time-scale")
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke configuration")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--urls", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        import uvloop

        print(json.dumps(uvloop.run(_client_main(args))))
        return
    if args.tiny:
        args.replicas, args.clients, args.duration, args.warmup = 2, 8, 2.0, 0.5
        args.time_scales, args.prompt_tokens, args.max_tokens = "0.1", 64, 32
    rows = []
    print(f"{'scale':>6} {'lag p50':>8} {'lag p99':>8} {'ITL dist':>9} {'sim CPU':>8} {'tok/s':>8}")
    for ts in [float(x) for x in args.time_scales.split(",")]:
        r = run_time_scale(args, ts)
        r["tokens_per_s"] = r["num_tokens"] / args.duration
        rows.append(r)
        print(f"{ts:>6.2f} {r['lag_frac_p50']:>8.1%} {r['lag_frac_p99']:>8.1%} "
              f"{(r['itl_distortion'] or 0):>9.1%} {r['sim_cpu_cores']:>8.2f} "
              f"{r['tokens_per_s']:>8.0f}", flush=True)  # fmt: skip
    ok = [r["time_scale"] for r in rows if r["lag_frac_p99"] <= LAG_TARGET]
    best = max(ok) if ok else None
    print(f"largest time-scale with p99 lag <= {LAG_TARGET:.0%} of step time: {best}")
    write_result(
        args.out,
        {
            "benchmark": "sim_capacity",
            "config": {k: v for k, v in vars(args).items() if k not in ("client", "urls", "out")},
            "rows": rows,
            "lag_target_fraction": LAG_TARGET,
            "largest_time_scale_within_target": best,
            "target_time_scale": 0.25,
            "target_met": best is not None and best >= 0.25,
        },
    )


if __name__ == "__main__":
    main()
