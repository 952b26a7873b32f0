"""Helpers for the gateway's integration tests: run a gateway in-process (its own
event loop in a thread, so blocking clients such as the `openai` SDK can call it) or
as a real `headway serve` process, on 127.0.0.1 with ephemeral ports. Simulator
fleets come from the simulator tests' harness (tests/sim/sim_harness.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sim"))

from sim_harness import scrape

from headway.gateway.admin import make_admin_app
from headway.gateway.cli import start_serving, stop_serving
from headway.gateway.config import GatewayConfig, config_from_mapping
from headway.gateway.server import Gateway

READY_DEADLINE_S = 20.0


class InProcessGateway:
    """A gateway serving from a background thread's event loop."""

    def __init__(
        self, config: GatewayConfig | dict[str, Any], *, admin: bool = False, **gateway_kw: Any
    ) -> None:
        if isinstance(config, dict):
            config = config_from_mapping(config)
        self.config = config
        self.gateway = Gateway(config, **gateway_kw)
        self.url = ""
        self.admin_url = ""  # with admin=True: the admin routes' own port
        self._with_admin = admin
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> InProcessGateway:
        self._thread.start()
        if not self._ready.wait(READY_DEADLINE_S) or self._error is not None:
            raise RuntimeError(f"gateway did not start: {self._error!r}")
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await start_serving(self.gateway, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{server.port}"
        admin_runner = None
        if self._with_admin:
            admin_runner = web.AppRunner(make_admin_app(self.gateway), shutdown_timeout=1.0)
            await admin_runner.setup()
            await web.TCPSite(admin_runner, "127.0.0.1", 0).start()
            admin_port = next(a[1] for a in admin_runner.addresses if isinstance(a, tuple))
            self.admin_url = f"http://127.0.0.1:{admin_port}"
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await stop_serving(server, self.gateway, self.config.timeouts.drain_s)
            if admin_runner is not None:
                await admin_runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=15)

    def num_in_flight(self) -> int:
        return self.gateway.tracker.num_in_flight


def pool(model: str, endpoints: list[str], **extra: Any) -> dict[str, Any]:
    return {"model": model, "endpoints": endpoints, **extra}


@dataclass
class ServeProcess:
    proc: subprocess.Popen[bytes]
    info: dict[str, Any]
    stderr_path: Path

    @property
    def url(self) -> str:
        return str(self.info["url"])

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return int(self.proc.returncode)


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "headway.cli", "serve", *args]


def start_serve(tmp_dir: Path, *args: str) -> ServeProcess:
    """Run `headway serve --port 0 --ready-file ... ARGS` and wait until it serves."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    ready = tmp_dir / "gateway-ready.json"
    err = tmp_dir / "gateway-stderr.txt"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with err.open("wb") as err_f:
        proc = subprocess.Popen(
            serve_command("--port", "0", "--ready-file", str(ready), *args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err_f,
            env=env,
        )
    deadline = time.monotonic() + READY_DEADLINE_S
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait(timeout=5)
            raise RuntimeError(f"headway serve {args} did not start:\n{err.read_text()}")
        time.sleep(0.02)
    return ServeProcess(proc, json.loads(ready.read_text()), err)


def self_signed_cert(tmp_dir: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (the `openssl` command line makes them)."""
    cert, key = tmp_dir / "cert.pem", tmp_dir / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


_HELD_PORTS: list[socket.socket] = []


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens, for the rest of this test process.

    The port stays bound (never listening) by a socket without SO_REUSEADDR, so a
    connect is refused and no server started later in the process can take the port:
    a released port was once reused by another test's gateway, whose access log then
    recorded this test's requests a second time.
    """
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _HELD_PORTS.append(s)
    return f"http://127.0.0.1:{s.getsockname()[1]}"


def sim_counters(url: str) -> dict[str, float]:
    m = scrape(url)
    return {
        "aborted": m.get("headway_sim:aborted_requests_total", 0.0),
        "freed": m.get("headway_sim:aborted_freed_blocks_total", 0.0),
        "running": m.get("vllm:num_requests_running", 0.0),
        "waiting": m.get("vllm:num_requests_waiting", 0.0),
    }


class ThreadedUpstream:
    """A test upstream: an aiohttp app served from its own thread and event loop on an
    ephemeral 127.0.0.1 port. Subclasses add routes in `add_routes`."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = ""
        self._ssl_context = ssl_context  # set: serve HTTPS
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def on_loop_start(self) -> None:
        """Create loop-bound state (semaphores, events) before serving."""

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self.on_loop_start()
        app = web.Application()
        self.add_routes(app)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self._ssl_context)
        await site.start()
        port = next(a[1] for a in runner.addresses if isinstance(a, tuple))
        scheme = "https" if self._ssl_context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{port}"
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def start(self) -> Self:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
