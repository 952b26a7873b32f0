"""`headway serve --workers 2`: two processes on one port (SO_REUSEPORT), each with
its own admin port; the parent forwards SIGHUP and SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

from conftest import MODEL, Fleets
from gateway_harness import pool, start_serve
from sim_harness import get, poll, post

# New connections are spread over the workers by the kernel's SO_REUSEPORT hash of
# the client's source port: with 40 of them, all on one worker has probability 2^-39.
NUM_REQUESTS = 40


def _endpoints(admin_url: str) -> set[str]:
    resp = get(admin_url, "/admin/endpoints")
    assert resp.status == 200, resp.text
    return {e["url"] for e in resp.json()["endpoints"]}


def _is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _served_by(url: str, access: Path, skip: int) -> set[int]:
    """Send one request on a new connection; the workers that logged lines after `skip`."""
    with contextlib.suppress(OSError):  # the killed worker's accept queue is reset
        post(url, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 1})
    return {json.loads(x)["worker"] for x in access.read_text().splitlines()[skip:]}


def test_two_workers_share_the_port(fleets: Fleets, tmp_path: Path) -> None:
    a, b = fleets.main.urls
    config = tmp_path / "gateway.yaml"
    config.write_text(json.dumps({"pools": [pool(MODEL, [a], routing="round-robin")]}))
    access = tmp_path / "access.log"
    gw = start_serve(
        tmp_path, "--config", str(config), "--workers", "2", "--admin-port", "0",
        "--access-log", str(access),
    )  # fmt: skip
    workers = gw.info["workers"]
    try:
        assert [w["index"] for w in workers] == [0, 1]
        assert len({w["pid"] for w in workers} | {gw.proc.pid}) == 3
        for _ in range(NUM_REQUESTS):  # a new connection each
            body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
            assert post(gw.url, "/v1/completions", body).status == 200
        lines = poll(
            lambda: [json.loads(x) for x in access.read_text().splitlines()],
            lambda xs: len(xs) == NUM_REQUESTS,
            what="one access line per request",
        )
        assert {x["worker"] for x in lines} == {0, 1}
        # SIGHUP to the parent reaches every worker.
        config.write_text(json.dumps({"pools": [pool(MODEL, [a, b], routing="round-robin")]}))
        gw.proc.send_signal(signal.SIGHUP)
        for w in workers:
            poll(lambda w=w: _endpoints(w["admin_url"]), lambda s: s == {a, b}, what="reload")
        assert "kept running values" not in gw.stderr()  # nothing but the pools changed
        # A worker that dies is started again (same index, so its log lines say 0).
        os.kill(workers[0]["pid"], signal.SIGKILL)
        poll(lambda: _is_gone(workers[0]["pid"]), bool, what="worker 0 killed")
        num_before = len(access.read_text().splitlines())
        poll(
            lambda: _served_by(gw.url, access, num_before),
            lambda served: 0 in served,
            deadline_s=20,
            what="worker 0 serving again",
        )
    finally:
        assert gw.stop() == 0, gw.stderr()
    for w in workers:
        poll(lambda w=w: _is_gone(w["pid"]), bool, what=f"worker {w['index']} gone")
    assert "Traceback" not in gw.stderr()
