"""`headway demo` (what `make demo` runs): cache-aware routing against round-robin on a
simulated vLLM fleet, measured the way `headway bench` measures anything.

In this one process it starts a simulated fleet (KV events on, cached-token counts in
usage, as vLLM with `--kv-events-config` and `--enable-prompt-tokens-details`), and two
gateways in front of the same replicas: one routing `round-robin`, one with the
cache-aware preset. It then runs the same seeded `agentic` workload (agent runs that
grow one context over several calls) through each gateway in turn with
`headway.bench.api.run_bench`, emptying every replica's prefix cache between the arms,
prints the side-by-side table and writes the HTML report.

Latencies are wall-clock at the fleet's time-scale: the modeled GPU's times are the
printed ones multiplied by the time-scale.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from headway.bench.api import BenchConfig, BenchTarget, run_bench, write_results
from headway.bench.report import TextTable, print_summary, rich_table, write_report
from headway.cli_support import stop_on_first_sigint
from headway.gateway.cli import start_serving, stop_serving
from headway.gateway.config import GatewayConfigError, config_from_mapping
from headway.gateway.server import Gateway
from headway.routing.presets import PRESETS
from headway.sim.config import KvEventsSettings, SimConfig
from headway.sim.fleet import Fleet

BASELINE_PRESET = "round-robin"
# The cache-aware arm. SWITCH: one line; falls back to least-request while the routing
# presets do not have kv-aware.
CACHE_AWARE_PRESET = "kv-aware" if "kv-aware" in PRESETS else "least-request"
DEFAULT_OUT_DIR = Path("headway-demo-report")
EXIT_INTERRUPTED = 130
# Lag limits in model time: at time-scale x a wall-clock lag of L ms is x * L model ms,
# so the limits scale with 1 / x like every latency the demo shows.
# The client: `headway bench`'s default limit on its p99 scheduling lag.
MAX_CLIENT_LAG_MODEL_MS = 10.0
# The fleet: a replica whose engine loop fell further behind its modeled schedule means
# this machine did not keep up (fewer replicas or a lower time-scale).
MAX_SIM_LAG_MODEL_MS = 25.0


@dataclass(frozen=True)
class DemoSettings:
    """One demo configuration: the fleet, the load and the workload."""

    num_replicas: int
    time_scale: float
    request_rate: float  # agent runs started per second
    num_requests: int  # calls per arm
    # Client worker processes: off the event loop that runs the fleet and the gateways,
    # so the client neither slows them nor falls behind its own schedule.
    num_client_processes: int = 1
    workload_params: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


# Agent runs: a shared 2k-token system prompt, a task, tool rounds that each add a tool
# result to the run's context. Round-robin scatters a run's calls over the replicas, so
# each call re-prefills the run's context; a cache-aware router keeps it where it is.
FULL = DemoSettings(
    num_replicas=8,
    time_scale=0.25,
    request_rate=1.0,
    num_requests=96,
    num_client_processes=2,
    workload_params=MappingProxyType(
        {
            "num_tool_rounds": 5,
            "tool_result_tokens": 1024,
            "plan_output_tokens": 64,
            "tool_call_output_tokens": 32,
            "final_output_tokens": 128,
            "tool_latency_s": 0.2,
        }
    ),
)
# `--quick`: a few calls on two replicas; for tests and a first look.
QUICK = DemoSettings(
    num_replicas=2,
    time_scale=0.5,
    request_rate=2.0,
    num_requests=12,
    workload_params=MappingProxyType(
        {"num_tool_rounds": 2, "tool_latency_s": 0.05, "system_prompt_tokens": 512}
    ),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="a small fast configuration (2 replicas, 12 calls per arm)")  # fmt: skip
    p.add_argument("--replicas", type=int, default=None, help=f"default {FULL.num_replicas}")
    p.add_argument("--time-scale", type=float, default=None,
                   help=f"model seconds per wall second (default {FULL.time_scale})")  # fmt: skip
    p.add_argument("--request-rate", type=float, default=None,
                   help=f"agent runs started per second (default {FULL.request_rate})")  # fmt: skip
    p.add_argument("--num-requests", type=int, default=None,
                   help=f"calls per arm (default {FULL.num_requests})")  # fmt: skip
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--gpu", default="h100")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT_DIR,
                   help=f"report directory (default ./{DEFAULT_OUT_DIR}/)")  # fmt: skip


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    """The preset (`--quick` or the full demo) with any flag overrides; ValueError
    naming the flag on a bad value."""
    base = QUICK if args.quick else FULL
    settings = replace(
        base,
        num_replicas=args.replicas if args.replicas is not None else base.num_replicas,
        time_scale=args.time_scale if args.time_scale is not None else base.time_scale,
        request_rate=args.request_rate if args.request_rate is not None else base.request_rate,
        num_requests=args.num_requests if args.num_requests is not None else base.num_requests,
    )
    checks = (
        ("--replicas", settings.num_replicas >= 1),
        ("--time-scale", settings.time_scale > 0),
        ("--request-rate", settings.request_rate > 0),
        ("--num-requests", settings.num_requests >= 1),
    )
    for flag, is_ok in checks:
        if not is_ok:
            value = getattr(args, flag[2:].replace("-", "_"))
            raise ValueError(f"{flag}: invalid value {value!r}")
    return settings


@contextlib.asynccontextmanager
async def serve_gateway(model: str, endpoints: list[str], preset: str) -> AsyncIterator[str]:
    """A gateway on 127.0.0.1 (ephemeral port) routing `model` over `endpoints` with
    `preset`; yields its base URL, drains and stops it on exit."""
    config = config_from_mapping(
        {"pools": [{"model": model, "endpoints": endpoints, "routing": preset}]}
    )
    gateway = Gateway(config)
    server = await start_serving(gateway, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await stop_serving(server, gateway, config.timeouts.drain_s)


async def requests_per_endpoint(gateway_url: str) -> dict[str, int]:
    """How many completions a gateway sent to each endpoint (its /metrics)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.get(gateway_url + "/metrics") as resp,
    ):
        text = await resp.text()
    counts: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "headway_gateway_requests_total":
                endpoint = sample.labels.get("endpoint", "?")
                counts[endpoint] = counts.get(endpoint, 0) + int(sample.value)
    return counts


