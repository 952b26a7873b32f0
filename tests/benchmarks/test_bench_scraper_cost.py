"""CI smoke run of benchmarks/scraper_cost.py in its tiny configuration, so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scraper_cost.py"


def test_scraper_cost_tiny(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "scraper_cost"
    assert {"git_sha", "command", "machine", "config", "page", "formulas"} <= set(doc)
    assert doc["config"]["tiny"] is True
    # The page is vLLM-sized: at least the target size, with histogram series.
    assert doc["page"]["bytes"] >= doc["config"]["page_kb_target"] * 1000
    assert doc["page"]["samples"] > 1000
    assert doc["parse_filtered_us"] > 0 and doc["parse_full_us"] > 0
    for arm in ("loop_filtered", "loop_full"):
        loop = doc[arm]
        assert loop["num_endpoints"] == doc["config"]["num_endpoints"] == 2
        assert loop["num_scrapes"] >= 2, loop
        assert loop["num_endpoints_with_metrics"] == 2, loop
        assert loop["cpu_ms_per_endpoint_per_s"] > 0
    assert "CPU per endpoint per s" in proc.stdout
