"""`headway sim`: run N simulated vLLM replicas in one process (or, with --processes,
split across several: contiguous index ranges, one worker process each besides this
one; a worker exits when this process does).

Replica i listens on --port + i. With --kv-events-port Q, replica i publishes KV
events on tcp://*:(Q + i) and serves replay on tcp://*:(Q + 1000 + i); or pass vLLM's
--kv-events-config JSON, whose endpoint ports are offset by i the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec

from headway.cli_support import run_main, setup_logging
from headway.core.engine_factory import DEFAULT_PRECISION
from headway.core.kv_events import WireEncoding
from headway.sim import clock, trace
from headway.sim.clock import GC_PACER
from headway.sim.config import KvEventsSettings, SimConfig
from headway.sim.faults import FaultConfig, FaultConfigError
from headway.sim.fleet import Fleet, FleetConfigError

REPLAY_PORT_OFFSET = 1000


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fleet")
    g.add_argument("--replicas", type=int, default=1, help="number of replicas (default 1)")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument(
        "--port", type=int, default=8000, help="replica i listens on PORT+i; 0 = ephemeral"
    )
    g.add_argument("--time-scale", type=float, default=1.0,
                   help="model seconds per wall second; 0.1 runs ten times slower than the modeled GPU")  # fmt: skip
    g.add_argument("--seed", type=int, default=0, help="seed of generated text and faults")
    g.add_argument(
        "--ready-file", type=Path, help="write the fleet's addresses as JSON here when ready"
    )
    g.add_argument("--processes", type=int, default=1,
                   help="split the replicas across this many processes (default 1), for "
                        "fleets one core cannot keep on time")  # fmt: skip
    g = p.add_argument_group("model and hardware")
    g.add_argument("--model", default="llama-3.1-8b", help="catalog model name or alias")
    g.add_argument("--served-model-name", nargs="+", default=None, help="names the API accepts")
    g.add_argument("--gpu", default="h100")
    g.add_argument("--precision", default=DEFAULT_PRECISION)
    g.add_argument("--tp", "--tensor-parallel-size", dest="tp", type=int, default=1)
    g.add_argument(
        "--catalog", action="append", default=[], help="extra catalog YAML (GPUs, models)"
    )
    g.add_argument(
        "--tokenizer", default=None, help="a Hugging Face tokenizer.json (default: shipped)"
    )
    g.add_argument("--mean-output-tokens", type=float, default=200.0,
                   help="mean natural answer length when ignore_eos is not set")  # fmt: skip
    g.add_argument("--api-overhead-ms", type=float, default=0.0,
                   help="the API server's latency per request (model ms; default 0): a "
                        "request reaches the engine this long after it arrived; counted in "
                        "TTFT and e2e latency, not in queue time")  # fmt: skip
    g = p.add_argument_group("engine (vLLM's flags)")
    g.add_argument("--block-size", type=int, default=16)
    g.add_argument("--max-num-seqs", type=int, default=None,
                   help="default as vLLM 0.32 on the GPU: 1024 (>= 70 GiB), else 256")  # fmt: skip
    g.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="default as vLLM 0.32: 16384 (>= 160 GiB), 8192 (>= 70 GiB), else 2048")  # fmt: skip
    g.add_argument("--max-model-len", type=int, default=None)
    g.add_argument("--num-gpu-blocks-override", type=int, default=None)
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--enable-prompt-tokens-details", action="store_true",
                   help="report usage.prompt_tokens_details.cached_tokens (off by default, as in vLLM)")  # fmt: skip
    g.add_argument("--prefix-caching-hash-algo", default="sha256_cbor", choices=["sha256_cbor"])
    g.add_argument("--max-body-bytes", type=int, default=64 * 1024 * 1024)
    g = p.add_argument_group("KV events")
    g.add_argument("--kv-events-port", type=int, default=None,
                   help="publish on tcp://*:(Q+i), replay on tcp://*:(Q+1000+i)")  # fmt: skip
    g.add_argument("--kv-events-config", default=None, help="vLLM's JSON form")
    g.add_argument("--kv-events-encoding", choices=[e.value for e in WireEncoding], default="map",
                   help="map: vLLM 0.32 (tagged maps); array: older vLLM (tagged arrays)")  # fmt: skip
    g.add_argument("--kv-events-topic", default="")
    g = p.add_argument_group("fault injection (all replicas, or those in --fault-replicas)")
    g.add_argument("--fault-error-rate", type=float, default=0.0)
    g.add_argument("--fault-crash-after", type=int, default=None)
    g.add_argument("--fault-hang", action="store_true")
    g.add_argument("--fault-slowdown", type=float, default=1.0)
    g.add_argument("--fault-drop-stream-after", type=int, default=None)
    g.add_argument("--fault-replicas", default=None, help="comma-separated replica indexes")
    p.add_argument("--log-level", default="WARNING")


# FaultConfig field -> the flag that sets it.
_FAULT_FLAGS = {
    "error_rate": "--fault-error-rate",
    "crash_after_requests": "--fault-crash-after",
    "hang": "--fault-hang",
    "slowdown": "--fault-slowdown",
    "drop_stream_after_tokens": "--fault-drop-stream-after",
}


class CliError(ValueError):
    """A bad flag; the message names it."""


def _kv_settings(args: argparse.Namespace) -> KvEventsSettings | None:
    encoding = WireEncoding(args.kv_events_encoding)
    if args.kv_events_config:
        try:
            cfg = json.loads(args.kv_events_config)
        except json.JSONDecodeError as exc:
            raise CliError(f"--kv-events-config: not valid JSON: {exc}") from None
        if not isinstance(cfg, dict):
            raise CliError("--kv-events-config: must be a JSON object")
        if not cfg.get("enable_kv_cache_events", False):
            return None
        if cfg.get("publisher", "zmq") not in ("zmq", "null"):
            raise CliError(f"--kv-events-config: publisher {cfg['publisher']!r} is not supported")
        if cfg.get("publisher") == "null":
            return None
        return KvEventsSettings(
            endpoint=str(cfg.get("endpoint", "tcp://*:5557")),
            replay_endpoint=cfg.get("replay_endpoint"),
            topic=str(cfg.get("topic", "")),
            encoding=encoding,
            buffer_steps=int(cfg.get("buffer_steps", 10_000)),
        )
    if args.kv_events_port is None:
        return None
    q = args.kv_events_port
    return KvEventsSettings(
        endpoint=f"tcp://*:{q}",
        replay_endpoint=f"tcp://*:{q + REPLAY_PORT_OFFSET if q else 0}",
        topic=args.kv_events_topic,
        encoding=encoding,
    )


def config_from_args(args: argparse.Namespace) -> SimConfig:
    checks = [
        ("--replicas", args.replicas >= 1),
        ("--time-scale", args.time_scale > 0),
        ("--block-size", args.block_size >= 1),
        ("--max-num-seqs", args.max_num_seqs is None or args.max_num_seqs >= 1),
        (
            "--max-num-batched-tokens",
            args.max_num_batched_tokens is None or args.max_num_batched_tokens >= 1,
        ),
        ("--tp", args.tp >= 1),
        ("--port", 0 <= args.port <= 65535 - args.replicas),
        ("--processes", 1 <= args.processes <= max(args.replicas, 1)),
        ("--gpu-memory-utilization", 0 < args.gpu_memory_utilization <= 1),
        ("--api-overhead-ms", 0 <= args.api_overhead_ms < float("inf")),
    ]
    for flag, ok in checks:
        if not ok:
            raise CliError(f"{flag}: invalid value {getattr(args, flag[2:].replace('-', '_'))!r}")
    if args.num_gpu_blocks_override is not None and args.num_gpu_blocks_override < 1:
        raise CliError("--num-gpu-blocks-override: must be >= 1")
    try:
        faults = FaultConfig(
            error_rate=args.fault_error_rate,
            crash_after_requests=args.fault_crash_after,
            hang=args.fault_hang,
            slowdown=args.fault_slowdown,
            drop_stream_after_tokens=args.fault_drop_stream_after,
        )
    except FaultConfigError as exc:
        # The message starts with the config field's name; name the flag instead.
        name, _, detail = str(exc).partition(":")
        raise CliError(f"{_FAULT_FLAGS.get(name, '--fault-' + name)}:{detail}") from None
    fault_replicas = None
    if args.fault_replicas:
        try:
            fault_replicas = tuple(int(x) for x in args.fault_replicas.split(","))
        except ValueError:
            raise CliError("--fault-replicas: expected comma-separated integers") from None
    return SimConfig(
        model=args.model,
        served_model_names=tuple(args.served_model_name or ()),
        gpu=args.gpu,
        precision=args.precision,
        tp=args.tp,
        num_replicas=args.replicas,
        host=args.host,
        port=args.port,
        time_scale=args.time_scale,
        seed=args.seed,
        block_size=args.block_size,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        num_gpu_blocks_override=args.num_gpu_blocks_override,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enable_prefix_caching=args.enable_prefix_caching,
        enable_prompt_tokens_details=args.enable_prompt_tokens_details,
        # vLLM seeds the hash chain with PYTHONHASHSEED when it is set.
        hash_seed=os.environ.get("PYTHONHASHSEED"),
        tokenizer=args.tokenizer,
        catalog_files=tuple(args.catalog),
        kv_events=_kv_settings(args),
        faults=faults,
        fault_replicas=fault_replicas,
        max_body_bytes=args.max_body_bytes,
        mean_output_tokens=args.mean_output_tokens,
        api_overhead_s=args.api_overhead_ms / 1000,
        num_processes=args.processes,
    )


def _freeze_gc() -> None:
    # The engines' block tables are large and live for the whole run: keep them out
    # of the cyclic GC's full collections, whose pauses would delay token emission.
    gc.collect()
    gc.freeze()
    # A full collection stops every replica for milliseconds; the default (one per
    # ten second-generation collections, every few seconds under load) shows in the
    # token lag's tail. Garbage cycles rarely live long enough to need one.
    # A second-generation collection walks what survived the first-generation ones
    # since the last (in-flight requests' objects): one every 5 of those instead of 10
    # halves its pause (traced at time-scale 0.25, 8 replicas: 1.15 ms median against
    # 1.9, p99 1.75 against 3.2) for the same total, so it fits the gaps between step
    # ends; full collections stay as rare (every 200 of them).
    gen0, _, _ = gc.get_threshold()
    gc.set_threshold(gen0, 5, 200)
    # Collections run where the engine loops find a gap (`clock.GcPacer`), with a
    # periodic one as a backstop for a fleet that takes no steps.
    gc.disable()
    # The timer thread needs the GIL to wake the loop: while the loop runs Python code
    # it gets it only at the switch interval (default 5 ms, a third of a step at time
    # scale 0.25). A busy loop is asked to let go within 0.2 ms instead.
    sys.setswitchinterval(0.0002)


def _announce(info: dict[str, Any], ready_file: Path | None) -> None:
    line = json.dumps(info)
    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(line)
        tmp.replace(ready_file)
    for r in info["replicas"]:
        print(f"replica {r['index']}: {r['url']}"
              + (f"  kv-events {r['kv_events_endpoint']}" if r["kv_events_endpoint"] else ""),
              flush=True)  # fmt: skip


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve(config: SimConfig, ready_file: Path | None) -> None:
    if config.num_processes > 1 and config.replica_indices is None:
        await _serve_split(config, ready_file)
        return
    stop = _stop_event()
    fleet = Fleet(config)
    backstop = asyncio.ensure_future(_collect_garbage_periodically())
    try:
        await fleet.start()
        _freeze_gc()
        _announce(fleet.describe(), ready_file)
        await stop.wait()
    finally:
        backstop.cancel()
        await fleet.stop()


async def _collect_garbage_periodically(interval_s: float = 1.0) -> None:
    """The backstop for a fleet whose engine loops collect nothing (no steps): a
    collection due now runs only if none ran for `interval_s`. Busy loops collect in
    the gaps between step ends; a collection from here lands wherever the tick does
    (traced: a generation-1 one, ~2.5 ms, every second, amid the replicas'
    step ends)."""
    while True:
        await asyncio.sleep(interval_s)
        generation = GC_PACER.due()
        if generation is not None and clock.now() - GC_PACER.last_collected_at >= interval_s:
            if trace.ON:
                trace.ev("g0", -1, generation)
            GC_PACER.collect(generation)
            if trace.ON:
                trace.ev("g1", -1, generation)


WORKER_START_TIMEOUT_S = 120.0


async def _serve_split(config: SimConfig, ready_file: Path | None) -> None:
    """This process runs the first slice of replicas; one worker runs each other slice."""
    stop = _stop_event()
    slices = config.process_slices()
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    workers: list[tuple[asyncio.subprocess.Process, Path, tuple[int, ...]]] = []
    fleet = Fleet(replace(config, replica_indices=slices[0]))
    backstop = asyncio.ensure_future(_collect_garbage_periodically())
    with tempfile.TemporaryDirectory(prefix="headway-sim-") as tmp:
        try:
            for k, indices in enumerate(slices[1:], 1):
                path = Path(tmp) / f"worker{k}.json"
                payload = msgspec.json.encode(replace(config, replica_indices=indices))
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "headway.sim.cli", payload.decode(), str(path), level,
                    stdout=subprocess.DEVNULL,
                )  # fmt: skip
                workers.append((proc, path, indices))
            await fleet.start()
            _freeze_gc()
            info = fleet.describe()
            for proc, path, indices in workers:
                info["replicas"] += (await _worker_ready(proc, path, indices))["replicas"]
            info["replicas"].sort(key=lambda r: r["index"])
            _announce(info, ready_file)
            exits = [asyncio.ensure_future(proc.wait()) for proc, _, _ in workers]
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait([stopped, *exits], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            for (proc, _, indices), ended in zip(workers, exits, strict=True):
                if ended.done() and not stop.is_set():
                    raise FleetConfigError(
                        f"worker process for replicas {indices[0]}-{indices[-1]} exited "
                        f"with status {proc.returncode}"
                    )
        finally:
            for proc, _, _ in workers:
                if proc.returncode is None:
                    proc.terminate()
            for proc, _, _ in workers:
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
            backstop.cancel()
            await fleet.stop()


async def _worker_ready(
    proc: asyncio.subprocess.Process, path: Path, indices: tuple[int, ...]
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WORKER_START_TIMEOUT_S
    while not path.exists():
        if proc.returncode is not None:
            raise FleetConfigError(
                f"worker process for replicas {indices[0]}-{indices[-1]} failed to start "
                f"(status {proc.returncode}; its error is above)"
            )
        if loop.time() > deadline:
            raise FleetConfigError(f"worker process for replicas {indices[0]}-{indices[-1]} "
                                   f"not ready after {WORKER_START_TIMEOUT_S:.0f} s")  # fmt: skip
        await asyncio.sleep(0.05)
    info: dict[str, Any] = json.loads(path.read_text())
    return info


async def _worker(config: SimConfig, ready_file: Path) -> None:
    """A worker process: serve its replicas until signalled or orphaned."""
    parent = os.getppid()
    task = asyncio.ensure_future(serve(config, ready_file))
    while not task.done():
        await asyncio.wait([task], timeout=1.0)
        if os.getppid() != parent:  # the fleet's main process is gone
            os.kill(os.getpid(), signal.SIGTERM)
    await task


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    try:
        config = config_from_args(args)
    except CliError as exc:
        print(f"headway sim: error: {exc}", file=sys.stderr)
        return 2
    return run_main("headway sim", serve(config, args.ready_file), (FleetConfigError, OSError))


if __name__ == "__main__":  # a worker process of a fleet split across processes
    setup_logging(sys.argv[3])
    worker_config = msgspec.json.decode(sys.argv[1], type=SimConfig)
    sys.exit(
        run_main(
            "headway sim worker",
            _worker(worker_config, Path(sys.argv[2])),
            (FleetConfigError, OSError),
        )
    )