def spread_table(urls: list[str], counts: Mapping[str, Mapping[str, int]]) -> TextTable:
    """Calls per replica for each arm (a row per arm, a column per replica)."""
    return TextTable(
        "Calls per replica",
        ("Arm", *(f"r{i}" for i in range(len(urls)))),
        tuple(
            (label, *(str(per_endpoint.get(u, 0)) for u in urls))
            for label, per_endpoint in counts.items()
        ),
    )


def _headline(results: Mapping[str, Any]) -> list[str]:
    """One line per key metric: the cache-aware arm against round-robin."""
    arms = results.get("arms", [])
    if len(arms) < 2:
        return []
    base, cand = (arm["points"][0]["summary"] for arm in arms[:2])
    lines = []
    for label, key, unit in (
        ("TTFT p50", "median_ttft_ms", " ms"),
        ("TTFT p99", "p99_ttft_ms", " ms"),
        ("E2E p50", "median_e2el_ms", " ms"),
    ):
        a, b = base.get(key), cand.get(key)
        if isinstance(a, int | float) and isinstance(b, int | float) and a > 0:
            lines.append(
                f"{label}: {b:,.0f}{unit} with {arms[1]['label']} vs {a:,.0f}{unit} with "
                f"{arms[0]['label']} ({100 * (b - a) / a:+.0f}%)"
            )
    a, b = base.get("cached_token_share"), cand.get("cached_token_share")
    if isinstance(a, int | float) and isinstance(b, int | float):
        lines.append(
            f"prompt tokens served from the prefix cache: {100 * b:.0f}% with "
            f"{arms[1]['label']} vs {100 * a:.0f}% with {arms[0]['label']}"
        )
    return lines


