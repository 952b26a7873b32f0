"""`headway serve`: run the gateway.

    headway serve --config gateway.yaml
    headway serve --port 8080 --endpoints http://127.0.0.1:9000,http://127.0.0.1:9001
    headway serve --endpoints http://127.0.0.1:9000,http://127.0.0.1:9001 \
        --kv-events tcp://127.0.0.1:5557,tcp://127.0.0.1:5558
    headway serve            # embedded simulated fleet of 4 replicas on 127.0.0.1:8080
                             # (KV events on, routed with the kv-aware preset)

SIGTERM / SIGINT drain: stop accepting, let in-flight requests finish for up to
`timeouts.drain_s`, then cancel them. SIGHUP re-reads the --config file (pools,
endpoints, profiles) without dropping requests; `--admin-port` serves the admin
routes (admin.py). See docs/operations.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.request import urlopen

from aiohttp import web

from headway.cli_support import run_main, setup_logging
from headway.gateway.accounting import setup_access_log
from headway.gateway.admin import ReloadError, make_admin_app, reload_gateway
from headway.gateway.config import (
    AccessLogConfig,
    AdminConfig,
    EngineKind,
    GatewayConfig,
    GatewayConfigError,
    LimitsConfig,
    ListenConfig,
    PoolConfig,
    PromptConfig,
    config_from_mapping,
    load_config,
    validate_endpoint,
)
from headway.gateway.h1_server import H1Server
from headway.gateway.server import Gateway
from headway.gateway.workers import Supervisor

log = logging.getLogger(__name__)

EMBEDDED_REPLICAS = 4
EMBEDDED_PROFILE = "kv-aware"  # the embedded fleet publishes KV events
# After the drain, for closing idle connections (aiohttp waits up to twice this).
_CLOSE_TIMEOUT_S = 1.0
# Net allocations of tracked objects between young-generation collections (CPython's
# default: 700). Requests free what they allocate by reference counting; what
# accumulates between collections is the in-flight requests' state, so at high
# concurrency the default collects every few dozen requests, each pass walking every
# live request's objects.
GC_GEN0_THRESHOLD = 10_000


class CliError(ValueError):
    """A bad flag; the message names it."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="gateway YAML (docs/configuration.md)")
    p.add_argument("--endpoints", default=None,
                   help="comma-separated upstream base URLs (quick form, one pool)")  # fmt: skip
    p.add_argument("--model", nargs="+", default=None, metavar="NAME",
                   help="quick form: the pool's model, then aliases (default: ask the first endpoint)")  # fmt: skip
    p.add_argument("--engine", default=EngineKind.VLLM.value, choices=[e.value for e in EngineKind])
    p.add_argument("--profile", default=None,
                   help="routing preset (default: kv-aware with KV events, else kv-aware-approx)")  # fmt: skip
    p.add_argument("--kv-events", default=None, metavar="ADDRS",
                   help="quick form: comma-separated KV-event PUB addresses (tcp://HOST:PORT), "
                   "one per --endpoints entry, in the same order")  # fmt: skip
    p.add_argument("--no-kv-events-discovery", action="store_true",
                   help="do not ask endpoints' /kv_event_sources for KV-event sources")  # fmt: skip
    p.add_argument("--hash-seed", default=None, metavar="SEED",
                   help="quick form: the engines' PYTHONHASHSEED, so precise block hashes match "
                   "theirs (default: unset, vLLM's fixed seed)")  # fmt: skip
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="quick form: the engines' tokenizer.json for precise prefix matching "
                   "(default: the shipped tokenizer)")  # fmt: skip
    p.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=None, help="listen port (default 8080; 0 = ephemeral)"
    )
    p.add_argument("--max-body-bytes", type=int, default=None)
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="N gateway processes sharing the port (SO_REUSEPORT), each with "
                   "its own state (docs/operations.md); default 1")  # fmt: skip
    p.add_argument("--admin-port", type=int, default=None, metavar="PORT",
                   help="serve the admin routes (cordon, drain, reload) on this port, "
                   "on --admin-host (default 127.0.0.1); 0 = ephemeral")  # fmt: skip
    p.add_argument("--admin-host", default=None, help="admin listen address (default 127.0.0.1)")
    p.add_argument("--max-in-flight-per-endpoint", type=int, default=None, metavar="N",
                   help="quick form: in-flight cap per endpoint (default 256)")  # fmt: skip
    p.add_argument("--max-queue", type=int, default=None, metavar="N",
                   help="quick form: admission queue length (default 1024; 0 = no queue)")  # fmt: skip
    p.add_argument("--max-queue-wait", type=float, default=None, metavar="SECONDS",
                   help="quick form: longest wait in the admission queue (default 30)")  # fmt: skip
    p.add_argument("--ready-file", type=Path, default=None,
                   help="write the bound address as JSON here once serving")  # fmt: skip
    p.add_argument("--access-log", default=None, metavar="PATH|-",
                   help="JSON access log, one line per request: a file, or - for stderr "
                   "(default: the config's access_log, else stderr)")  # fmt: skip
    p.add_argument("--no-access-log", action="store_true", help="no access log")
    p.add_argument("--log-level", default="WARNING")


