"""Smoke test of benchmarks/planner_vs_published.py (--tiny), its data file and its
committed result."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from bench_smoke import run_benchmark

from headway.core.costmodel import Efficiency

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "planner_vs_published.py"
DATA = REPO / "benchmarks" / "data" / "published_latency.yaml"
RESULT = REPO / "benchmarks" / "results" / "planner_vs_published.json"

sys.path.insert(0, str(REPO / "benchmarks"))
import planner_vs_published as pvp  # noqa: E402


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "x.json"
    doc, stdout = run_benchmark(SCRIPT, out, "--tiny")
    assert "MAPE default" in stdout and "MAPE fitted" in stdout
    return doc


def test_tiny_run_reports_both_kinds_and_sets(tiny_result: dict[str, Any]) -> None:
    doc = tiny_result
    assert {"git_sha", "command", "machine", "efficiency", "points"} <= set(doc)
    assert "--tiny" in doc["command"] and doc["config"]["tiny"] is True
    for label in ("default", "fitted"):
        for kind in ("throughput", "latency"):
            m = doc["mape_pct"][label][kind]
            assert m["num_calibration"] > 0 and m["num_held_out"] > 0
            assert m["held_out"] >= 0
    # The fit starts from the defaults and keeps the best calibration loss.
    loss = doc["config"]["fit"]["calibration_loss_pct"]
    default = doc["mape_pct"]["default"]
    assert (
        loss
        <= (default["throughput"]["calibration"] + default["latency"]["calibration"]) / 2 + 1e-9
    )
    kinds = {p["kind"] for p in doc["points"]}
    assert kinds == {"throughput", "latency"}
    for p in doc["points"]:
        assert p["published"] > 0
        assert p["default"]["predicted"] > 0 and p["fitted"]["predicted"] > 0


def test_batch_latency_is_prefill_plus_decode_steps(tiny_result: dict[str, Any]) -> None:
    """vLLM's latency test (8 x 32 in / 128 out): every request of the batch finishes at
    the same step, so the mean end-to-end latency is 128 steps of the simulated engine,
    hundreds of milliseconds for an 8B model, not microseconds or minutes."""
    row = next(p for p in tiny_result["points"] if p["id"] == "vllm-8b-h100-tp1-e2el")
    assert 200.0 < row["default"]["predicted"] < 3000.0
    assert row["default"]["prompt_tokens_per_request"] == pytest.approx(32, abs=1)


def test_data_file_declares_every_split() -> None:
    doc = yaml.safe_load(DATA.read_text())
    points = pvp.load_latency_points(doc)
    assert points
    for kind in ("throughput", "latency"):
        sets = {p.set for p in points if p.kind == kind}
        assert sets == {"calibration", "held_out"}, kind
    for source in doc["sources"].values():
        assert source["url"].startswith("https://")
    assert doc["trtllm"]["split"]["seed"] == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"set": "train"}, "points[0].set"),
        ({"metric": "tpot_p50"}, "points[0].metric"),
        ({"source": "nowhere"}, "points[0].source"),
        ({"load": {"rate": 2}}, "points[0].load"),
        ({"value": 0}, "points[0]"),
    ],
    ids=["set", "metric", "source", "load", "value"],
)
def test_bad_points_name_the_field(change: dict[str, Any], field: str) -> None:
    doc = yaml.safe_load(DATA.read_text())
    doc["points"][0] = {**doc["points"][0], **change}
    with pytest.raises(pvp.DataError) as info:
        pvp.load_latency_points(doc)
    assert str(info.value).startswith(field)


def test_engine_spec_efficiency_reaches_the_cost_model() -> None:
    """The fitted factors travel in `EngineSpec.efficiency` (vLLM's memory flag wins)."""
    from headway.core.engine_factory import EngineSpec, resolve_engine
    from headway.resources.catalog import load_catalog

    spec = EngineSpec(
        model="llama-3.1-8b",
        gpu="h100",
        gpu_memory_utilization=0.8,
        efficiency=Efficiency(step_overhead_s=1e-3, gpu_memory_utilization=0.5),
    )
    eff = resolve_engine(spec, load_catalog()).cost_model.efficiency
    assert eff.step_overhead_s == 1e-3 and eff.gpu_memory_utilization == 0.8
    default = resolve_engine(EngineSpec(model="llama-3.1-8b", gpu="h100"), load_catalog())
    assert default.cost_model.efficiency == Efficiency(gpu_memory_utilization=0.9)


def test_committed_result_is_a_full_run() -> None:
    """The committed JSON is a full run made with today's Efficiency defaults. If this
    fails after a cost-model change, rerun the benchmark and commit its JSON."""
    doc = json.loads(RESULT.read_text())
    assert doc["config"]["tiny"] is False
    assert doc["efficiency"]["default"] == dataclasses.asdict(Efficiency())
    assert doc["data"]["num_latency_points"] == len(
        pvp.load_latency_points(yaml.safe_load(DATA.read_text()))
    )
    for label in ("default", "fitted"):
        assert set(doc["meets_target"][label]) == {"throughput", "latency"}


def test_simulated_engines_step_with_the_given_efficiency() -> None:
    """The fit moves the simulation: a 10 ms fixed step cost makes vLLM's latency test
    (128 steps of a batch of 8) last at least 1.28 s, against well under that by default."""
    from headway.resources.catalog import load_catalog

    sim = pvp.Simulator(load_catalog(), requests_per_user=1, seed=0)
    sc = pvp.Scenario("llama-3.1-8b", "h100-sxm", "bf16", 1, 32, 128, "batch", 8)
    default = sim.run(sc, Efficiency())["summary"]["mean_e2el_ms"]
    slow = sim.run(sc, Efficiency(step_overhead_s=0.01))["summary"]["mean_e2el_ms"]
    assert default < 1280.0 <= slow
