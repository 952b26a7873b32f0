"""`benchmarks/scrape_load.py` end to end in a tiny configuration (engine tier): two
real vLLM-CPU replicas (started by the script, or the running ones named by
`HEADWAY_ENGINES_STATE`), one round of both arms, 2 s each. Checked: the script exits
0, writes its JSON, and measured every arm and the floor (figures only, no speed is
asserted: the adaptive cadence itself is tested in tests/gateway/test_gateway_scraper.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_runner import run_benchmark


@pytest.mark.engine
@pytest.mark.timeout(240)
def test_bench_scrape_load_smoke(tmp_path: Path) -> None:
    args = ["--rounds", "1", "--duration-s", "2", "--settle-s", "1"]
    doc = run_benchmark("scrape_load.py", args, tmp_path / "scrape_load.json")
    assert doc["benchmark"] == "scrape_load"
    assert [r["arm"] for r in doc["rounds"]] == ["adaptive (default)", "fixed 0.25 s"]
    for r in doc["rounds"]:
        assert len(r["replica_cpu_ms_per_s"]) == 2 and r["gateway_cpu_ms_per_s"] >= 0
    assert set(doc["summary"]) == {"adaptive (default)", "fixed 0.25 s", "no router"}
    assert [v >= 0 for v in doc["no_router"]["replica_cpu_ms_per_s"]] == [True, True]
