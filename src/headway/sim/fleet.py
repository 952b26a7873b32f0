"""The simulated replicas of one process: replica i listens on port + i.

A fleet split across processes (`SimConfig.num_processes`) runs one `Fleet` per
process, each for its own replica indexes; ports, seeds and KV-event endpoints follow
the global index, so the split is invisible to clients.

Building a fleet resolves the catalog entries, sizes each replica's KV cache from the
cost model (or `--num-gpu-blocks-override`), creates engines with a shared tokenizer
and sampler, and starts one aiohttp site per replica (port 0 = ephemeral ports).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import zmq.asyncio
from aiohttp import web

from headway.core.block_hash import BlockHashMemo
from headway.core.costmodel import CostModel
from headway.core.engine import Engine
from headway.core.engine_factory import EngineSpec, EngineSpecError, resolve_engine
from headway.core.sampler import DeterministicSampler
from headway.core.tokenizer import ChatTemplate
from headway.resources.catalog import load_catalog
from headway.resources.tokenizer import (
    HfTokenizer,
    SharedEncodeCache,
    default_tokenizer,
    load_tokenizer,
)
from headway.sim.clock import AlarmTimer, EmitSlots, PreciseTimer, SimTimer
from headway.sim.config import SimConfig
from headway.sim.faults import FaultConfig, FaultInjector
from headway.sim.kv_publisher import KvEventPublisher, KvEventsConfig
from headway.sim.replica import Replica
from headway.sim.server import ReplicaServer

log = logging.getLogger(__name__)


class FleetConfigError(ValueError):
    """A configuration the fleet cannot run; the message names the flag."""


TIMER_ENV = "HEADWAY_SIM_TIMER"
TIMER_KINDS = ("auto", "alarm", "thread")


def make_timer(loop: asyncio.AbstractEventLoop) -> SimTimer:
    """The engine loops' timer, as `HEADWAY_SIM_TIMER` selects: `alarm` (SIGALRM, no
    thread), `thread` (a helper thread), or `auto` (the default: the alarm where it can
    run, i.e. on the main thread with ITIMER_REAL and SIGALRM free, else the thread).
    The alarm's wake-ups cost less CPU and skip one thread hand-off."""
    kind = os.environ.get(TIMER_ENV) or "auto"
    if kind not in TIMER_KINDS:
        raise FleetConfigError(f"{TIMER_ENV}={kind!r}: expected one of {', '.join(TIMER_KINDS)}")
    if kind == "thread" or (kind == "auto" and not AlarmTimer.is_available()):
        return PreciseTimer(loop)
    if not AlarmTimer.is_available():
        raise FleetConfigError(
            f"{TIMER_ENV}=alarm: ITIMER_REAL or SIGALRM is in use, or not on the main thread"
        )
    return AlarmTimer(loop)


def _offset_endpoint(endpoint: str, offset: int) -> str:
    m = re.fullmatch(r"(tcp://[^:]+|tcp://\[[^\]]+\]):(\d+)", endpoint)
    if not m:
        if offset and not endpoint.startswith("ipc://"):
            raise FleetConfigError(f"kv-events endpoint {endpoint!r}: expected tcp://HOST:PORT")
        return endpoint if not offset else f"{endpoint}-{offset}"
    port = int(m.group(2))
    return f"{m.group(1)}:{port + offset}" if port else endpoint


