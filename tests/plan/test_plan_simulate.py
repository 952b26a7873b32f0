"""`headway plan simulate`: a routed fleet in virtual time, reported as `headway bench`
reports, so live and simulated runs compare with `headway bench compare`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from headway.bench.compare import run_compare

ARGS = [
    "plan", "simulate", "--replicas", "4", "--num-requests", "60", "--request-rate", "20",
    "--workload-param", "num_groups=6", "--workload-param", "system_prompt_tokens=512",
    "--workload-param", "output_tokens=16", "--goodput", "ttft:200",
]  # fmt: skip


def _headway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headway.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_simulate_writes_bench_results_that_compare(tmp_path: Path) -> None:
    proc = _headway(*ARGS, "--out", str(tmp_path / "sim"))
    assert proc.returncode == 0, proc.stderr
    assert "round-robin" in proc.stdout and "kv-aware" in proc.stdout
    doc = json.loads((tmp_path / "sim" / "results.json").read_text())
    assert doc["schema"] == "headway.bench/1"
    assert [a["label"] for a in doc["arms"]] == ["round-robin", "kv-aware"]
    rr, kv = (a["points"][0] for a in doc["arms"])
    for p in (rr, kv):
        assert p["summary"]["completed"] == 60 and p["summary"]["failed"] == 0
        assert len(p["requests"]) == 60
        assert p["summary"]["slo_attainment"] is not None
    # Six shared system prompts over four replicas: cache-aware routing reuses more.
    assert kv["engines"]["prefix_hit_rate"] > rr["engines"]["prefix_hit_rate"]
    assert (tmp_path / "sim" / "report.html").is_file()
    console = Console(record=True, width=160)
    assert run_compare([tmp_path / "sim" / "results.json"], tmp_path / "cmp", console) == 0


def test_simulate_is_reproducible(tmp_path: Path) -> None:
    a = _headway(*ARGS, "--profile", "power-of-two", "--out", str(tmp_path / "a"))
    b = _headway(*ARGS, "--profile", "power-of-two", "--out", str(tmp_path / "b"))
    assert a.returncode == b.returncode == 0
    da = json.loads((tmp_path / "a" / "results.json").read_text())
    db = json.loads((tmp_path / "b" / "results.json").read_text())
    assert da["arms"] == db["arms"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--replicas", "0"], "--replicas"),
        (["--profile", "nope"], "nope"),
        (["--gpu", "nope"], "gpu"),
        (["--workload", "nope"], "--workload"),
        (["--request-rate", "0"], "--request-rate"),
    ],
    ids=["replicas", "profile", "gpu", "workload", "rate"],
)
def test_bad_input_is_a_one_line_error(extra: list[str], message: str) -> None:
    proc = _headway(*ARGS, *extra)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
