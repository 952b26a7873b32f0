"""`headway_engines`: a replica's whole process tree runs on its core (`_pin_to`, the
`preexec_fn` of `start_vllm`), and `process_tree` finds a process's descendants with
the CPUs each may run on. Fast: plain Python children stand in for vLLM's API server,
engine core and worker (the engine tier checks real replicas)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "engines"))

import headway_engines as he

# A parent that starts a child (as `vllm serve` starts its engine core), then both wait.
TREE = (
    "import subprocess, sys, time;"
    "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']);"
    "print('up', flush=True); time.sleep(30)"
)


def _start_tree(preexec: object) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", TREE],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=preexec,  # type: ignore[arg-type]
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    return proc


def _wait_for_children(pid: int, n: int, timeout_s: float = 10) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout_s
    while True:
        tree = he.process_tree(pid)
        if len(tree) >= n or time.monotonic() > deadline:
            return tree
        time.sleep(0.05)


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux CPU affinity and at least two usable cores",
)
def test_pin_to_pins_the_child_and_what_it_starts() -> None:
    core = max(os.sched_getaffinity(0))  # not core 0, so a default cannot pass
    proc = _start_tree(he._pin_to(core))
    try:
        tree = _wait_for_children(proc.pid, 2)
        assert len(tree) == 2, tree
        assert [p["cpus"] for p in tree] == [[core], [core]]
        assert tree[0]["pid"] == proc.pid
        assert all(isinstance(p["cpu_s"], float) and p["cpu_s"] >= 0 for p in tree)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def test_process_tree_without_pinning_and_of_a_gone_process() -> None:
    proc = _start_tree(None)
    try:
        tree = _wait_for_children(proc.pid, 2)
        assert len(tree) == 2
        assert all(p["cpus"] == sorted(os.sched_getaffinity(0)) for p in tree)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
    assert he.process_tree(proc.pid) == []
