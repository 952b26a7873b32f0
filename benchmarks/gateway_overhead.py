"""What the gateway costs on the request path: its own CPU per request and per relayed
chunk, added latency, and throughput, against a fast upstream.

One minimal aiohttp OpenAI stub (`--stub`, a subprocess) answers POST
/v1/chat/completions non-streaming with a small fixed JSON body, or streaming with N SSE
chunks written back to back and `data: [DONE]` (plus one usage chunk when the request
asks for `stream_options.include_usage`, as the gateway does; the gateway strips it again,
so every client sees the same N+1 events). A load generator (`--loadgen`, a subprocess
per arm) holds C keep-alive connections in a closed loop for R requests, after a short
warm-up, and records per-request latency, time to first chunk (streaming) and req/s.

With `--chunk-gap-ms G` the stub sleeps G ms between chunks, as an engine paces its
tokens: each chunk then reaches the gateway in a read of its own (what a real engine's
stream costs), where back to back several share a read.

Cases: {non-streaming, streaming N chunks} x {concurrency 1, 32}; arms: direct to the
stub, through `headway serve`, and through `vllm-router` (round_robin, retries off) when
`scripts/install_peer_routers.sh --check` finds it. Every case runs every arm once per
round, in an order rotated each round, so drift hits all arms alike. With `taskset` and
two CPUs, the load generator and the stub share the first CPU and the gateway (or
vllm-router) gets the second, so the client's cost does not flatter the ratio.

The gateway's CPU is utime+stime of its process (all threads) from /proc/PID/stat, read
by the load generator just before and after the measured requests:
    CPU us/request = CPU / requests
    CPU us/chunk   = CPU / (requests x N)   (streaming arms; the whole per-request cost
                     is included, nothing subtracted)
    marginal us/chunk = (CPU us/request streaming - CPU us/request non-streaming) / N
RSS is VmRSS from /proc/PID/status after each arm (the largest is reported). The machine's
busy CPU time (/proc/stat) minus that of the processes above gives `foreign_cpu_cores`:
what other processes used meanwhile, i.e. how isolated the arm was.

`--gateway-ref REF` runs the gateway from a commit (`git archive`) rather than from the
working tree; `--profile` then samples the gateway with py-spy (not a project dependency:
pass `--py-spy PATH`) on extra, unmeasured arms and prints where its time goes.

    .venv/bin/python benchmarks/gateway_overhead.py --gateway-ref HEAD \
        --out benchmarks/results/gateway_overhead.json
    .venv/bin/python benchmarks/gateway_overhead.py --tiny --no-peers    # CI smoke run
    .venv/bin/python benchmarks/gateway_overhead.py --profile --py-spy /path/to/py-spy
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, serve_until_signalled, write_result

MODEL = "stub-model"
TARGET_CPU_US_PER_REQUEST = 300.0
TARGET_CPU_US_PER_CHUNK = 15.0
TARGET_ADDED_P50_MS = 1.0
ARMS = ("direct", "headway", "headway-base", "vllm-router")


# -- /proc readings -----------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def busy_cpu_seconds() -> float:
    """CPU time spent by everything on the machine (all CPUs, not idle or iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- stub upstream ------------------------------------------------------------------
def _stub_bodies(num_chunks: int) -> tuple[bytes, list[bytes], bytes, bytes]:
    head = {"id": "chatcmpl-stub", "created": 0, "model": MODEL}
    usage = {"prompt_tokens": 12, "completion_tokens": num_chunks, "total_tokens": 12 + num_chunks}
    plain = {
        **head,
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the stub."},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }
    chunks = []
    for i in range(num_chunks):
        chunk = {
            **head,
            "object": "chat.completion.chunk",
            "choices": [
                {
                    "index": 0,
                    "delta": {"content": f" tok{i}"},
                    "finish_reason": "stop" if i == num_chunks - 1 else None,
                }
            ],
        }
        chunks.append(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
    usage_chunk = {**head, "object": "chat.completion.chunk", "choices": [], "usage": usage}
    usage_bytes = b"data: " + json.dumps(usage_chunk, separators=(",", ":")).encode() + b"\n\n"
    return json.dumps(plain).encode(), chunks, usage_bytes, b"data: [DONE]\n\n"


async def _stub_main(args: argparse.Namespace) -> None:
    from aiohttp import web

    plain, chunks, usage_chunk, done = _stub_bodies(args.chunks)
    models = json.dumps(
        {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "stub"}]}
    ).encode()
    sse_headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        # Byte tests, not a JSON parse: the stub must stay cheap (it shares a CPU with
        # the load generator). The load generator's bodies have no spaces around ':'.
        if b'"stream":true' not in body and b'"stream": true' not in body:
            return web.Response(body=plain, content_type="application/json")
        resp = web.StreamResponse(headers=sse_headers)
        await resp.prepare(request)
        gap_s = args.chunk_gap_ms / 1000
        for i, chunk in enumerate(chunks):
            if gap_s and i:
                await asyncio.sleep(gap_s)  # paced, as an engine decodes
            await resp.write(chunk)
        if b'"include_usage":true' in body or b'"include_usage": true' in body:
            await resp.write(usage_chunk)
        await resp.write(done)
        await resp.write_eof()
        return resp

    async def get_models(request: web.Request) -> web.Response:
        return web.Response(body=models, content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", get_models)
    app.router.add_get("/health", health)
    await serve_until_signalled(app, args.port, args.ready_file)


# -- load generator -----------------------------------------------------------------
async def _loadgen_main(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": args.chunks,
    }
    if args.stream:
        body["stream"] = True
    payload = json.dumps(body, separators=(",", ":")).encode()
    url = args.url + "/v1/chat/completions"
    headers = {"Content-Type": "application/json"}
    expected_events = args.chunks + 1  # content chunks + [DONE]
    latencies: list[float] = []
    ttfcs: list[float] = []
    failures: collections.Counter[str] = collections.Counter()

    async def one(session: aiohttp.ClientSession, record: bool) -> None:
        t0 = time.perf_counter()
        first = None
        try:
            async with session.post(url, data=payload, headers=headers) as resp:
                if resp.status != 200:
                    await resp.read()
                    failures[f"status {resp.status}"] += 1
                    return
                if not args.stream:
                    await resp.read()
                else:
                    events, prev_nl, tail = 0, False, b""
                    async for data in resp.content.iter_any():
                        if first is None:
                            first = time.perf_counter()
                        events += data.count(b"\n\n") + (prev_nl and data[:1] == b"\n")
                        prev_nl = data[-1:] == b"\n"
                        tail = (tail + data)[-14:]
                    if events != expected_events or tail != b"data: [DONE]\n\n":
                        failures[f"stream of {events} events"] += 1
                        return
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            failures[type(exc).__name__] += 1
            return
        if record:
            t1 = time.perf_counter()
            latencies.append(t1 - t0)
            if first is not None:
                ttfcs.append(first - t0)

    async def run(session: aiohttp.ClientSession, n: int, record: bool) -> None:
        left = n

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one(session, record)

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))

    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        await run(session, args.warmup, record=False)
        failures.clear()
        pids = {"gateway": args.gateway_pid, "stub": args.stub_pid}
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items() if p}
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        busy0 = busy_cpu_seconds()
        t0 = time.perf_counter()
        await run(session, args.requests, record=True)
        wall = time.perf_counter() - t0
        cpu1 = {k: cpu_seconds(p) for k, p in pids.items() if p}
        self1 = resource.getrusage(resource.RUSAGE_SELF)
        busy = busy_cpu_seconds() - busy0
    own = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    return {
        "wall_s": wall,
        "num_ok": len(latencies),
        "failures": dict(failures),
        "latencies_s": latencies,
        "ttfc_s": ttfcs,
        "cpu_s": {k: cpu1[k] - cpu0[k] for k in cpu0},
        "loadgen_cpu_s": own,
        # CPU used by anything else on the machine meanwhile: how isolated the arm was.
        "foreign_cpu_s": busy - own - sum(cpu1[k] - cpu0[k] for k in cpu0),
        "gateway_rss_mib": rss_mib(args.gateway_pid) if args.gateway_pid else None,
    }


