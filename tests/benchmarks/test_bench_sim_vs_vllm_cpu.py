"""benchmarks/sim_vs_vllm_cpu.py: the step-time fit (pure, synthetic step times), the
committed result against the built-in `cpu-1core` profile, and an engine-tier smoke run
against real vLLM-CPU (skipped with a reason when the vLLM venv is not installed)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from headway.core.costmodel import Efficiency
from headway.resources.catalog import load_catalog, parse_catalog

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "sim_vs_vllm_cpu.py"
RESULT = REPO / "benchmarks" / "results" / "sim_vs_vllm_cpu.json"


def _bench() -> ModuleType:
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("sim_vs_vllm_cpu", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["sim_vs_vllm_cpu"] = mod
    spec.loader.exec_module(mod)
    return mod


bench = _bench()
MODEL = load_catalog().model("tiny-llama")
WORK = (
    [((n, 0),) for n in (16, 64, 256, 1024)]  # lone prefills
    + [((1, 96),) * b for b in (1, 4, 16)]  # decode batches
)


def _samples(tflops: float, bw: float, eff: Efficiency | None = None) -> list:
    shapes = [bench.StepSample(f"s{i}", w, 0.0) for i, w in enumerate(WORK)]
    times = bench.predict_s(MODEL, tflops, bw, shapes, eff)
    return [bench.StepSample(s.label, s.work, t) for s, t in zip(shapes, times, strict=True)]


@pytest.mark.parametrize(
    ("tflops", "bw"),
    [(0.02, 0.004), (0.25, 0.1), (1.5, 0.01)],
    ids=["slow-core", "measured-like", "fast-compute"],
)
def test_fit_recovers_synthetic_device(tflops: float, bw: float) -> None:
    samples = _samples(tflops, bw)
    fit = bench.fit_profile(MODEL, samples)
    assert fit.rms_log_error < 0.01
    for s, p in zip(samples, fit.predicted_s, strict=True):
        assert p == pytest.approx(s.measured_s, rel=0.02), s.label
    # Prefill of 1024 tokens is compute-bound in every case: the peak is identified.
    assert fit.tflops_bf16 == pytest.approx(tflops, rel=0.05)
    assert fit.efficiency == Efficiency()


CPU_TRUTH = {
    "step_overhead_s": 4e-3,
    "per_sequence_overhead_s": 6e-5,
    "mfu_half_saturation_tokens": 0.0,
}
CPU_BW = 0.008


def test_cpu_fit_recovers_step_and_sequence_overheads() -> None:
    truth = Efficiency(**CPU_TRUTH)
    samples = _samples(0.14, CPU_BW, truth)
    fixed = {"bandwidth_tb_s": CPU_BW, **bench.CPU_FIXED}
    fit = bench.fit_profile(MODEL, samples, free=bench.CPU_FREE, fixed=fixed)
    assert fit.rms_log_error < 0.01
    assert fit.tflops_bf16 == pytest.approx(0.14, rel=0.03)
    assert fit.params["step_overhead_s"] == pytest.approx(4e-3, rel=0.05)
    assert fit.params["per_sequence_overhead_s"] == pytest.approx(6e-5, rel=0.2)
    assert fit.bandwidth_tb_s == CPU_BW and fit.efficiency.mfu_half_saturation_tokens == 0.0
    # The GPU-default Efficiency cannot give a CPU's 5 ms floor and steep prefill at once.
    device_only = bench.fit_profile(MODEL, samples)
    assert device_only.rms_log_error > 5 * fit.rms_log_error + 0.05


@pytest.mark.parametrize(
    ("free", "fixed", "message"),
    [
        (("tflops_bf16", "bogus"), {"bandwidth_tb_s": 0.01}, "unknown parameter 'bogus'"),
        (("tflops_bf16",), {}, "bandwidth_tb_s must be fitted or given"),
    ],
    ids=["unknown", "no-bandwidth"],
)
def test_fit_rejects_bad_parameter_sets(
    free: tuple[str, ...], fixed: dict[str, float], message: str
) -> None:
    samples = _samples(0.14, CPU_BW)
    with pytest.raises(ValueError, match=message):
        bench.fit_profile(MODEL, samples, free=free, fixed=fixed)


def _lone(client: float, server: float, queue: float, prefill: float) -> dict[str, float]:
    return {
        "client_ttft_ms": client,
        "vllm_ttft_ms": server,
        "queue_ms": queue,
        "prefill_ms": prefill,
    }


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([_lone(20, 17, 1, 10)], {"excess_ms": 9, "api_engine_ms": 6, "http_ms": 3}),
        (
            # Medians: one stalled request (client TTFT 200 ms) does not move them.
            [_lone(20, 17, 1, 10), _lone(30, 26, 0, 22), _lone(200, 15, 0, 9)],
            {"excess_ms": 9, "api_engine_ms": 6, "http_ms": 4},
        ),
    ],
    ids=["one", "median-of-three"],
)
def test_front_end_split(rows: list[dict[str, float]], expected: dict[str, float]) -> None:
    got = bench.front_end_ms(rows)
    assert got["num_requests"] == len(rows)
    assert {k: got[k] for k in expected} == pytest.approx(expected)


def _row(ttft: float, tpot: float, tput: float) -> dict[str, dict[str, float | None]]:
    return {
        "ttft_p50_ms": {"error": ttft},
        "tpot_p50_ms": {"error": tpot},
        "output_tokens_per_s": {"error": tput},
        "prefix_hit_rate": {"error": 0.9},  # not a target metric
    }


def test_within_target_needs_all_three_metrics() -> None:
    table = {"c1": _row(-0.25, 0.1, 0.0), "c4": _row(0.3, 0.0, 0.0), "c8": _row(0.0, 0.0, -0.26)}
    assert bench.within_target(table) == {"c1": True, "c4": False, "c8": False}


def test_fit_rejects_no_samples() -> None:
    with pytest.raises(ValueError, match="samples"):
        bench.fit_profile(MODEL, [])


@pytest.mark.parametrize("cpu", [False, True], ids=["device-only", "cpu-fit"])
def test_profile_yaml_is_a_valid_catalog_entry(cpu: bool) -> None:
    if cpu:
        fixed = {"bandwidth_tb_s": CPU_BW, **bench.CPU_FIXED}
        samples = _samples(0.14, CPU_BW, Efficiency(**CPU_TRUTH))
        fit = bench.fit_profile(MODEL, samples, free=bench.CPU_FREE, fixed=fixed)
    else:
        fit = bench.fit_profile(MODEL, _samples(0.25, 0.1))
    gpu = parse_catalog(bench.profile_yaml(fit)).gpu("cpu-1core")
    assert gpu.hbm_bandwidth_bytes_per_s == pytest.approx(fit.bandwidth_tb_s * 1e12, rel=1e-2)
    assert gpu.peak_flops_per_s(bench.Dtype.BF16) == pytest.approx(fit.tflops_bf16 * 1e12, rel=1e-2)
    # The Efficiency factors the fit set travel as `efficiency:`; none for device-only.
    expected = {k: v for k, v in fit.params.items() if k not in bench.DEVICE_KEYS}
    assert dict(gpu.efficiency_overrides) == pytest.approx(expected, rel=1e-2)
    assert bool(gpu.efficiency_overrides) is cpu


def test_committed_result_matches_builtin_profile() -> None:
    """The built-in `cpu-1core` is the committed run's fit (rerun and update both)."""
    doc = json.loads(RESULT.read_text())
    assert doc["benchmark"] == "sim_vs_vllm_cpu" and not doc["tiny"]
    entry = doc["fit"]["catalog_entry"]["gpus"]["cpu-1core"]
    gpu = load_catalog().gpu("cpu-1core")
    assert gpu.hbm_bandwidth_bytes_per_s == pytest.approx(entry["hbm_bandwidth_tb_s"] * 1e12)
    assert gpu.flops_per_s[bench.Dtype.BF16] == pytest.approx(entry["tflops"]["bf16"] * 1e12)
    assert dict(gpu.efficiency_overrides) == pytest.approx(entry["efficiency"])
    assert doc["fit"]["free"] == list(bench.CPU_FREE)
    assert doc["fit"]["rms_log_error"] < doc["device_only_fit"]["rms_log_error"]
    assert doc["front_end"]["api_overhead_ms"] >= 0
    levels = doc["side_by_side"]
    assert levels and all(set(row) == set(bench.METRICS) for row in levels.values())
    assert set(doc["side_by_side_no_front_end"]) == set(levels)
    assert all(doc["vllm"][k]["num_errors"] == 0 == doc["sim"][k]["num_errors"] for k in levels)


@pytest.mark.engine
def test_sim_vs_vllm_cpu_tiny(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "scripts" / "engines"))
    import headway_engines as he

    if not he.vllm_is_installed():
        pytest.skip("vLLM-CPU venv not installed (make test-engines installs it)")
    out = tmp_path / "sim_vs_vllm_cpu.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["tiny"] and doc["steps"]
    assert doc["front_end"]["vllm"]["num_requests"] == doc["front_end"]["sim"]["num_requests"] > 0
    assert doc["front_end"]["api_overhead_ms"] >= 0
    assert all(math.isfinite(s["measured_ms"]) and s["measured_ms"] > 0 for s in doc["steps"])
    for level, row in doc["side_by_side"].items():
        assert doc["vllm"][level]["num_errors"] == 0 == doc["sim"][level]["num_errors"]
        assert row["output_tokens_per_s"]["vllm"] > 0 and row["output_tokens_per_s"]["sim"] > 0
        assert row["prefix_hit_rate"]["vllm"] > 0 and row["prefix_hit_rate"]["sim"] > 0
