"""CI smoke run of benchmarks/cluster_speed.py in its tiny configuration, so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cluster_speed.py"


def test_cluster_speed_tiny(tmp_path: Path) -> None:
    out = tmp_path / "cluster_speed.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "cluster_speed"
    assert {"git_sha", "command", "machine"} <= set(doc)
    (row,) = doc["rows"]
    assert row["num_requests"] == 200
    assert row["num_steps"] > 0 and row["requests_per_cpu_s"] > 0
    assert 0.0 < row["prefix_hit_rate"] < 1.0
    assert "projected for 100,000 requests" in proc.stdout
