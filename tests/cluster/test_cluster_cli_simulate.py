"""`headway plan simulate` with the cluster's admission control and front-end overhead:
429s in the bench results, and one-line errors for bad limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from headway.cli import main

ARGS = [
    "plan", "simulate", "--replicas", "2", "--num-requests", "30", "--request-rate", "200",
    "--workload-param", "num_groups=3", "--workload-param", "system_prompt_tokens=256",
    "--workload-param", "output_tokens=32", "--profile", "least-request",
]  # fmt: skip


def test_admission_rejects_show_as_429s(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    extra = ["--max-in-flight-per-endpoint", "2", "--admission-max-queue", "3"]
    assert main([*ARGS, *extra, "--frontend-overhead-ms", "5", "--out", str(out)]) == 0
    point = json.loads((out / "results.json").read_text())["arms"][0]["points"][0]
    summary = point["summary"]
    assert summary["failed"] > 0 and summary["completed"] + summary["failed"] == 30
    assert set(point["engines"]["admission"]["rejections"]) == {"queue_full"}
    assert sum(point["engines"]["admission"]["rejections"].values()) == summary["failed"]
    assert {r["error"] for r in point["requests"] if r["error"]} == {"http_429"}
    # Every TTFT includes the 5 ms front end.
    ttfts = [r["ttft_s"] for r in point["requests"] if r["error"] is None]
    assert ttfts and min(ttfts) >= 0.005


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--max-in-flight-per-endpoint", "0"], "--max-in-flight-per-endpoint"),
        (
            ["--max-in-flight-per-endpoint", "1", "--admission-max-queue", "-1"],
            "--admission-max-queue",
        ),
        (["--frontend-overhead-ms", "-1"], "frontend_overhead_s"),
    ],
    ids=["cap", "queue", "overhead"],
)
def test_bad_limits_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], extra: list[str], flag: str
) -> None:
    assert main([*ARGS, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert flag in err and "\n" not in err
