"""Smoke test of benchmarks/costmodel_vs_published.py (--tiny) and of its committed result."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from bench_smoke import run_benchmark

from headway.core.costmodel import Efficiency

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "costmodel_vs_published.py"
RESULT = REPO / "benchmarks" / "results" / "costmodel_vs_published.json"


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("bench") / "x.json"
    doc, stdout = run_benchmark(SCRIPT, out, "--tiny")
    assert "MAPE default" in stdout and "MAPE fitted" in stdout
    return doc


@pytest.mark.parametrize(
    "key",
    [
        "git_sha",
        "command",
        "machine",
        "data",
        "config",
        "efficiency",
        "mape_pct",
        "target_held_out_mape_pct",
        "meets_target",
        "points",
    ],
)
def test_result_has_key(tiny_result: dict[str, object], key: str) -> None:
    assert key in tiny_result


def test_result_contents(tiny_result: dict[str, object]) -> None:
    doc = tiny_result
    machine = doc["machine"]
    assert isinstance(machine, dict)
    assert {"platform", "python", "cpu_count"} <= set(machine)
    data = doc["data"]
    assert isinstance(data, dict)
    assert data["source_version"] == "v1.0"
    assert "--tiny" in str(doc["command"])
    mapes = doc["mape_pct"]
    assert isinstance(mapes, dict)
    for label in ("default", "fitted"):
        assert {"calibration", "held_out", "all"} <= set(mapes[label])
        assert mapes[label]["held_out"] >= 0
    # The fit minimises calibration MAPE starting from the defaults: it cannot end worse.
    assert mapes["fitted"]["calibration"] <= mapes["default"]["calibration"] + 1e-9
    efficiency = doc["efficiency"]
    assert isinstance(efficiency, dict)
    assert set(efficiency["fitted"]) == {f.name for f in dataclasses.fields(Efficiency)}
    points = doc["points"]
    assert isinstance(points, list) and points
    assert {p["set"] for p in points} == {"calibration", "held_out"}
    for p in points:
        assert p["published_tokens_per_s_per_gpu"] > 0
        assert p["default"]["predicted_tokens_per_s_per_gpu"] > 0
        assert p["fitted"]["predicted_tokens_per_s_per_gpu"] > 0


def test_committed_result_matches_current_defaults() -> None:
    """The committed full run was made with today's Efficiency defaults and meets the target.
    If this fails after a cost-model change, rerun the benchmark and commit its JSON."""
    doc = json.loads(RESULT.read_text())
    assert doc["config"]["tiny"] is False
    assert doc["mape_pct"]["fitted"]["held_out"] <= doc["target_held_out_mape_pct"]
    assert doc["mape_pct"]["default"]["held_out"] <= doc["target_held_out_mape_pct"]
    assert doc["efficiency"]["default"] == dataclasses.asdict(Efficiency())
