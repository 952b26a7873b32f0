"""CI smoke run of benchmarks/sim_capacity.py in its tiny configuration, so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sim_capacity.py"


def test_sim_capacity_tiny(tmp_path: Path) -> None:
    out = tmp_path / "sim_capacity.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--repeats", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "sim_capacity"
    assert {"git_sha", "command", "machine"} <= set(doc)
    rows = doc["rows"]
    assert [r["repeat"] for r in rows] == [0, 1]  # one row per round of the one scale
    for row in rows:
        assert row["num_tokens"] > 0
        for key in ("lag_frac_p50", "lag_frac_p99", "itl_distortion", "sim_cpu_cores"):
            assert row[key] is not None
    # The scale is judged by the median of its rounds (of two: their mean).
    (median,) = doc["median_lag_frac_p99"].values()
    assert median == sum(r["lag_frac_p99"] for r in rows) / 2
    assert "largest time-scale" in proc.stdout
