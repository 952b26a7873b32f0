"""`headway serve --workers N`: N gateway processes sharing one listening port.

Each worker is a forked copy of the configured gateway that binds the port with
SO_REUSEPORT, so the kernel spreads incoming connections over them. Every worker
keeps its own state: in-flight accounting, admission queues, outlier state,
scraped metrics, KV-event subscription and index, cordons (docs/operations.md says
what that costs routing).

The parent only supervises:
* it reserves the port first when `--port 0` (a bound, not listening SO_REUSEPORT
  socket, so all workers get the same ephemeral port), and writes one ready file
  naming every worker once all of them serve;
* SIGTERM / SIGINT are forwarded as SIGTERM (each worker drains) and the parent
  exits when all have, with status 0 only if every worker's was 0;
* SIGHUP is forwarded (each worker reloads the config file);
* a worker that exits while the parent is not stopping is started again (after
  `_RESTART_DELAY_S`), with the same index.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from headway.gateway.config import GatewayConfig

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
_RESTART_DELAY_S = 1.0
_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD}

# (config, worker index, ready file) -> exit status; runs in the forked child.
WorkerMain = Callable[[GatewayConfig, int, Path], int]


def worker_config(config: GatewayConfig, index: int) -> GatewayConfig:
    """Worker `index`'s config: a fixed admin port is offset by the index (each
    worker has its own admin routes, since cordons are per process); 0 stays 0."""
    port = config.admin.port
    if not port:
        return config
    return replace(config, admin=replace(config.admin, port=port + index))


def _reserve_port(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    return sock


class Supervisor:
    """Forks and watches the workers (see the module docstring)."""

    def __init__(
        self,
        config: GatewayConfig,
        num_workers: int,
        worker_main: WorkerMain,
        ready_file: Path | None,
    ) -> None:
        self.config = config
        self.num_workers = num_workers
        self._worker_main = worker_main
        self._ready_file = ready_file
        self._tmp = Path(tempfile.mkdtemp(prefix="headway-workers-"))
        self._pids: dict[int, int] = {}  # pid -> worker index
        self._exit_codes: list[int] = []
        self._reserved: socket.socket | None = None

    def run(self) -> int:
        try:
            return self._run()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _run(self) -> int:
        if self.config.listen.port == 0:
            self._reserved = _reserve_port(self.config.listen.host)
            port = self._reserved.getsockname()[1]
            self.config = replace(self.config, listen=replace(self.config.listen, port=port))
        # Blocked here, taken with sigtimedwait below; each child unblocks them.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        for i in range(self.num_workers):
            self._spawn(i)
        infos = self._wait_ready()
        if self._reserved is not None:
            self._reserved.close()
        if infos is None:
            self._forward(signal.SIGTERM)
            self._wait_all(stopping=True)
            return 1
        self._announce(infos)
        return self._watch()

    def _spawn(self, index: int) -> None:
        ready = self._tmp / f"worker-{index}.json"
        ready.unlink(missing_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
                if self._reserved is not None:
                    self._reserved.close()
                code = self._worker_main(worker_config(self.config, index), index, ready)
            except BaseException:  # never return into the parent's code
                log.exception("worker %d failed", index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self._pids[pid] = index

    def _wait_ready(self) -> list[dict[str, Any]] | None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        paths = [self._tmp / f"worker-{i}.json" for i in range(self.num_workers)]
        while not all(p.exists() for p in paths):
            if self._reap(stopping=True) or time.monotonic() > deadline:
                print("headway serve: error: a worker did not start", file=sys.stderr)
                return None
            sig = signal.sigtimedwait(_SIGNALS - {signal.SIGCHLD}, 0.02)
            if sig is not None and sig.si_signo != signal.SIGHUP:
                return None  # stopped while starting
        return [json.loads(p.read_text()) for p in paths]

    def _announce(self, infos: list[dict[str, Any]]) -> None:
        first = infos[0]
        info = {
            **{k: v for k, v in first.items() if k not in ("admin_url", "pid", "worker")},
            "pid": os.getpid(),
            "workers": [
                {"index": i, "pid": x["pid"], "admin_url": x.get("admin_url")}
                for i, x in enumerate(infos)
            ],
        }
        if self._ready_file is not None:
            tmp = self._ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(info))
            tmp.replace(self._ready_file)
        print(f"headway gateway on {first['url']} ({self.num_workers} workers)", flush=True)
        for x in info["workers"]:
            admin = f", admin routes on {x['admin_url']}/admin/" if x["admin_url"] else ""
            print(f"  worker {x['index']}: pid {x['pid']}{admin}", flush=True)

    def _watch(self) -> int:
        stopping = False
        while True:
            sig = signal.sigtimedwait(_SIGNALS, 1.0)
            if sig is not None and sig.si_signo in (signal.SIGTERM, signal.SIGINT):
                stopping = True
                self._forward(signal.SIGTERM)
            elif sig is not None and sig.si_signo == signal.SIGHUP:
                self._forward(signal.SIGHUP)
            self._reap(stopping)
            if stopping and not self._pids:
                return max(self._exit_codes, default=0)

    def _forward(self, sig: int) -> None:
        for pid in list(self._pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _reap(self, stopping: bool) -> bool:
        """Collect exited workers (restarting them unless `stopping`); True if any exited."""
        any_exited = False
        while self._pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            any_exited = True
            index = self._pids.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            if stopping:
                self._exit_codes.append(0 if code == 0 else 1)
            if index is not None and not stopping:
                log.error("worker %d (pid %d) exited with %d; starting it again", index, pid, code)
                time.sleep(_RESTART_DELAY_S)
                self._spawn(index)
        return any_exited

    def _wait_all(self, stopping: bool) -> None:
        deadline = time.monotonic() + 30.0
        while self._pids and time.monotonic() < deadline:
            self._reap(stopping)
            time.sleep(0.02)
        for pid in list(self._pids):
            os.kill(pid, signal.SIGKILL)
        self._reap(stopping)
