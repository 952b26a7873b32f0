"""Fit the cost model's efficiency factors for one GPU from kernel measurements.

`benchmarks/gpu_calibration.py` measures, on a real GPU, GEMMs at the decode and prefill
shapes of the catalog models (BF16 and FP8), attention (PyTorch SDPA) across batch sizes
and context lengths, and HBM copy bandwidth, and writes them as a raw JSON document
(schema `RAW_SCHEMA`). `fit_efficiency` turns that document into the `Efficiency`
factors the roofline (`headway.core.costmodel`) uses for the GPU:

* each measurement gets the time the cost model's own formula gives it
  - GEMM (m tokens x k -> n): max(2mnk / (peak(dtype) x mfu(m)), weight bytes / (HBM x f));
    the cost model's linear term, weights only (it ignores activation traffic);
  - attention: max(4 x heads x head_dim x query-key pairs / (BF16 peak x max_mfu),
    KV bytes read / (HBM x f)); the cost model's attention term for one layer;
  - copy of B bytes: 2B / (HBM x f);
* `memory_bandwidth_fraction` (f), `max_mfu` and `mfu_half_saturation_tokens` are chosen
  on a grid to minimise the mean |log(model time / measured time)| over all of them
  (a log error: a kernel 2x too slow and one 2x too fast weigh the same);
* the other factors (fixed step and per-sequence costs, interconnect, FP4 scale) are not
  visible to single-kernel measurements and keep the `start` values.

Pure: no torch, no files. Diagnostics (achieved TFLOP/s and GB/s, their share of the
datasheet, the error of each kind before and after) come with the result.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from headway.core.catalog import Dtype, GpuSpec
from headway.core.costmodel import Efficiency

RAW_SCHEMA = "headway.gpu_calibration.raw/1"
FIT_SCHEMA = "headway.gpu_calibration.fit/1"

FITTED_FIELDS = ("memory_bandwidth_fraction", "max_mfu", "mfu_half_saturation_tokens")

# The grid: fractions in steps of 0.01, the half-saturation point on a log scale.
BANDWIDTH_GRID = tuple(round(0.2 + 0.01 * i, 2) for i in range(81))  # 0.20 .. 1.00
MFU_GRID = tuple(round(0.2 + 0.01 * i, 2) for i in range(79))  # 0.20 .. 0.98
HALF_SATURATION_GRID = tuple(float(2.0 ** (i / 4)) for i in range(0, 49))  # 1 .. 4096

_DTYPES = {"bf16": Dtype.BF16, "fp8": Dtype.FP8}


class CalibrationError(ValueError):
    """A raw document the fit cannot use; the message names the field."""


@dataclass(frozen=True)
class Measurement:
    """One kernel timing, reduced to what the cost model sees."""

    kind: str  # gemm | attention | copy
    label: str
    time_s: float
    flops: float
    bytes: float
    dtype: Dtype
    num_tokens: int  # GEMM rows (m); 0 for attention and copies


@dataclass(frozen=True)
class CalibrationResult:
    """The fitted factors and how well the cost model explains the measurements."""

    gpu: str
    efficiency: Efficiency
    fitted: dict[str, float]
    error_before: dict[str, float]  # kind -> mean |log error| as % (exp(mean|log|) - 1)
    error_after: dict[str, float]
    diagnostics: dict[str, Any]
    num_measurements: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": FIT_SCHEMA,
            "gpu": self.gpu,
            "fitted": self.fitted,
            "efficiency": dataclasses.asdict(self.efficiency),
            "error_pct_before": self.error_before,
            "error_pct_after": self.error_after,
            "diagnostics": self.diagnostics,
            "num_measurements": self.num_measurements,
        }


def _positive(entry: Mapping[str, Any], key: str, where: str) -> float:
    try:
        value = float(entry[key])
    except KeyError:
        raise CalibrationError(f"{where}.{key}: missing") from None
    except (TypeError, ValueError):
        raise CalibrationError(f"{where}.{key}: must be a number") from None
    if not value > 0 or math.isinf(value):
        raise CalibrationError(f"{where}.{key}: must be > 0, got {value}")
    return value


def measurements(raw: Mapping[str, Any]) -> list[Measurement]:
    """The usable measurements of a raw document (skipped entries are left out)."""
    if raw.get("schema") != RAW_SCHEMA:
        raise CalibrationError(f"schema: expected {RAW_SCHEMA!r}, got {raw.get('schema')!r}")
    entries = raw.get("measurements")
    if not isinstance(entries, list):
        raise CalibrationError("measurements: must be a list")
    out: list[Measurement] = []
    for i, e in enumerate(entries):
        where = f"measurements[{i}]"
        if not isinstance(e, Mapping):
            raise CalibrationError(f"{where}: must be an object")
        if e.get("skipped"):
            continue
        kind = e.get("kind")
        time_s = _positive(e, "time_s", where)
        if kind == "gemm":
            dtype = _DTYPES.get(str(e.get("dtype")))
            if dtype is None:
                raise CalibrationError(f"{where}.dtype: must be one of {sorted(_DTYPES)}")
            m, n, k = (int(_positive(e, f, where)) for f in ("m", "n", "k"))
            out.append(
                Measurement(
                    "gemm",
                    f"{e.get('model', '?')} {e.get('op', '?')} {dtype.value} m={m}",
                    time_s,
                    2.0 * m * n * k,
                    n * k * dtype.bytes_per_element,
                    dtype,
                    m,
                )
            )
        elif kind == "attention":
            batch, heads, kv_heads, head_dim, q_len, kv_len = (
                int(_positive(e, f, where))
                for f in ("batch", "num_heads", "num_kv_heads", "head_dim", "q_len", "kv_len")
            )
            # Causal: query i of the q_len new tokens sees kv_len - q_len + i + 1 keys.
            pairs = batch * (q_len * (kv_len - q_len) + q_len * (q_len + 1) / 2)
            kv_bytes = batch * kv_len * kv_heads * head_dim * 2 * Dtype.BF16.bytes_per_element
            out.append(
                Measurement(
                    "attention",
                    f"{e.get('phase', '?')} b={batch} q={q_len} kv={kv_len}",
                    time_s,
                    4.0 * heads * head_dim * pairs,
                    kv_bytes,
                    Dtype.BF16,
                    0,
                )
            )
        elif kind == "copy":
            size = _positive(e, "bytes", where)
            out.append(
                Measurement(
                    "copy", f"copy {size / 2**20:.0f} MiB", time_s, 0.0, 2 * size, Dtype.BF16, 0
                )
            )
        else:
            raise CalibrationError(f"{where}.kind: must be gemm, attention or copy, got {kind!r}")
    if not out:
        raise CalibrationError("measurements: none usable (all skipped or empty)")
    return out


def model_time_s(m: Measurement, gpu: GpuSpec, eff: Efficiency) -> float:
    """The cost model's time for one measured kernel (see the module doc)."""
    bw = gpu.hbm_bandwidth_bytes_per_s * eff.memory_bandwidth_fraction
    if m.kind == "copy":
        return m.bytes / bw
    if m.kind == "attention":
        compute = m.flops / (gpu.peak_flops_per_s(Dtype.BF16) * eff.max_mfu)
        return max(compute, m.bytes / bw)
    compute = m.flops / (gpu.peak_flops_per_s(m.dtype) * eff.mfu(m.num_tokens))
    return max(compute, m.bytes / bw)