async def run_demo(
    args: argparse.Namespace,
    settings: DemoSettings,
    console: Console,
    stop_event: asyncio.Event | None = None,
) -> int:
    """Start the fleet and both gateways, run both arms, report; the exit status (130
    when `stop_event` ended the run early: the partial results are still reported)."""
    sim = SimConfig(
        model=args.model,
        gpu=args.gpu,
        num_replicas=settings.num_replicas,
        port=0,
        time_scale=settings.time_scale,
        seed=args.seed,
        enable_prompt_tokens_details=True,
        kv_events=KvEventsSettings("tcp://127.0.0.1:0", "tcp://127.0.0.1:0"),
    )
    fleet = Fleet(sim)
    await fleet.start()
    try:
        info = fleet.describe()
        urls = [r.url for r in fleet.replicas]
        model = sim.names[0]
        console.rule("[bold]Headway demo: cache-aware routing against round-robin")
        console.print(
            f"Fleet: {len(urls)} simulated vLLM replicas of {info['model']} on {info['gpu']} "
            f"({info['precision']}, TP{info['tp']}), {info['num_gpu_blocks']:,} KV blocks of "
            f"{info['block_size']} tokens each, KV events on; time-scale "
            f"{settings.time_scale:g} (latencies below are wall-clock: the modeled GPU's "
            f"are {settings.time_scale:g}x these).",
            highlight=False,
        )
        async with (
            serve_gateway(model, urls, BASELINE_PRESET) as base_url,
            serve_gateway(model, urls, CACHE_AWARE_PRESET) as cand_url,
        ):
            console.print(f"Gateways: {BASELINE_PRESET} at {base_url}, "
                          f"{CACHE_AWARE_PRESET} at {cand_url}", highlight=False)  # fmt: skip
            console.print(
                f"Workload: agentic, {settings.num_requests} calls per arm, "
                f"{settings.request_rate:g} agent runs/s, the same seeded runs through each "
                "gateway; every replica's prefix cache is emptied before each arm.",
                highlight=False,
            )
            config = BenchConfig(
                targets=(
                    BenchTarget(base_url, BASELINE_PRESET, reset_urls=tuple(urls)),
                    BenchTarget(cand_url, CACHE_AWARE_PRESET, reset_urls=tuple(urls)),
                ),
                model=model,
                workload="agentic",
                workload_params=settings.workload_params,
                request_rate=settings.request_rate,
                num_requests=settings.num_requests,
                reset_cache=True,
                seed=args.seed,
                show_progress=sys.stderr.isatty(),
                num_client_processes=settings.num_client_processes,
                max_scheduling_lag_ms=MAX_CLIENT_LAG_MODEL_MS / settings.time_scale,
                command="headway demo " + " ".join(sys.argv[2:]),
            )
            results = await run_bench(config, stop_event=stop_event, console=console)
            spread = {
                BASELINE_PRESET: await requests_per_endpoint(base_url),
                CACHE_AWARE_PRESET: await requests_per_endpoint(cand_url),
            }
        lags_ms = [1e3 * r.server.replica.max_observed_lag_s for r in fleet.replicas]
    finally:
        await fleet.stop()
    console.rule("Results (wall-clock ms)")
    print_summary(results, console)
    ran = {str(arm["label"]) for arm in results["arms"]}
    spread_text = spread_table(urls, {k: v for k, v in spread.items() if k in ran})
    console.print(rich_table(spread_text))
    for line in _headline(results):
        console.print(line, highlight=False)
    worst_lag_ms = max(lags_ms, default=0.0)
    if worst_lag_ms * settings.time_scale > MAX_SIM_LAG_MODEL_MS:
        console.print(
            f"WARNING: a simulated replica fell {worst_lag_ms:.0f} ms behind its modeled "
            "schedule: this machine did not keep up; try fewer --replicas or a lower "
            "--time-scale.",
            style="bold yellow",
            highlight=False,
        )
    out_dir: Path = args.out
    write_results(results, out_dir)
    write_report(results, out_dir, extra_tables=[spread_text])
    console.print(
        f"Report: {(out_dir / 'report.html').resolve()} (also summary.md, results.json and "
        "the PNG plots in that directory)",
        highlight=False,
        soft_wrap=True,
    )
    if results["metadata"].get("is_partial"):
        console.print("Interrupted: the results above are partial.", style="bold yellow")
        return EXIT_INTERRUPTED
    return 0


async def _run_with_stop(args: argparse.Namespace, settings: DemoSettings, console: Console) -> int:
    """`run_demo` where the first Ctrl-C stops the measurement (partial results are
    still reported) and a second one aborts."""
    return await run_demo(args, settings, console, stop_on_first_sigint("headway demo"))


def run(args: argparse.Namespace) -> int:
    """`headway demo`."""
    import uvloop

    try:
        settings = settings_from_args(args)
    except ValueError as exc:
        print(f"headway demo: error: {exc}", file=sys.stderr)
        return 2
    console = Console()
    try:
        return uvloop.run(_run_with_stop(args, settings, console))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return EXIT_INTERRUPTED
    except (OSError, GatewayConfigError) as exc:
        print(f"headway demo: error: {exc}", file=sys.stderr)
        return 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
