"""`headway demo` (what `make demo` runs): both gateways measured side by side, the
table printed, the report written; and its flag errors."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from headway.demo import BASELINE_PRESET, CACHE_AWARE_PRESET

pytestmark = pytest.mark.timeout(180)


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headway.cli", "demo", *args],
        capture_output=True,
        text=True,
        timeout=150,
        stdin=subprocess.DEVNULL,
    )


def test_demo_quick_compares_both_arms_and_writes_the_report(tmp_path: Path) -> None:
    out_dir = tmp_path / "report"
    proc = _demo("--quick", "--out", str(out_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "Traceback" not in out + proc.stderr
    # The side-by-side table: one column per arm, every call of both arms completed.
    header = next(line for line in out.splitlines() if "Metric" in line)
    assert BASELINE_PRESET in header and CACHE_AWARE_PRESET in header
    completed = re.search(r"Requests completed\s+│\s+(\d+)\s+│\s+(\d+)\s+│", out)
    assert completed is not None, out
    assert completed.groups() == ("12", "12")
    assert re.search(r"Cached-token share\s+│\s+\d+\.\d%\s+│\s+\d+\.\d%\s+│", out), out
    # Calls per replica, per arm: each arm's 12 calls over the 2 replicas.
    for label in (BASELINE_PRESET, CACHE_AWARE_PRESET):
        row = re.search(re.escape(label) + r"\s+│\s+(\d+)\s+│\s+(\d+)\s+│", out)
        assert row is not None, out
        assert int(row.group(1)) + int(row.group(2)) == 12
    assert "Report:" in out
    assert (out_dir / "report.html").is_file()
    assert (out_dir / "summary.md").is_file()
    results = json.loads((out_dir / "results.json").read_text())
    assert [arm["label"] for arm in results["arms"]] == [BASELINE_PRESET, CACHE_AWARE_PRESET]
    assert results["metadata"]["workload"]["name"] == "agentic"
    assert "data:image/png;base64," in (out_dir / "report.html").read_text()


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--replicas", "0"), ("--time-scale", "-1"), ("--num-requests", "0")],
    ids=["replicas", "time-scale", "num-requests"],
)
def test_demo_bad_flag_names_it(tmp_path: Path, flag: str, value: str) -> None:
    proc = _demo("--quick", flag, value, "--out", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert f"headway demo: error: {flag}: invalid value" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()


def test_demo_ctrl_c_reports_partial_results(tmp_path: Path) -> None:
    out_dir = tmp_path / "report"
    proc = subprocess.Popen(
        [sys.executable, "-m", "headway.cli", "demo", "--quick", "--num-requests", "400",
         "--out", str(out_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        # The first arm is running once the workload line is out (it follows the start).
        for line in proc.stdout:
            if line.startswith("Workload:"):
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err
    assert "Interrupted: the results above are partial." in out
    assert (out_dir / "report.html").is_file()
    results = json.loads((out_dir / "results.json").read_text())
    assert results["metadata"]["is_partial"] is True