@dataclass
class ReplicaRuntime:
    """A started replica: its server, site and addresses."""

    server: ReplicaServer
    runner: web.AppRunner
    port: int
    kv_events_endpoint: str | None = None
    kv_replay_endpoint: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Fleet:
    """N simulated replicas sharing one event loop."""

    config: SimConfig
    replicas: list[ReplicaRuntime] = field(default_factory=list)
    tokenizer: HfTokenizer | None = None
    cost_model: CostModel | None = None
    _zmq: zmq.asyncio.Context | None = None
    _timer: SimTimer | None = None

    def describe(self) -> dict[str, Any]:
        assert self.cost_model is not None
        d = self.cost_model.deployment
        first = self.replicas[0].server.replica.engine.config if self.replicas else None
        return {
            "model": d.model.name,
            "served_model_names": list(self.config.names),
            "gpu": d.gpu.name,
            "precision": d.precision.name,
            "tp": d.tp,
            "time_scale": self.config.time_scale,
            "api_overhead_ms": self.config.api_overhead_s * 1000,
            "num_gpu_blocks": first.num_gpu_blocks if first else None,
            "block_size": self.config.block_size,
            "replicas": [
                {
                    "index": r.server.replica.index,
                    "url": r.url,
                    "port": r.port,
                    "kv_events_endpoint": r.kv_events_endpoint,
                    "kv_replay_endpoint": r.kv_replay_endpoint,
                    "pid": os.getpid(),
                }
                for r in self.replicas
            ],
        }

    async def start(self) -> None:
        cfg = self.config
        spec = EngineSpec(
            model=cfg.model,
            gpu=cfg.gpu,
            precision=cfg.precision,
            tp=cfg.tp,
            block_size=cfg.block_size,
            num_gpu_blocks_override=cfg.num_gpu_blocks_override,
            max_model_len=cfg.max_model_len,
            max_num_seqs=cfg.max_num_seqs,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            enable_prefix_caching=cfg.enable_prefix_caching,
            hash_seed=cfg.hash_seed,
        )
        try:
            resolved = resolve_engine(spec, load_catalog(cfg.catalog_files))
        except EngineSpecError as exc:
            # Name the command-line flag: "max_model_len: ..." -> "--max-model-len ...".
            flag = "--" + exc.field.replace("_", "-")
            message = str(exc)
            if message.startswith(exc.field + ":"):
                message = flag + message[len(exc.field) :]
            raise FleetConfigError(message) from None
        self.cost_model = cost_model = resolved.cost_model
        engine_config = resolved.config
        self.tokenizer = tok = (
            load_tokenizer(cfg.tokenizer) if cfg.tokenizer else default_tokenizer()
        )
        vocab = tok.output_vocab()
        # Replicas share block size and seed: a prefix sent to several is hashed once.
        hash_memo = BlockHashMemo()
        # ... and a prompt rendered or tokenized by several replicas is encoded once.
        shared_tok = SharedEncodeCache(tok)
        template = ChatTemplate()
        if cfg.kv_events is not None:
            self._zmq = zmq.asyncio.Context()
        self._timer = timer = make_timer(asyncio.get_running_loop())
        slots = EmitSlots()  # the replicas share their loop's time around step ends
        for i in cfg.own_replicas:
            sampler = DeterministicSampler(
                vocab, tok.eos_token_id, seed=cfg.seed, mean_output_tokens=cfg.mean_output_tokens
            )
            engine = Engine(engine_config, cost_model.step_cost, sampler, hash_memo)
            publisher, sources = self._publisher(i)
            faults = cfg.faults
            if cfg.fault_replicas is not None and i not in cfg.fault_replicas:
                faults = FaultConfig()
            replica = Replica(
                i,
                engine,
                cfg.time_scale,
                FaultInjector(faults, cfg.seed + i),
                timer,
                publisher,
                slots=slots,
            )
            server = ReplicaServer(
                replica, cfg, shared_tok, template, sources, self._crashed, timer=timer
            )
            runner = web.AppRunner(server.make_app(), handler_cancellation=True, access_log=None)
            await runner.setup()
            port = cfg.port + i if cfg.port else 0
            site = web.TCPSite(runner, cfg.host, port, reuse_address=True)
            await site.start()
            actual_port = port or _bound_port(runner)
            replica.start()
            self.replicas.append(
                ReplicaRuntime(
                    server,
                    runner,
                    actual_port,
                    publisher.bound_endpoint if publisher else None,
                    publisher.bound_replay_endpoint if publisher else None,
                )
            )

    def _publisher(self, i: int) -> tuple[KvEventPublisher | None, dict[str, Any] | None]:
        kv = self.config.kv_events
        if kv is None or self._zmq is None:
            return None, None
        endpoint = _offset_endpoint(kv.endpoint, i)
        replay = _offset_endpoint(kv.replay_endpoint, i) if kv.replay_endpoint else None
        pub_cfg = KvEventsConfig(endpoint, replay, kv.topic, kv.encoding, kv.buffer_steps)
        publisher = KvEventPublisher(pub_cfg, self._zmq)
        pub_cfg = publisher.config
        # Like vLLM, report wildcard binds with the address clients should dial.
        host = self.config.host if self.config.host not in ("0.0.0.0", "") else "127.0.0.1"

        def dialable(endpoint: str | None) -> str | None:
            return endpoint.replace("0.0.0.0", host) if endpoint else endpoint

        sources = {
            "0": {
                "enable_kv_cache_events": True,
                "publisher": "zmq",
                "endpoint": dialable(publisher.bound_endpoint),
                "replay_endpoint": dialable(publisher.bound_replay_endpoint),
                "buffer_steps": kv.buffer_steps,
                "hwm": pub_cfg.hwm,
                "max_queue_size": 100000,
                "topic": kv.topic,
            }
        }
        return publisher, sources

    def _crashed(self, server: ReplicaServer) -> None:
        for r in self.replicas:
            if r.server is server:
                asyncio.get_running_loop().create_task(self._stop_replica(r))

    async def _stop_replica(self, r: ReplicaRuntime) -> None:
        await r.server.replica.stop()
        await r.runner.shutdown()
        await r.runner.cleanup()

    async def stop(self) -> None:
        for r in self.replicas:
            await r.server.replica.stop()
        for r in self.replicas:
            await r.runner.cleanup()
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        if self._zmq is not None:
            self._zmq.term()
            self._zmq = None


def _bound_port(runner: web.AppRunner) -> int:
    for addr in runner.addresses:
        if isinstance(addr, tuple):
            return int(addr[1])
    raise RuntimeError("replica site has no TCP address")