# -- driver -------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    t0 = time.time()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.time() - t0 > timeout:
            raise RuntimeError(f"{what} not ready at {url} after {timeout} s")
        time.sleep(0.1)


def _wait_ready_file(path: Path, proc: subprocess.Popen[bytes], what: str) -> str:
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None or time.time() - t0 > 60:
            raise RuntimeError(f"{what} did not start (exit status {proc.poll()})")
        time.sleep(0.05)
    return str(json.loads(path.read_text())["url"])


def _pinning() -> tuple[list[str], list[str], str | None]:
    """taskset prefixes for (client side, gateway side), and a warning if not pinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if shutil.which("taskset") is None:
        return [], [], "taskset not found: processes are not pinned"
    if len(cpus) < 2:
        return [], [], f"only {len(cpus)} CPU available: processes are not pinned"
    return ["taskset", "-c", str(cpus[0])], ["taskset", "-c", str(cpus[1])], None


def _find_vllm_router() -> tuple[str | None, str]:
    script = REPO / "scripts" / "install_peer_routers.sh"
    try:
        out = subprocess.run(
            ["bash", str(script), "--check"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"scripts/install_peer_routers.sh --check failed: {exc}"
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return None, f"vllm-router not installed ({last})"
    for line in out.stdout.splitlines():
        if line.startswith("VLLM_ROUTER="):
            return line.split("=", 1)[1], "installed"
    return None, "install_peer_routers.sh --check printed no VLLM_ROUTER"


class Fleet:
    """The stub, the gateway and (optionally) vllm-router, each a pinned subprocess."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.client_pin, self.gateway_pin, self.pin_warning = _pinning()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: dict[str, str] = {}
        self.pids: dict[str, int] = {}
        self.peer_skip_reason: str | None = None

    def _spawn(
        self, cmd: list[str], log_name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.tmp / log_name).open("wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        a = self.args
        ready = self.tmp / "stub.json"
        stub = self._spawn(
            [*self.client_pin, sys.executable, __file__, "--stub", "--port", "0",
             "--chunks", str(a.chunks), "--chunk-gap-ms", str(a.chunk_gap_ms),
             "--ready-file", str(ready)],
            "stub.log",
        )  # fmt: skip
        self.urls["direct"] = _wait_ready_file(ready, stub, "stub")
        self.pids["stub"] = stub.pid

        gw_url, self.pids["headway"] = self._start_gateway("gateway", a.gateway_sha)
        self.urls["headway"] = gw_url
        if a.baseline_sha:
            base_url, self.pids["headway-base"] = self._start_gateway("base", a.baseline_sha)
            self.urls["headway-base"] = base_url

        if a.no_peers:
            self.peer_skip_reason = "--no-peers"
            return
        exe, why = _find_vllm_router()
        if exe is None:
            self.peer_skip_reason = why
            return
        port = _free_port()
        router = self._spawn(
            [*self.gateway_pin, exe, "--host", "127.0.0.1", "--port", str(port),
             "--prometheus-port", str(_free_port()), "--worker-urls", self.urls["direct"],
             "--policy", "round_robin", "--worker-startup-check-interval", "1",
             "--disable-retries", "--log-level", "warning"],
            "vllm-router.log",
        )  # fmt: skip
        self.urls["vllm-router"] = f"http://127.0.0.1:{port}"
        try:
            _wait_http(self.urls["vllm-router"] + "/readiness", router, "vllm-router")
        except RuntimeError as exc:
            self.peer_skip_reason = f"vllm-router did not start: {exc}"
            del self.urls["vllm-router"]
            router.terminate()
            return
        self.pids["vllm-router"] = router.pid

    def _start_gateway(self, name: str, sha: str | None) -> tuple[str, int]:
        """`headway serve` pinned to the gateway CPU; its code from commit `sha` (None:
        the working tree). Returns (url, pid)."""
        ready = self.tmp / f"{name}.json"
        env = None
        if sha is not None:
            # The gateway's code from a commit, not the working tree (which may hold
            # someone's uncommitted edits): `git archive SHA src` on PYTHONPATH.
            src = self.tmp / f"{name}-src"
            src.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(REPO), "archive", sha, "src"], capture_output=True, check=True
            )
            subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
            env = {**os.environ, "PYTHONPATH": str(src / "src")}
        gw = self._spawn(
            [*self.gateway_pin, sys.executable, "-m", "headway.cli", "serve", "--port", "0",
             "--endpoints", self.urls["direct"], "--model", MODEL, "--ready-file", str(ready),
             # The relay's own cost: the same load-blind policy as the committed figures
             # (a vLLM pool now defaults to kv-aware, which tokenizes every prompt).
             "--profile", "round-robin"],
            f"{name}.log",
            env,
        )  # fmt: skip
        return _wait_ready_file(ready, gw, f"headway serve ({name})"), gw.pid

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def loadgen(
        self, arm: str, stream: bool, concurrency: int, requests: int | None = None
    ) -> dict[str, Any]:
        a = self.args
        cmd = [*self.client_pin, sys.executable, __file__, "--loadgen", "--url", self.urls[arm],
               "--chunks", str(a.chunks), "--concurrency", str(concurrency),
               "--requests", str(requests or a.requests), "--warmup", str(a.warmup),
               "--stub-pid", str(self.pids["stub"])]  # fmt: skip
        if arm != "direct":
            cmd += ["--gateway-pid", str(self.pids[arm])]
        if stream:
            cmd.append("--stream")
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(f"load generator failed on {arm}: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _pct(xs: list[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(xs, q) * 1e3) if xs else None


def summarize(runs: list[dict[str, Any]], stream: bool, chunks: int) -> dict[str, Any]:
    """Pool one arm's rounds: latencies pooled, CPU and requests summed."""
    lat = [x for r in runs for x in r["latencies_s"]]
    ttfc = [x for r in runs for x in r["ttfc_s"]]
    num_ok = sum(r["num_ok"] for r in runs)
    wall = sum(r["wall_s"] for r in runs)
    failures: collections.Counter[str] = collections.Counter()
    for r in runs:
        failures.update(r["failures"])
    out: dict[str, Any] = {
        "num_ok": num_ok,
        "num_failed": sum(failures.values()),
        "failures": dict(failures),
        "req_per_s": num_ok / wall if wall else None,
        "req_per_s_by_round": [r["num_ok"] / r["wall_s"] for r in runs],
        "p50_ms": _pct(lat, 50),
        "p99_ms": _pct(lat, 99),
        "ttfc_p50_ms": _pct(ttfc, 50) if stream else None,
        "ttfc_p99_ms": _pct(ttfc, 99) if stream else None,
        "stub_cpu_us_per_request": sum(r["cpu_s"]["stub"] for r in runs) / num_ok * 1e6
        if num_ok
        else None,
        "loadgen_cpu_us_per_request": sum(r["loadgen_cpu_s"] for r in runs) / num_ok * 1e6
        if num_ok
        else None,
        "foreign_cpu_cores": sum(r["foreign_cpu_s"] for r in runs) / wall if wall else None,
    }
    if "gateway" in runs[0]["cpu_s"] and num_ok:
        cpu = sum(r["cpu_s"]["gateway"] for r in runs)
        out["gateway_cpu_s"] = cpu
        out["cpu_us_per_request"] = cpu / num_ok * 1e6
        out["cpu_us_per_request_by_round"] = [
            r["cpu_s"]["gateway"] / r["num_ok"] * 1e6 if r["num_ok"] else None for r in runs
        ]
        out["cpu_us_per_chunk"] = cpu / (num_ok * chunks) * 1e6 if stream else None
        out["gateway_cpu_cores"] = cpu / wall
        out["rss_mib_max"] = max(r["gateway_rss_mib"] for r in runs)
    return out


# Where a profile sample's time goes: the component of the deepest frame that matches
# (leaf first), so time inside a library is charged to the library, not to its caller.
_COMPONENTS = (
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("SSE relay filter", ("headway/gateway/sse.py",)),
    ("routing and accounting", ("headway/routing/", "gateway/routing.py", "gateway/tracker.py",
                                "gateway/admission.py")),
    ("request parse/rewrite (msgspec)", ("gateway/request.py", "msgspec", "json/")),
    ("access log", ("gateway/accounting.py", "logging/")),
    ("timeouts (upstream deadline)", ("asyncio/timeouts.py", "_until (", "_Deadline.")),
    ("HTTP writes, both sides (aiohttp StreamWriter)", ("aiohttp/http_writer.py", "aiohttp/web_response.py")),
    ("HTTP server (gateway/h1_server.py)", ("gateway/h1_server.py",)),
    ("upstream client (gateway/h1_transport.py, httptools)", ("gateway/h1_transport.py",
                                                              "httptools")),
    ("upstream client (aiohttp client)", ("aiohttp/client", "aiohttp/connector.py",
                                          "gateway/transport.py", "aiohttp/helpers.py")),
    ("body buffers (aiohttp streams)", ("aiohttp/streams.py",)),
    ("HTTP server (aiohttp web)", ("aiohttp/web_", "aiohttp/http_parser.py", "aiohttp/_http")),
    ("gateway handler (server.py)", ("headway/gateway/server.py",)),
    ("event loop and socket I/O (uvloop, C)", ("Runner.run (",)),
    ("asyncio tasks/futures", ("asyncio/",)),
)  # fmt: skip


# Leaf frames (native) of a thread that waits for I/O in the event loop's poll.
_IDLE_LEAVES = ("epoll_wait", "epoll_pwait", "__GI_epoll", "__libc_epoll")


def _component(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, needles in _COMPONENTS:
            if any(n in frame for n in needles):
                return name
    return "other"


def _profile(fleet: Fleet, py_spy: str, stream: bool, concurrency: int) -> dict[str, Any]:
    """py-spy on the gateway during one extra (unmeasured) arm: the share of busy
    samples per function, self (leaf frame) and inclusive (anywhere on the stack).

    Native frames are sampled (`--native`) so that idle time can be told apart: py-spy
    counts a thread blocked in uvloop's `epoll_wait` as active (no Python frame above
    `Runner.run` says otherwise), which once made "the event loop" look like a third
    of the gateway's time at concurrency 1. Samples whose leaf is the poll are idle
    and dropped; C frames are then charged to their nearest Python caller."""
    raw = fleet.tmp / f"profile-{stream}.txt"  # (HEADWAY_KEEP_PROFILE=PATH: a copy kept)
    spy = subprocess.Popen(
        [py_spy, "record", "--pid", str(fleet.pids["headway"]), "--format", "raw",
         "--rate", "500", "--output", str(raw), "--native"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(1.0)
    try:
        fleet.loadgen("headway", stream, concurrency, fleet.args.profile_requests)
    finally:
        spy.send_signal(signal.SIGINT)
        _, err = spy.communicate(timeout=60)
    if not raw.exists():
        return {"error": f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}"}
    keep = os.environ.get("HEADWAY_KEEP_PROFILE")
    if keep:
        shutil.copyfile(raw, keep)
    self_time: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    by_component: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        # Per function, not per line: "f (file.py:12)" -> "f (file.py)".
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        if frames[-1].startswith(_IDLE_LEAVES):
            continue  # blocked in the loop's poll: idle, not busy
        total += int(n)
        self_time[frames[-1]] += int(n)
        by_component[_component(frames)] += int(n)
        for f in set(frames):
            incl[f] += int(n)
    return {
        "case": f"{'stream' if stream else 'plain'} c={concurrency}",
        "samples": total,
        "by_component": [(c, n / total) for c, n in by_component.most_common()] if total else [],
        "top_self": [(f, n / total) for f, n in self_time.most_common(25)] if total else [],
        "top_inclusive": [(f, n / total) for f, n in incl.most_common(50)] if total else [],
    }


def _git_sha(ref: str) -> str:
    cmd = ["git", "-C", str(REPO), "rev-parse", "--verify", f"{ref}^{{commit}}"]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=2000, help="measured requests per arm")
    ap.add_argument("--warmup", type=int, default=200, help="unmeasured requests per arm")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunks", type=int, default=64, help="SSE content chunks per stream")
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument(
        "--chunk-gap-ms",
        type=float,
        default=0.0,
        help="the stub sleeps this long between chunks (paced, as an engine decodes: each"
        " chunk then arrives on its own); 0: back to back",
    )
    ap.add_argument("--no-peers", action="store_true", help="skip the vllm-router column")
    ap.add_argument("--tiny", action="store_true", help="a seconds-long smoke configuration")
    ap.add_argument("--profile", action="store_true", help="py-spy the gateway on one arm")
    ap.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy executable")
    ap.add_argument("--profile-requests", type=int, default=10000,
                    help="requests per profiled arm")  # fmt: skip
    ap.add_argument("--gateway-ref", default=None,
                    help="run the gateway from this commit (git archive) instead of the "
                    "working tree, e.g. HEAD")  # fmt: skip
    ap.add_argument("--baseline-ref", default=None,
                    help="also run a `headway-base` arm: the gateway from this commit, "
                    "alternated with `headway` in the same run (an A/B)")  # fmt: skip
    ap.add_argument(
        "--no-stream",
        action="store_true",
        help="non-streaming cases only (quick A/B of the per-request cost)",
    )
    ap.add_argument(
        "--arms", default=None, help="comma-separated subset of the arms to run (default: all)"
    )
    ap.add_argument("--out", type=Path)
    # Subprocess modes.
    ap.add_argument("--stub", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--stream", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--gateway-pid", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--stub-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stub or args.loadgen:
        import uvloop

        if args.stub:
            uvloop.run(_stub_main(args))
        else:
            args.concurrency = int(args.concurrency)
            print(json.dumps(uvloop.run(_loadgen_main(args))))
        return
    if args.tiny:
        args.requests, args.warmup, args.rounds, args.chunks = 50, 10, 1, 8
        args.concurrency = "1,4"
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    # Resolved once, before anything starts: the ref may move while the benchmark runs.
    args.gateway_sha = _git_sha(args.gateway_ref) if args.gateway_ref else None
    args.baseline_sha = _git_sha(args.baseline_ref) if args.baseline_ref else None
    streams = (False,) if args.no_stream else (False, True)
    cases = [(stream, c) for stream in streams for c in concurrencies]

    with tempfile.TemporaryDirectory() as tmpdir:
        fleet = Fleet(args, Path(tmpdir))
        if fleet.pin_warning:
            print(f"warning: {fleet.pin_warning}", file=sys.stderr)
        try:
            fleet.start()
            arms = [a for a in ARMS if a in fleet.urls]
            if args.arms:
                wanted = {"direct", *args.arms.split(",")}
                arms = [a for a in arms if a in wanted]
            if fleet.peer_skip_reason:
                print(f"vllm-router column skipped: {fleet.peer_skip_reason}")
            raw: dict[tuple[bool, int, str], list[dict[str, Any]]] = collections.defaultdict(list)
            for rnd in range(args.rounds):
                for stream, conc in cases:
                    k = rnd % len(arms)
                    for arm in arms[k:] + arms[:k]:
                        r = fleet.loadgen(arm, stream, conc)
                        raw[(stream, conc, arm)].append(r)
                        print(f"  round {rnd + 1} {'stream' if stream else 'plain':>6} "
                              f"c={conc:<3} {arm:<12} {r['num_ok'] / r['wall_s']:8.0f} req/s",
                              flush=True)  # fmt: skip
            profile: list[dict[str, Any]] | None = None
            if args.profile:
                if not args.py_spy:
                    profile = [{"error": "py-spy not found (pass --py-spy PATH)"}]
                else:
                    profiled = list(dict.fromkeys([(False, c) for c in concurrencies]))
                    if not args.no_stream:
                        profiled.append((True, max(concurrencies)))
                    profile = [_profile(fleet, args.py_spy, st, c) for st, c in profiled]
        finally:
            fleet.stop()

    rows: list[dict[str, Any]] = []
    for stream, conc in cases:
        by_arm = {arm: summarize(raw[(stream, conc, arm)], stream, args.chunks) for arm in arms}
        direct = by_arm["direct"]
        for arm in arms[1:]:
            s = by_arm[arm]
            s["added_p50_ms"] = s["p50_ms"] - direct["p50_ms"]
            s["added_p99_ms"] = s["p99_ms"] - direct["p99_ms"]
            if stream:
                s["added_ttfc_p50_ms"] = s["ttfc_p50_ms"] - direct["ttfc_p50_ms"]
            s["throughput_ratio"] = s["req_per_s"] / direct["req_per_s"]
        rows.append({"stream": stream, "concurrency": conc, "arms": by_arm})
    for arm in arms[1:] if not args.no_stream else ():
        for conc in concurrencies:
            plain = next(r for r in rows if not r["stream"] and r["concurrency"] == conc)
            strm = next(r for r in rows if r["stream"] and r["concurrency"] == conc)
            strm["arms"][arm]["marginal_cpu_us_per_chunk"] = (
                strm["arms"][arm]["cpu_us_per_request"] - plain["arms"][arm]["cpu_us_per_request"]
            ) / args.chunks

    hdr = (f"{'case':<12} {'arm':<12} {'req/s':>8} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} "
           f"{'ttfc50':>7} {'+p50 ms':>8} {'CPU us/req':>10} {'us/chunk':>9} {'marg/ch':>8} "
           f"{'RSS MiB':>8}")  # fmt: skip
    print(hdr)
    for row in rows:
        case = f"{'stream' if row['stream'] else 'plain'} c={row['concurrency']}"
        for arm, s in row["arms"].items():
            print(f"{case:<12} {arm:<12} {s['req_per_s']:>8.0f} "
                  f"{_fmt(s.get('throughput_ratio'), '.2f'):>6} {_fmt(s['p50_ms'], '.3f'):>7} "
                  f"{_fmt(s['p99_ms'], '.3f'):>7} {_fmt(s['ttfc_p50_ms'], '.3f'):>7} "
                  f"{_fmt(s.get('added_p50_ms'), '.3f'):>8} "
                  f"{_fmt(s.get('cpu_us_per_request'), '.0f'):>10} "
                  f"{_fmt(s.get('cpu_us_per_chunk'), '.1f'):>9} "
                  f"{_fmt(s.get('marginal_cpu_us_per_chunk'), '.1f'):>8} "
                  f"{_fmt(s.get('rss_mib_max'), '.0f'):>8}")  # fmt: skip

    def hw(stream: bool, conc: int) -> dict[str, Any] | None:
        row = next((r for r in rows if r["stream"] == stream and r["concurrency"] == conc), None)
        return None if row is None else row["arms"]["headway"]  # type: ignore[no-any-return]

    c_lo = min(concurrencies)
    plain_lo, stream_lo = hw(False, c_lo), hw(True, c_lo)
    assert plain_lo is not None
    worst_req = max(hw(False, c)["cpu_us_per_request"] for c in concurrencies)  # type: ignore[index]
    added = plain_lo["added_p50_ms"]
    targets: dict[str, dict[str, Any]] = {
        "cpu_us_per_request": {"target": TARGET_CPU_US_PER_REQUEST, "worst": worst_req,
                               "met": worst_req <= TARGET_CPU_US_PER_REQUEST},
    }  # fmt: skip
    if c_lo == 1:  # the latency target is at concurrency 1: judged only when it ran
        targets["added_p50_ms_concurrency_1"] = {
            "target": TARGET_ADDED_P50_MS,
            "value": added,
            "stream_value": stream_lo and stream_lo["added_p50_ms"],
            "met": added <= TARGET_ADDED_P50_MS,
        }
    # The per-chunk target is for chunks back to back (the stub's default); paced, each
    # chunk costs a wake-up of its own and the figure is reported, not judged.
    if stream_lo is not None and not args.chunk_gap_ms:
        worst_chunk = max(hw(True, c)["cpu_us_per_chunk"] for c in concurrencies)  # type: ignore[index]
        targets["cpu_us_per_chunk"] = {
            "target": TARGET_CPU_US_PER_CHUNK,
            "worst": worst_chunk,
            "met": worst_chunk <= TARGET_CPU_US_PER_CHUNK,
        }
    for name, t in targets.items():
        print(f"target {name} <= {t['target']}: {'met' if t['met'] else 'NOT met'} "
              f"({t.get('worst', t.get('value')):.3f})")  # fmt: skip
    foreign = [s["foreign_cpu_cores"] for row in rows for s in row["arms"].values()]
    isolation = {
        "foreign_cpu_cores_mean": sum(foreign) / len(foreign),
        "foreign_cpu_cores_max": max(foreign),
    }
    print(f"other processes on the machine used {isolation['foreign_cpu_cores_mean']:.2f} cores on "
          f"average during the arms (max {isolation['foreign_cpu_cores_max']:.2f})")  # fmt: skip
    for prof in profile or []:
        if "error" in prof:
            print(f"profile: {prof['error']}")
            continue
        print(f"py-spy: {prof['samples']} samples of the gateway, {prof['case']}; by component:")
        for name, share in prof["by_component"]:
            print(f"  {share:6.1%}  {name}")
        print("  top functions (self):")
        for frame, share in prof["top_self"][:12]:
            print(f"  {share:6.1%}  {frame}")
    write_result(
        args.out,
        {
            "benchmark": "gateway_overhead",
            "config": {
                "requests_per_arm": args.requests,
                "warmup_per_arm": args.warmup,
                "rounds": args.rounds,
                "chunks": args.chunks,
                "chunk_gap_ms": args.chunk_gap_ms,
                "concurrency": concurrencies,
                "tiny": args.tiny,
                "gateway_ref": args.gateway_ref,
                "gateway_sha": args.gateway_sha,
                "baseline_ref": args.baseline_ref,
                "baseline_sha": args.baseline_sha,
            },
            "arms": arms,
            "pinning": {
                "client_and_stub": fleet.client_pin[2:] or None,
                "gateway": fleet.gateway_pin[2:] or None,
                "warning": fleet.pin_warning,
            },
            "vllm_router_skipped": fleet.peer_skip_reason,
            "formulas": {
                "cpu_us_per_request": "gateway utime+stime over the measured requests / requests",
                "cpu_us_per_chunk": "streaming: gateway CPU / (requests x chunks); nothing "
                "subtracted (includes the per-request cost)",
                "marginal_cpu_us_per_chunk": "(cpu_us_per_request streaming - non-streaming, "
                "same concurrency) / chunks",
                "added_p50_ms": "p50 latency through - p50 latency direct, same case",
                "throughput_ratio": "req/s through / req/s direct, same case",
            },
            "rows": rows,
            "targets": targets,
            "isolation": isolation,
            "profile": profile,
        },
        inputs=["benchmarks/gateway_overhead.py", "src/headway/gateway"],
    )


if __name__ == "__main__":
    main()