def _errors(ms: Sequence[Measurement], gpu: GpuSpec, eff: Efficiency) -> dict[str, float]:
    """Per kind (and all): exp(mean |log(model / measured)|) - 1, as a percentage."""
    logs: dict[str, list[float]] = {}
    for m in ms:
        err = abs(math.log(model_time_s(m, gpu, eff) / m.time_s))
        logs.setdefault(m.kind, []).append(err)
        logs.setdefault("all", []).append(err)
    return {k: 100.0 * (math.exp(float(np.mean(v))) - 1.0) for k, v in sorted(logs.items())}


def fit_efficiency(
    raw: Mapping[str, Any], gpu: GpuSpec, start: Efficiency | None = None
) -> CalibrationResult:
    """Fit memory_bandwidth_fraction, max_mfu and mfu_half_saturation_tokens of `gpu`'s
    profile to the measurements in `raw` (grid search, mean |log error|)."""
    start = start or Efficiency()
    ms = measurements(raw)
    times = np.array([m.time_s for m in ms])
    nbytes = np.array([m.bytes for m in ms])
    flops = np.array([m.flops for m in ms])
    tokens = np.array([float(m.num_tokens) for m in ms])
    is_gemm = np.array([m.kind == "gemm" for m in ms])
    is_attn = np.array([m.kind == "attention" for m in ms])
    peaks = np.array(
        [gpu.peak_flops_per_s(m.dtype if m.kind == "gemm" else Dtype.BF16) for m in ms]
    )
    bw = np.array(BANDWIDTH_GRID)[:, None, None] * gpu.hbm_bandwidth_bytes_per_s
    mfu_max = np.array(MFU_GRID)[None, :, None]
    memory_s = nbytes[None, None, :] / bw  # (B, 1, N)
    best: tuple[float, float, float, float] | None = None
    for half in HALF_SATURATION_GRID:
        ramp = np.where(is_gemm, tokens / (tokens + half), 1.0)
        compute_s = np.where(
            is_gemm | is_attn, flops / (peaks * ramp)[None, None, :] / mfu_max, 0.0
        )  # (1, M, N)
        model = np.maximum(compute_s, memory_s)  # (B, M, N)
        loss = np.mean(np.abs(np.log(model / times)), axis=2)
        i, j = np.unravel_index(int(np.argmin(loss)), loss.shape)
        value = float(loss[i, j])
        if best is None or value < best[0] - 1e-12:
            best = (value, BANDWIDTH_GRID[i], MFU_GRID[j], half)
    assert best is not None
    _, frac, mfu, half = best
    fitted = {
        "memory_bandwidth_fraction": frac,
        "max_mfu": mfu,
        "mfu_half_saturation_tokens": half,
    }
    eff = dataclasses.replace(start, **fitted)
    return CalibrationResult(
        gpu=gpu.name,
        efficiency=eff,
        fitted=fitted,
        error_before=_errors(ms, gpu, start),
        error_after=_errors(ms, gpu, eff),
        diagnostics=_diagnostics(ms, gpu, start, eff),
        num_measurements=len(ms),
    )