def _discover_models(endpoint: str) -> tuple[str, ...]:
    try:
        with urlopen(endpoint + "/v1/models", timeout=5) as resp:
            data = json.loads(resp.read())
        names = tuple(str(m["id"]) for m in data["data"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CliError(
            f"--model: not given, and {endpoint}/v1/models did not list models ({exc})"
        ) from None
    if not names:
        raise CliError(f"--model: not given, and {endpoint}/v1/models lists none")
    return names


_ADMISSION_FLAGS = {
    "max_in_flight_per_endpoint": "--max-in-flight-per-endpoint",
    "admission.max_queue": "--max-queue",
    "admission.max_wait_s": "--max-queue-wait",
}


def _backpressure(args: argparse.Namespace) -> dict[str, Any]:
    """The pool fields the quick-form backpressure flags set."""
    out: dict[str, Any] = {}
    if args.max_in_flight_per_endpoint is not None:
        out["max_in_flight_per_endpoint"] = args.max_in_flight_per_endpoint
    admission = {}
    if args.max_queue is not None:
        admission["max_queue"] = args.max_queue
    if args.max_queue_wait is not None:
        admission["max_wait_s"] = args.max_queue_wait
    if admission:
        out["admission"] = admission
    return out


def _profile(args: argparse.Namespace) -> dict[str, Any]:
    return {"routing": args.profile} if args.profile else {}


def _quick_pool(args: argparse.Namespace) -> PoolConfig:
    endpoints: list[str] = []
    for i, raw in enumerate(x for x in args.endpoints.split(",")):
        try:
            endpoints.append(validate_endpoint(raw, f"--endpoints[{i}]"))
        except GatewayConfigError as exc:
            raise CliError(str(exc)) from None
    entries: list[Any] = list(endpoints)
    if args.kv_events is not None:
        kv = [x.strip() for x in args.kv_events.split(",")]
        if len(kv) != len(endpoints):
            raise CliError(
                f"--kv-events: {len(kv)} address(es) for {len(endpoints)} --endpoints; "
                "give one per endpoint, in the same order"
            )
        entries = [{"url": u, "kv_events": k} for u, k in zip(endpoints, kv, strict=True)]
    names = tuple(args.model) if args.model else _discover_models(endpoints[0])
    return _checked_pool(
        {
            "model": names[0],
            "aliases": list(names[1:]),
            "endpoints": entries,
            "engine": args.engine,
            **_profile(args),
            **_backpressure(args),
        },
        _collectors(args),
    )


def _collectors(args: argparse.Namespace) -> dict[str, Any]:
    return {"discover_kv_events": False} if args.no_kv_events_discovery else {}


def _checked_pool(raw: dict[str, Any], collectors: dict[str, Any] | None = None) -> PoolConfig:
    try:
        return config_from_mapping({"pools": [raw], "collectors": collectors or {}}).pools[0]
    except GatewayConfigError as exc:
        flag = {"routing": "--profile", "engine": "--engine", "model": "--model"}
        path = exc.path.removeprefix("pools[0].")
        if path in _ADMISSION_FLAGS:
            raise CliError(f"{_ADMISSION_FLAGS[path]}: {exc.message}") from None
        if path.startswith("endpoints[") and ".kv_events" in path:
            index = path.split("[", 1)[1].split("]", 1)[0]
            raise CliError(f"--kv-events[{index}]: {exc.message}") from None
        name = path.split(".")[0].split("[")[0]
        raise CliError(f"{flag.get(name, path)}: {exc.message}") from None


def config_from_args(args: argparse.Namespace) -> tuple[GatewayConfig, bool]:
    """The config, and whether it needs the embedded simulated fleet."""
    if args.port is not None and not 0 <= args.port <= 65535:
        raise CliError(f"--port: must be in [0, 65535], got {args.port}")
    if args.max_body_bytes is not None and args.max_body_bytes < 1:
        raise CliError(f"--max-body-bytes: must be >= 1, got {args.max_body_bytes}")
    if args.kv_events is not None and args.endpoints is None:
        raise CliError("--kv-events: only with --endpoints (one address per endpoint)")
    if args.config is not None:
        if args.endpoints is not None:
            raise CliError("--endpoints: cannot be combined with --config")
        if args.model or args.profile or args.hash_seed or args.tokenizer:
            raise CliError(
                "--model/--profile/--hash-seed/--tokenizer: set them in the --config file"
            )
        if _backpressure(args):
            raise CliError(
                "--max-in-flight-per-endpoint/--max-queue/--max-queue-wait: "
                "set them per pool in the --config file"
            )
        try:
            config = load_config(args.config)
        except GatewayConfigError as exc:
            raise CliError(f"--config {args.config}: {exc}") from None
        embedded = False
    elif args.endpoints is not None:
        if not args.endpoints.strip():
            raise CliError("--endpoints: must list at least one URL")
        pool = _quick_pool(args)
        config = GatewayConfig(
            pools=(pool,),
            collectors=replace(
                GatewayConfig(pools=()).collectors,
                discover_kv_events=not args.no_kv_events_discovery,
            ),
            prompt=PromptConfig(tokenizer=args.tokenizer, hash_seed=args.hash_seed),
        )
        embedded = False
    else:
        if args.model or args.profile or _backpressure(args):
            _checked_pool(
                {
                    "model": (args.model or ["x"])[0],
                    # like the embedded fleet: an endpoint publishing KV events
                    "endpoints": [{"url": "http://127.0.0.1:1", "kv_events": "tcp://127.0.0.1:1"}],
                    "routing": args.profile or EMBEDDED_PROFILE,
                    **_backpressure(args),
                }
            )
        # Filled in once the embedded fleet is up and its ports are known.
        config = GatewayConfig(pools=())
        embedded = True
    if args.workers < 1:
        raise CliError(f"--workers: must be >= 1, got {args.workers}")
    if args.workers > 1 and embedded:
        raise CliError("--workers: needs --endpoints or --config (not the embedded fleet)")
    if args.admin_port is not None and not 0 <= args.admin_port <= 65535:
        raise CliError(f"--admin-port: must be in [0, 65535], got {args.admin_port}")
    return apply_overrides(args, config), embedded


def apply_overrides(args: argparse.Namespace, config: GatewayConfig) -> GatewayConfig:
    """The config with the flags that override the file's values applied."""
    listen = ListenConfig(
        host=args.host or config.listen.host,
        port=args.port if args.port is not None else config.listen.port,
    )
    limits = config.limits
    if args.max_body_bytes is not None:
        limits = LimitsConfig(max_body_bytes=args.max_body_bytes)
    admin = AdminConfig(
        host=args.admin_host or config.admin.host,
        port=args.admin_port if args.admin_port is not None else config.admin.port,
    )
    return replace(
        config,
        listen=listen,
        limits=limits,
        admin=admin,
        access_log=_access_log_override(args, config),
    )


def _access_log_override(args: argparse.Namespace, config: GatewayConfig) -> AccessLogConfig:
    if args.no_access_log:
        if args.access_log is not None:
            raise CliError("--no-access-log: cannot be combined with --access-log")
        return AccessLogConfig(enabled=False)
    if args.access_log is None:
        return config.access_log
    if not args.access_log.strip():
        raise CliError("--access-log: give a file path, or - for stderr")
    return AccessLogConfig(enabled=True, path=None if args.access_log == "-" else args.access_log)


async def _start_embedded(
    args: argparse.Namespace, config: GatewayConfig
) -> tuple[Any, GatewayConfig]:
    # Only the embedded default needs the simulator.
    from headway.sim.config import KvEventsSettings, SimConfig
    from headway.sim.fleet import Fleet

    names = tuple(args.model) if args.model else ()
    # KV events on ephemeral ports (":0" binds a free one, replica by replica).
    kv = KvEventsSettings(endpoint="tcp://127.0.0.1:0", replay_endpoint="tcp://127.0.0.1:0")
    fleet = Fleet(
        SimConfig(
            num_replicas=EMBEDDED_REPLICAS,
            port=0,
            served_model_names=names,
            kv_events=kv,
            # The gateway's precise block hashes must use the simulator's seed.
            hash_seed=config.prompt.hash_seed,
        )
    )
    await fleet.start()
    pool = _checked_pool(
        {
            "model": fleet.config.names[0],
            "aliases": list(fleet.config.names[1:]),
            "endpoints": [
                {
                    "url": r.url,
                    "kv_events": {
                        "endpoint": r.kv_events_endpoint,
                        "replay_endpoint": r.kv_replay_endpoint,
                    },
                }
                for r in fleet.replicas
            ],
            "routing": args.profile or EMBEDDED_PROFILE,
            **_backpressure(args),
        }
    )
    return fleet, replace(config, pools=(pool,))


async def serve(
    args: argparse.Namespace, config: GatewayConfig, embedded: bool, worker: int | None = None
) -> None:
    """Serve until SIGTERM/SIGINT; `worker`: this process's index under `--workers`
    (the port is then shared with SO_REUSEPORT)."""
    fleet = None
    server: H1Server | None = None
    admin_runner: web.AppRunner | None = None
    gateway: Gateway | None = None
    try:
        if embedded:
            fleet, config = await _start_embedded(args, config)
        setup_access_log(config.access_log)
        gateway = Gateway(config, worker=worker)
        if args.config is not None:
            path = args.config
            gateway.config_loader = lambda: apply_overrides(args, load_config(path))
        # Before anything can announce readiness: a signal sent as soon as the ready
        # file exists (a supervisor's SIGHUP or SIGTERM) must find the handlers.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[None]] = set()

        def on_sighup() -> None:
            assert gateway is not None
            task = asyncio.create_task(_reload_on_signal(gateway))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        server = await start_serving(
            gateway,
            config.listen.host,
            config.listen.port,
            reuse_port=True if worker is not None else None,
        )
        _tune_gc()
        port = server.port
        host = config.listen.host
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
        admin_url = None
        if config.admin.port is not None:
            admin_runner = web.AppRunner(
                make_admin_app(gateway), access_log=None, shutdown_timeout=_CLOSE_TIMEOUT_S
            )
            await admin_runner.setup()
            await web.TCPSite(
                admin_runner, config.admin.host, config.admin.port, reuse_address=True
            ).start()
            admin_port = next(a[1] for a in admin_runner.addresses if isinstance(a, tuple))
            admin_host = config.admin.host
            admin_url = f"http://{'127.0.0.1' if admin_host in ('0.0.0.0', '') else admin_host}:{admin_port}"  # fmt: skip
        info = {
            "url": url,
            "host": host,
            "port": port,
            "pools": [
                {
                    "model": p.model,
                    "aliases": list(p.aliases),
                    "endpoints": list(p.endpoints),
                    "routing": p.routing if isinstance(p.routing, str) else "custom",
                    "kv_events": p.has_kv_events,
                }
                for p in config.pools
            ],
            "embedded_fleet": embedded,
            "admin_url": admin_url,
            "pid": os.getpid(),
            "worker": worker,
        }
        if args.ready_file is not None:
            tmp = args.ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(info))
            tmp.replace(args.ready_file)
        if worker is None:  # the supervisor announces workers
            print(
                f"headway gateway on {url}" + (" (embedded simulated fleet)" if embedded else ""),
                flush=True,
            )
            if admin_url is not None:
                print(f"  admin routes on {admin_url}/admin/", flush=True)
            for p in config.pools:
                print(
                    f"  model {p.model}: {', '.join(p.endpoints) or '(no endpoints)'}", flush=True
                )
        await stop.wait()
    finally:
        if admin_runner is not None:
            for admin_site in list(admin_runner.sites):
                await admin_site.stop()
        if server is not None and gateway is not None:
            await stop_serving(server, gateway, config.timeouts.drain_s)
        if admin_runner is not None:
            await admin_runner.cleanup()
        if fleet is not None:
            await fleet.stop()


def _tune_gc() -> None:
    """Once started: what start-up built (modules, config, routing state, the aiohttp
    app, the metrics registry, the tokenizer) lives as long as the process, so it
    leaves the cyclic GC's generations (`gc.freeze`): a full collection then walks
    only what requests left behind. Young collections run less often
    (`GC_GEN0_THRESHOLD`). A reload's new objects are collected as usual."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


async def _reload_on_signal(gateway: Gateway) -> None:
    try:
        await reload_gateway(gateway)
    except ReloadError as exc:
        log.error("SIGHUP: reload rejected: %s", exc.message)
    except Exception:
        log.exception("SIGHUP: reload failed; the running config keeps serving")


async def start_serving(
    gateway: Gateway, host: str, port: int, reuse_port: bool | None = None
) -> H1Server:
    """Start `gateway`'s collectors, then its client-facing server on `host`:`port`
    (0: an ephemeral port, see `H1Server.port`)."""
    await gateway.start()
    server = gateway.make_server()
    try:
        await server.start(host, port, reuse_port=reuse_port)
    except BaseException:
        await gateway.close()
        raise
    return server


async def stop_serving(server: H1Server, gateway: Gateway, drain_s: float) -> None:
    """Stop accepting, let in-flight requests run up to `drain_s`, cancel the rest,
    then close connections and the gateway's collectors."""
    server.stop_accepting()
    num_cancelled = await gateway.drain(drain_s)
    if num_cancelled:
        log.warning(
            "drain: cancelled %d request(s) still running after %s s", num_cancelled, drain_s
        )
    await server.close(_CLOSE_TIMEOUT_S)
    await gateway.close()


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    try:
        config, embedded = config_from_args(args)
    except CliError as exc:
        print(f"headway serve: error: {exc}", file=sys.stderr)
        return 2
    if args.workers > 1:

        def worker_main(worker_config: GatewayConfig, index: int, ready: Path) -> int:
            args.ready_file = ready
            # What this worker binds, so that a reload's overrides match what runs.
            args.port = worker_config.listen.port
            args.admin_port = worker_config.admin.port
            return run_main("headway serve", serve(args, worker_config, False, index), (OSError,))

        try:
            return Supervisor(config, args.workers, worker_main, args.ready_file).run()
        except OSError as exc:
            print(f"headway serve: error: {exc}", file=sys.stderr)
            return 2
    return run_main("headway serve", serve(args, config, embedded), (OSError,))
