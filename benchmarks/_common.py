"""Shared by the benchmark scripts: provenance (git SHA, command, machine) and JSON output."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from headway.provenance import machine_facts

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True)
        # Only trailing newlines: `status --porcelain` lines start with a status column
        # that may be a space.
        return out.stdout.rstrip("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def relative_path(arg: str) -> str:
    try:
        return str(Path(arg).resolve().relative_to(REPO))
    except ValueError:
        return arg


def provenance(inputs: Sequence[str] = ()) -> dict[str, Any]:
    """Where a result came from. `inputs` are repo paths whose uncommitted changes would
    make the SHA a lie; they are listed under `git_dirty_inputs`."""
    dirty = _git("status", "--porcelain", "--", *inputs) if inputs else ""
    return {
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty_inputs": (
            sorted(line[3:] for line in dirty.splitlines()) if dirty != "unknown" else "unknown"
        ),
        "command": " ".join(["python", *[relative_path(a) for a in sys.argv]]),
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_facts(),
    }


def write_result(path: Path | None, result: dict[str, Any], inputs: Sequence[str] = ()) -> None:
    """Write `result` with its provenance as JSON (if a path is given)."""
    if path is None:
        return
    doc = {**provenance(inputs), **result}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {path}")


def prefix_cache_counters(metrics_text: str) -> tuple[float, float]:
    """(vllm:prefix_cache_queries_total, vllm:prefix_cache_hits_total) of one engine's
    /metrics page, summed over label sets."""
    from prometheus_client.parser import text_string_to_metric_families

    queries = hits = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "vllm:prefix_cache_queries_total":
                queries += sample.value
            elif sample.name == "vllm:prefix_cache_hits_total":
                hits += sample.value
    return queries, hits


async def serve_until_signalled(app: Any, port: int, ready_file: Path) -> None:
    """Serve aiohttp `app` on 127.0.0.1:`port` (0: ephemeral), write {"url": ...} to
    `ready_file` (atomically) once listening, and run until SIGINT or SIGTERM."""
    import asyncio
    import signal

    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    bound = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    tmp = ready_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": f"http://127.0.0.1:{bound}"}))
    tmp.replace(ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a child process to bind)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (Linux /proc), 0.0 once it is gone."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_process(proc: Any, timeout_s: float = 10.0) -> None:
    """Terminate a `subprocess.Popen` child, kill it if it lingers, and reap it."""
    import subprocess

    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def sse_json(resp: Any) -> Any:
    """The JSON objects of an aiohttp response's SSE `data:` lines, `[DONE]` left out
    (an async generator)."""
    async for raw in resp.content:
        line = raw.strip()
        if line.startswith(b"data: ") and line != b"data: [DONE]":
            yield json.loads(line[6:])
