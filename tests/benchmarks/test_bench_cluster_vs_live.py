"""CI smoke run of benchmarks/cluster_vs_live.py in its tiny configuration, so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cluster_vs_live.py"


def test_cluster_vs_live_tiny(tmp_path: Path) -> None:
    out = tmp_path / "cluster_vs_live.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "cluster_vs_live"
    assert {"git_sha", "command", "machine", "front_end_overhead_ms"} <= set(doc)
    # The simulated overhead comes from the calibration run (another seed), never from
    # the compared calls; the lone-request figure is reported beside it.
    assert [c["seed"] for c in doc["calibration"]] == [1, 2]  # the compared run's is 0
    assert doc["config"]["seed"] == 0
    assert all(c["live_ttft_p50_ms"] > 0 for c in doc["calibration"])
    assert set(doc["live_client"]) == {"calibration before", "load", "calibration after"}
    assert doc["front_end_overhead_ms"] >= 0 and doc["front_end_overhead_lone_ms"] >= 0
    assert doc["front_end_overhead_samples"]["num"] > 0
    rows = {r["metric"]: r for r in doc["rows"]}
    assert set(rows) == {
        "ttft_p50_ms", "ttft_p90_ms", "tpot_p50_ms", "output_tokens_per_s", "prefix_hit_rate"
    }  # fmt: skip
    for row in rows.values():
        assert row["live"] > 0 and row["simulated"] > 0
        assert row["simulated_with_lone_overhead"] > 0
        assert row["simulated_with_median_overhead"] > 0
    # The same engine model on both sides: decode pace agrees even in the tiny run.
    assert rows["tpot_p50_ms"]["rel_error"] < 0.25
    assert "largest relative error" in proc.stdout
