"""Shared by the benchmark smoke tests: run a benchmark script, read its result JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def run_benchmark(
    script: Path, out: Path, *args: str, timeout_s: float = 120
) -> tuple[dict[str, Any], str]:
    """Run `script ARGS --out OUT` from the repo root; (its JSON, its stdout). Fails the
    test with the script's stderr when it exits non-zero."""
    proc = subprocess.run(
        [sys.executable, str(script), *args, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc, proc.stdout
