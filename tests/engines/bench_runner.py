"""Runs a benchmark script end to end for the engine tier's smoke tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def run_benchmark(
    script: str, args: Sequence[str], out: Path, timeout_s: float = 220
) -> dict[str, Any]:
    """Run `benchmarks/<script>` with `args` and `--out out` (on the replicas named by
    `HEADWAY_ENGINES_STATE`, when set, else its own); assert it exits 0 and return the
    JSON it wrote."""
    cmd = [sys.executable, str(REPO / "benchmarks" / script), *args, "--out", str(out)]
    state = os.environ.get("HEADWAY_ENGINES_STATE")
    if state:
        cmd += ["--replicas-state", state]
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc
