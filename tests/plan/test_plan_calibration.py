"""headway.plan.calibration: the GPU-profile fit from kernel measurements."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from headway.core.catalog import Dtype
from headway.core.costmodel import Efficiency
from headway.plan.calibration import (
    RAW_SCHEMA,
    CalibrationError,
    Measurement,
    fit_efficiency,
    measurements,
    model_time_s,
)
from headway.resources.catalog import load_catalog

H200 = load_catalog().gpu("h200")


def synthetic_raw(eff: Efficiency) -> dict[str, Any]:
    """Measurements whose times are exactly the cost model's at `eff` (so a fit must
    recover `eff`'s three fitted factors up to the grid)."""
    entries: list[dict[str, Any]] = []
    for m in (1, 4, 16, 64, 256, 1024, 4096, 8192):
        for n, k in ((6144, 4096), (28672, 4096), (4096, 14336)):
            for dtype in ("bf16", "fp8"):
                entries.append(
                    {"kind": "gemm", "m": m, "n": n, "k": k, "dtype": dtype, "time_s": 1.0}
                )
    for batch, ctx, q_len in (
        (1, 4096, 1),
        (64, 4096, 1),
        (128, 16384, 1),
        (1, 4096, 4096),
        (1, 8192, 8192),
    ):
        entries.append(
            {
                "kind": "attention",
                "batch": batch,
                "num_heads": 32,
                "num_kv_heads": 8,
                "head_dim": 128,
                "q_len": q_len,
                "kv_len": ctx,
                "time_s": 1.0,
            }
        )
    entries.append({"kind": "copy", "bytes": 2**31, "time_s": 1.0})
    raw = {"schema": RAW_SCHEMA, "measurements": entries}
    for entry, m in zip(entries, measurements(raw), strict=True):
        entry["time_s"] = model_time_s(m, H200, eff)
    entries.append({"kind": "gemm", "m": 8, "n": 16, "k": 16, "dtype": "fp8", "skipped": "no FP8"})
    return raw


@pytest.mark.parametrize(
    ("bandwidth", "mfu", "half"),
    [(0.8, 0.7, 64.0), (0.55, 0.45, 256.0), (0.9, 0.85, 16.0)],
    ids=["h200-like", "slow-kernels", "fast-ramp"],
)
def test_fit_recovers_the_factors_that_made_the_times(
    bandwidth: float, mfu: float, half: float
) -> None:
    truth = Efficiency(
        memory_bandwidth_fraction=bandwidth, max_mfu=mfu, mfu_half_saturation_tokens=half
    )
    result = fit_efficiency(synthetic_raw(truth), H200)
    assert result.fitted["memory_bandwidth_fraction"] == pytest.approx(bandwidth, abs=0.011)
    assert result.fitted["max_mfu"] == pytest.approx(mfu, abs=0.011)
    assert result.fitted["mfu_half_saturation_tokens"] == pytest.approx(half, rel=0.1)
    assert result.error_after["all"] < 1.0
    assert result.error_after["all"] <= result.error_before["all"]
    # Fields the kernels cannot see keep the start values.
    assert result.efficiency.step_overhead_s == Efficiency().step_overhead_s
    assert result.num_measurements == len(synthetic_raw(truth)["measurements"]) - 1  # skipped


def test_model_time_matches_hand_computed_values() -> None:
    eff = Efficiency(memory_bandwidth_fraction=0.5, max_mfu=0.5, mfu_half_saturation_tokens=100.0)
    bw = 4.8e12 * 0.5
    # Decode GEMM: 4096 x 4096 BF16 weights (32 MiB) over half of 4.8 TB/s.
    gemm = Measurement("gemm", "g", 1.0, 2.0 * 1 * 4096 * 4096, 4096 * 4096 * 2.0, Dtype.BF16, 1)
    assert model_time_s(gemm, H200, eff) == pytest.approx(4096 * 4096 * 2.0 / bw)
    # Prefill GEMM of 900 tokens: compute at 989 TFLOP/s x 0.5 x 900/1000.
    big = Measurement("gemm", "g", 1.0, 2.0 * 900 * 4096 * 4096, 4096 * 4096 * 2.0, Dtype.BF16, 900)
    assert model_time_s(big, H200, eff) == pytest.approx(2.0 * 900 * 4096 * 4096 / (989e12 * 0.45))
    copy = Measurement("copy", "c", 1.0, 0.0, 2e9, Dtype.BF16, 0)
    assert model_time_s(copy, H200, eff) == pytest.approx(2e9 / bw)


def test_attention_pairs_and_bytes_from_the_raw_entry() -> None:
    raw = {
        "schema": RAW_SCHEMA,
        "measurements": [
            {
                "kind": "attention",
                "batch": 2,
                "num_heads": 4,
                "num_kv_heads": 2,
                "head_dim": 8,
                "q_len": 3,
                "kv_len": 3,
                "time_s": 1.0,
            },
            {
                "kind": "attention",
                "batch": 1,
                "num_heads": 4,
                "num_kv_heads": 2,
                "head_dim": 8,
                "q_len": 1,
                "kv_len": 10,
                "time_s": 1.0,
            },
        ],
    }
    prefill, decode = measurements(raw)
    assert prefill.flops == pytest.approx(4 * 4 * 8 * 2 * 6)  # 2 sequences x (1+2+3) pairs
    assert decode.flops == pytest.approx(4 * 4 * 8 * 10)
    assert decode.bytes == pytest.approx(10 * 2 * 8 * 2 * 2)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"schema": "other", "measurements": []}, "schema"),
        ({"schema": RAW_SCHEMA, "measurements": {}}, "measurements"),
        ({"schema": RAW_SCHEMA, "measurements": []}, "measurements"),
        (
            {
                "schema": RAW_SCHEMA,
                "measurements": [{"kind": "gemm", "m": 1, "n": 2, "k": 2, "dtype": "fp8"}],
            },
            "measurements[0].time_s",
        ),
        (
            {
                "schema": RAW_SCHEMA,
                "measurements": [
                    {"kind": "gemm", "m": 1, "n": 2, "k": 2, "dtype": "int3", "time_s": 1}
                ],
            },
            "measurements[0].dtype",
        ),
        (
            {"schema": RAW_SCHEMA, "measurements": [{"kind": "copy", "bytes": -1, "time_s": 1}]},
            "measurements[0].bytes",
        ),
        (
            {"schema": RAW_SCHEMA, "measurements": [{"kind": "fft", "time_s": 1}]},
            "measurements[0].kind",
        ),
        (
            {"schema": RAW_SCHEMA, "measurements": [{"kind": "copy", "skipped": "no GPU"}]},
            "measurements",
        ),
    ],
    ids=[
        "schema",
        "not-a-list",
        "empty",
        "no-time",
        "bad-dtype",
        "negative-bytes",
        "bad-kind",
        "all-skipped",
    ],
)
def test_bad_raw_documents_name_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(CalibrationError) as info:
        fit_efficiency(raw, H200)
    assert str(info.value).startswith(field)


def test_result_document_shape() -> None:
    doc = fit_efficiency(synthetic_raw(Efficiency()), H200).as_dict()
    assert doc["schema"] == "headway.gpu_calibration.fit/1"
    assert doc["gpu"] == "h200"
    assert set(doc["efficiency"]) == {f.name for f in dataclasses.fields(Efficiency)}
    diag = doc["diagnostics"]
    assert diag["copy_best_fraction_of_datasheet"] == pytest.approx(0.74, rel=1e-6)
    assert {"before", "after"} == set(diag["bias_pct"])
    assert all(math.isfinite(v) for v in doc["error_pct_after"].values())
