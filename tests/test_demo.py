"""`headway demo` (what `make demo` runs) completes on a small fleet and reports hits."""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_and_shows_prefix_cache_hits() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "headway.cli", "demo", "--replicas", "2", "--requests", "4",
         "--time-scale", "5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Traceback" not in out + proc.stderr
    assert "4 requests" in out
    # Turn 2 of the multi-turn chat reuses turn 1's blocks.
    turn2 = re.search(r"│ 2\s+│ (\d+)\s+│ (\d+)\s+│", out)
    assert turn2 is not None, out
    assert 0 < int(turn2.group(2)) < int(turn2.group(1))
