"""Helpers for the simulator's integration tests: start `headway sim` as a real
process on 127.0.0.1 with ephemeral ports, talk to it over plain HTTP, poll with
deadlines instead of sleeping."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

READY_DEADLINE_S = 20.0
MODEL = "llama-3.1-8b"

T = TypeVar("T")


class FleetStartError(RuntimeError):
    """The fleet process died or never wrote its ready file."""


@dataclass
class Fleet:
    """A running `headway sim` process and its parsed ready-file description."""

    proc: subprocess.Popen[bytes]
    info: dict[str, Any]
    stderr_path: Path
    args: tuple[str, ...] = ()

    @property
    def urls(self) -> list[str]:
        return [r["url"] for r in self.info["replicas"]]

    @property
    def url(self) -> str:
        return self.urls[0]

    def replica(self, i: int) -> dict[str, Any]:
        return dict(self.info["replicas"][i])

    def kv_endpoint(self, i: int = 0) -> str:
        return connectable(self.info["replicas"][i]["kv_events_endpoint"])

    def replay_endpoint(self, i: int = 0) -> str:
        return connectable(self.info["replicas"][i]["kv_replay_endpoint"])

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def connectable(endpoint: str) -> str:
    """A wildcard bind (tcp://0.0.0.0:P or tcp://*:P) as an address to connect to."""
    for wildcard in ("tcp://0.0.0.0:", "tcp://*:"):
        if endpoint.startswith(wildcard):
            return "tcp://127.0.0.1:" + endpoint[len(wildcard) :]
    return endpoint


def sim_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "headway.cli", "sim", *args]


def spawn_fleet(tmp_dir: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """Start a fleet process without waiting; returns (proc, ready file, stderr file)."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    ready = tmp_dir / "ready.json"
    err = tmp_dir / "stderr.txt"
    full = ["--port", "0", "--ready-file", str(ready), *args]
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    # vLLM seeds its hash chain with PYTHONHASHSEED when set; leave it unset so block
    # hashes match the published vLLM vectors.
    env.pop("PYTHONHASHSEED", None)
    with err.open("wb") as err_f:
        proc = subprocess.Popen(
            sim_command(*full),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err_f,
            env=env,
        )
    return proc, ready, err


def wait_ready(
    proc: subprocess.Popen[bytes],
    ready: Path,
    err: Path,
    args: tuple[str, ...],
    deadline_s: float = READY_DEADLINE_S,
) -> Fleet:
    deadline = time.monotonic() + deadline_s
    while True:
        if ready.exists():
            info = json.loads(ready.read_text())
            return Fleet(proc, info, err, args)
        rc = proc.poll()
        if rc is not None:
            raise FleetStartError(
                f"headway sim {' '.join(args)} exited with {rc} before ready:\n"
                + err.read_text(errors="replace")
            )
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(timeout=5)
            raise FleetStartError(
                f"headway sim {' '.join(args)} not ready after {deadline_s} s:\n"
                + err.read_text(errors="replace")
            )
        time.sleep(0.02)


def start_fleets(base: Path, *arg_lists: tuple[str, ...]) -> list[Fleet]:
    """Start several fleets at once (in parallel) and wait for all of them."""
    spawned = [spawn_fleet(base / f"fleet{i}", *args) for i, args in enumerate(arg_lists)]
    fleets: list[Fleet] = []
    try:
        for (proc, ready, err), args in zip(spawned, arg_lists, strict=True):
            fleets.append(wait_ready(proc, ready, err, args))
    except BaseException:
        for proc, _, _ in spawned:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
        raise
    return fleets


@contextlib.contextmanager
def running_fleets(base: Path, *arg_lists: tuple[str, ...]) -> Iterator[list[Fleet]]:
    fleets = start_fleets(base, *arg_lists)
    try:
        yield fleets
    finally:
        for f in fleets:
            f.stop()


# -- HTTP -------------------------------------------------------------------------
@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = field(repr=False)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def request(
    url: str,
    method: str,
    path: str,
    body: bytes | str | dict[str, Any] | list[Any] | None = None,
    headers: dict[str, str] | None = None,
    timeout_s: float = 10.0,
) -> Response:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    hdrs = dict(headers or {})
    data: bytes | None
    if isinstance(body, dict | list):
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        data = body.encode()
    else:
        data = body
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def get(url: str, path: str, **kw: Any) -> Response:
    return request(url, "GET", path, **kw)


def post(url: str, path: str, body: Any = None, **kw: Any) -> Response:
    return request(url, "POST", path, body, **kw)


def chat_body(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


# -- metrics -----------------------------------------------------------------------
def scrape(url: str) -> dict[str, float]:
    """Every sample on /metrics as {name{labels}: value}, plus {name: value} for
    samples of one series (summed over label sets)."""
    resp = get(url, "/metrics")
    assert resp.status == 200, resp.text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(resp.text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def families(url: str) -> dict[str, Any]:
    resp = get(url, "/metrics")
    assert resp.status == 200, resp.text
    return {fam.name: fam for fam in text_string_to_metric_families(resp.text)}


def poll(
    probe: Callable[[], T],
    ok: Callable[[T], bool],
    deadline_s: float = 10.0,
    interval_s: float = 0.02,
    what: str = "condition",
) -> T:
    """Call `probe` until `ok(value)`; fail with the last value at the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        value = probe()
        if ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {deadline_s} s; last: {value!r}")
        time.sleep(interval_s)


def port_answers(url: str) -> bool:
    try:
        get(url, "/health", timeout_s=1.0)
    except OSError:
        return False
    return True


def openai_client(url: str, timeout_s: float = 20.0) -> OpenAI:
    return OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=timeout_s)


FleetFactory = Callable[..., Fleet]
"""The `start_fleet` fixture's type: starts a `headway sim` with extra CLI arguments."""