def _diagnostics(
    ms: Sequence[Measurement], gpu: GpuSpec, before: Efficiency, after: Efficiency
) -> dict[str, Any]:
    """Best achieved rates against the datasheet, and the signed mean log error (bias)
    of each kind and GEMM dtype before and after (positive: the model is slower)."""
    out: dict[str, Any] = {
        "datasheet": {
            "hbm_tb_s": gpu.hbm_bandwidth_bytes_per_s / 1e12,
            "tflops": {d.value: f / 1e12 for d, f in gpu.flops_per_s.items()},
        }
    }
    copies = [m.bytes / m.time_s for m in ms if m.kind == "copy"]
    if copies:
        best = max(copies)
        out["copy_best_tb_s"] = best / 1e12
        out["copy_best_fraction_of_datasheet"] = best / gpu.hbm_bandwidth_bytes_per_s
    for dtype in (Dtype.BF16, Dtype.FP8):
        rates = [m.flops / m.time_s for m in ms if m.kind == "gemm" and m.dtype == dtype]
        if rates:
            out[f"gemm_{dtype.value}_best_tflops"] = max(rates) / 1e12
            out[f"gemm_{dtype.value}_best_fraction_of_peak"] = max(rates) / gpu.peak_flops_per_s(
                dtype
            )
    attn = [m.flops / m.time_s for m in ms if m.kind == "attention" and m.flops > 0]
    if attn:
        out["attention_best_tflops"] = max(attn) / 1e12
        out["attention_best_fraction_of_bf16_peak"] = max(attn) / gpu.peak_flops_per_s(Dtype.BF16)
    groups: dict[str, list[Measurement]] = {}
    for m in ms:
        key = f"gemm_{m.dtype.value}" if m.kind == "gemm" else m.kind
        groups.setdefault(key, []).append(m)
    out["bias_pct"] = {
        label: {
            key: 100.0
            * (
                math.exp(
                    float(np.mean([math.log(model_time_s(m, gpu, eff) / m.time_s) for m in group]))
                )
                - 1.0
            )
            for key, group in sorted(groups.items())
        }
        for label, eff in (("before", before), ("after", after))
    }
    return out
