"""CI smoke run of benchmarks/loadgen_capacity.py in its tiny configuration, so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "loadgen_capacity.py"
STEP_KEYS = {
    "offered_rate", "achieved_rate", "chunks_per_s", "completed", "failed", "lag_p50_ms",
    "lag_p99_ms", "client_cpu_cores", "stub_cpu_cores", "foreign_cpu_cores", "is_rate_kept",
    "is_lag_kept", "client_cpu_us_per_request", "timer",
}  # fmt: skip


def test_loadgen_capacity_tiny(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--no-vllm", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "loadgen_capacity"
    assert {"git_sha", "command", "machine", "config", "isolation"} <= set(doc)
    assert doc["vllm_bench_serve"]["skipped"] == "--no-vllm"
    # The precise timer's steps first (the headline); the thread timer's and the event
    # loop's (the baseline) beside them.
    assert doc["config"]["timers"] == ["precise", "thread", "loop"]
    assert doc["timer"] == "precise"
    for timer, block in (
        ("precise", doc),
        ("thread", doc["thread_timer"]),
        ("loop", doc["loop_timer"]),
    ):
        for mode, processes in (("single_process", 1), ("multi_process", 2)):
            assert {"capacity_lag_bound", "capacity_rate_kept", "client_cpu_us_per_request"} <= set(
                block[mode]
            )
            steps = block[mode]["steps"]
            assert steps, (timer, mode)
            for step in steps:
                assert step.keys() >= STEP_KEYS
                assert step["num_processes"] == processes
                assert step["timer"] == timer
                # The stub never fails and answers every chunk; lag is not asserted (load).
                assert step["failed"] == 0 and step["completed"] > 0
                assert step["chunks_per_s"] > 0
    assert "one client process:" in proc.stdout
