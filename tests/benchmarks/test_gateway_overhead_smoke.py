"""CI smoke run of benchmarks/gateway_overhead.py in its tiny configuration, so it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gateway_overhead.py"


@pytest.mark.parametrize("chunk_gap_ms", [0.0, 1.0], ids=["back-to-back", "paced"])
def test_gateway_overhead_tiny(tmp_path: Path, chunk_gap_ms: float) -> None:
    out = tmp_path / "x.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--tiny",
            "--no-peers",
            "--out",
            str(out),
            "--chunk-gap-ms",
            str(chunk_gap_ms),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "gateway_overhead"
    assert {"git_sha", "command", "machine", "config", "rows", "targets", "formulas"} <= set(doc)
    assert doc["arms"] == ["direct", "headway"]
    assert doc["vllm_router_skipped"] == "--no-peers"
    config = doc["config"]
    assert config["chunk_gap_ms"] == chunk_gap_ms
    assert len(doc["rows"]) == 2 * len(config["concurrency"])
    for row in doc["rows"]:
        assert set(row["arms"]) == {"direct", "headway"}
        for arm, s in row["arms"].items():
            assert s["num_ok"] == config["requests_per_arm"] * config["rounds"], (row, arm)
            assert s["num_failed"] == 0, s["failures"]
            assert s["p50_ms"] > 0 and s["p99_ms"] >= s["p50_ms"]
            assert (s["ttfc_p50_ms"] is not None) == row["stream"]
        gw = row["arms"]["headway"]
        for key in ("cpu_us_per_request", "rss_mib_max", "added_p50_ms", "throughput_ratio"):
            assert gw[key] is not None, key
        if row["stream"]:
            assert gw["cpu_us_per_chunk"] is not None
    # The per-chunk target is judged on chunks back to back only.
    per_chunk = {"cpu_us_per_chunk"} if not chunk_gap_ms else set()
    assert set(doc["targets"]) == {"cpu_us_per_request", "added_p50_ms_concurrency_1"} | per_chunk
    assert "CPU us/req" in proc.stdout


def test_gateway_overhead_latency_target_needs_concurrency_1(tmp_path: Path) -> None:
    """The added-latency target is at concurrency 1: a run without it does not judge it
    (it once judged it from whatever concurrency ran)."""
    out = tmp_path / "x.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--no-peers", "--no-stream", "--concurrency", "4",
         "--requests", "50", "--warmup", "10", "--rounds", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert [row["concurrency"] for row in doc["rows"]] == [4]
    assert set(doc["targets"]) == {"cpu_us_per_request"}
