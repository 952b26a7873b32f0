"""Measure a GPU's GEMM, attention and HBM rates, and fit the cost model's factors to them.

Measure (needs PyTorch; a few minutes on an H200):

    python benchmarks/gpu_calibration.py --out benchmarks/results/gpu_calibration_raw.json

* GEMMs at the decode and prefill shapes of the catalog's dense models (per layer: the
  fused QKV projection, the output projection, the fused gate/up projection and the
  down projection, at tensor parallelism 1) for m tokens per step, BF16 (`torch.matmul`)
  and FP8 e4m3 (`torch._scaled_mm`, per-tensor scales, BF16 output) where the device
  supports it; skipped with the reason otherwise;
* attention (`torch.nn.functional.scaled_dot_product_attention`, BF16, causal; grouped
  KV heads through `enable_gqa` when this torch has it, else the KV heads are repeated
  first, which the raw file says): decode (one query per sequence) across batch sizes and
  context lengths, and prefill (whole prompts);
* HBM copy bandwidth (`Tensor.copy_` of a large buffer: bytes read + bytes written).

Each kernel is timed after warm-up with CUDA events (wall clock on CPU), the median of
`--repeats` runs. The raw JSON (schema `headway.gpu_calibration.raw/1`) records the device,
torch and CUDA versions, and per measurement its shape, dtype, time and achieved TFLOP/s
or GB/s.

Fit (pure, `headway.plan.calibration.fit_efficiency`; no torch needed):

    .venv/bin/python benchmarks/gpu_calibration.py --fit RAW.json [--gpu h200] [--out FIT.json]

turns the raw file into the GPU profile's `Efficiency` factors and prints the cost model
before and after: against the measurements, and against the published points of
`benchmarks/planner_vs_published.py` on that GPU (the loaders and predictions of that
script).

`--device cpu --tiny` runs a few small shapes on the CPU: a smoke test of the measure
phase wherever torch is installed (the numbers mean nothing for a GPU profile).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CATALOG_YAML = REPO / "src" / "headway" / "resources" / "data" / "catalog.yaml"
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The measure phase runs under whatever Python has torch (the GPU machine's), which may be
# older than the project's 3.11: it needs only the standard library, PyYAML and torch, and
# reads the model shapes from the catalog file itself. Only --fit imports headway.
RAW_SCHEMA = "headway.gpu_calibration.raw/1"  # = headway.plan.calibration.RAW_SCHEMA

# Shapes: dense catalog models, tokens per step for decode (batch of one-token steps)
# and prefill (chunks of prompts), attention batches and contexts.
MODELS = ("llama-3.1-8b", "llama-3.1-70b", "qwen3-32b")
DECODE_TOKENS = (1, 4, 16, 64, 128, 256)
PREFILL_TOKENS = (512, 2048, 8192)
ATTN_DECODE = {"batch": (1, 8, 32, 128), "context": (1024, 4096, 16384)}
ATTN_PREFILL = {"batch": (1,), "context": (1024, 4096, 8192)}
COPY_BYTES = 2 * 2**30

TINY_MODELS = ("llama-3.1-8b",)
TINY_DECODE_TOKENS = (1, 16)
TINY_PREFILL_TOKENS = (128,)
TINY_ATTN_DECODE = {"batch": (1, 4), "context": (256,)}
TINY_ATTN_PREFILL = {"batch": (1,), "context": (256,)}
TINY_COPY_BYTES = 16 * 2**20
TINY_SHAPE_DIVISOR = 8  # --tiny on CPU: layer widths / 8 so a run takes seconds

GPU_NAME_HINTS = (("gb200", "gb200"), ("b200", "b200"), ("h200", "h200"), ("h100", "h100-sxm"))


@dataclass(frozen=True)
class Shapes:
    """What the measurements need of a catalog model."""

    name: str
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int


def load_shapes(names: Sequence[str]) -> list[Shapes]:
    """The named models' shapes from the built-in catalog file."""
    import yaml

    models = yaml.safe_load(CATALOG_YAML.read_text())["models"]
    return [
        Shapes(
            name,
            int(models[name]["hidden_size"]),
            int(models[name]["num_attention_heads"]),
            int(models[name]["num_kv_heads"]),
            int(models[name]["head_dim"]),
            int(models[name]["intermediate_size"]),
        )
        for name in names
    ]


def gemm_shapes(model: Shapes, divisor: int = 1) -> list[tuple[str, int, int]]:
    """(op, n, k) of one layer's GEMMs at TP 1: output width n from input width k."""
    h = model.hidden_size // divisor
    q = model.num_attention_heads * model.head_dim // divisor
    kv = model.num_kv_heads * model.head_dim // divisor
    ffn = model.intermediate_size // divisor
    return [
        ("qkv_proj", q + 2 * kv, h),
        ("o_proj", h, q),
        ("gate_up_proj", 2 * ffn, h),
        ("down_proj", h, ffn),
    ]


# -- measure (torch) -------------------------------------------------------------------
class Timer:
    """Median time of a kernel: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, torch: Any, device: str, warmup: int, repeats: int) -> None:
        self.torch = torch
        self.device = device
        self.warmup = warmup
        self.repeats = repeats

    def __call__(self, fn: Callable[[], Any]) -> float:
        torch = self.torch
        for _ in range(self.warmup):
            fn()
        times: list[float] = []
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            for _ in range(self.repeats):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
        else:
            for _ in range(self.repeats):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)


def fp8_support(torch: Any, device: str) -> str | None:
    """None if FP8 GEMMs can run here, else the reason they are skipped."""
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return f"torch {torch.__version__} has no _scaled_mm / float8_e4m3fn"
    if not device.startswith("cuda"):
        return "FP8 GEMMs (torch._scaled_mm) are measured on CUDA devices only"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"compute capability {major}.{minor} < 8.9 has no FP8 tensor cores"
    return None


def measure_gemms(
    torch: Any,
    timer: Timer,
    device: str,
    models: Sequence[Shapes],
    token_counts: Sequence[tuple[str, int]],
    divisor: int,
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    fp8_reason = fp8_support(torch, device)
    for model in models:
        for op, n, k in gemm_shapes(model, divisor):
            w = torch.randn(n, k, device=device, dtype=torch.bfloat16) * 0.02
            w_fp8 = None
            if fp8_reason is None:
                # _scaled_mm wants the second operand column-major: w^T of a row-major w.
                w_fp8 = w.to(torch.float8_e4m3fn).t()
            scale = torch.ones((), device=device, dtype=torch.float32)
            for phase, m in token_counts:
                x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
                base = {
                    "kind": "gemm",
                    "model": model.name,
                    "op": op,
                    "phase": phase,
                    "m": m,
                    "n": n,
                    "k": k,
                }
                t = timer(lambda x=x, w=w: torch.matmul(x, w.t()))
                out.append(_gemm_entry(base, "bf16", t, 2.0))
                if fp8_reason is not None:
                    out.append({**base, "dtype": "fp8", "skipped": fp8_reason})
                    continue
                if m % 16:
                    # _scaled_mm needs every dimension a multiple of 16: pad the rows
                    # (the padded rows are counted: that is what a serving engine pays).
                    m_pad = 16 * ((m + 15) // 16)
                    x = torch.randn(m_pad, k, device=device, dtype=torch.bfloat16)
                    base = {**base, "m": m_pad, "m_requested": m}
                x8 = x.to(torch.float8_e4m3fn)
                try:
                    t8 = timer(
                        lambda x8=x8, w8=w_fp8, scale=scale: torch._scaled_mm(
                            x8, w8, scale_a=scale, scale_b=scale, out_dtype=torch.bfloat16
                        )
                    )
                except (RuntimeError, TypeError) as exc:
                    out.append({**base, "dtype": "fp8", "skipped": f"_scaled_mm failed: {exc}"})
                    continue
                out.append(_gemm_entry(base, "fp8", t8, 1.0))
    return out


def _gemm_entry(base: dict[str, Any], dtype: str, t: float, weight_bytes: float) -> dict[str, Any]:
    m, n, k = base["m"], base["n"], base["k"]
    return {
        **base,
        "dtype": dtype,
        "time_s": t,
        "tflops": 2.0 * m * n * k / t / 1e12,
        "weight_gb_s": n * k * weight_bytes / t / 1e9,
    }


def measure_attention(
    torch: Any,
    timer: Timer,
    device: str,
    model: Shapes,
    decode: dict[str, tuple[int, ...]],
    prefill: dict[str, tuple[int, ...]],
    divisor: int,
) -> list[dict[str, Any]]:
    import inspect

    sdpa = torch.nn.functional.scaled_dot_product_attention
    try:
        has_gqa = "enable_gqa" in inspect.signature(sdpa).parameters
    except (TypeError, ValueError):
        has_gqa = False
    heads = max(1, model.num_attention_heads // divisor)
    kv_heads = max(1, model.num_kv_heads // divisor)
    d = model.head_dim
    group = heads // kv_heads
    out: list[dict[str, Any]] = []
    cases = [("decode", b, ctx, 1) for b in decode["batch"] for ctx in decode["context"]]
    cases += [("prefill", b, ctx, ctx) for b in prefill["batch"] for ctx in prefill["context"]]
    for phase, batch, ctx, q_len in cases:
        q = torch.randn(batch, heads, q_len, d, device=device, dtype=torch.bfloat16)
        k = torch.randn(batch, kv_heads, ctx, d, device=device, dtype=torch.bfloat16)
        v = torch.randn_like(k)
        causal = q_len > 1
        if has_gqa:

            def fn(q: Any = q, k: Any = k, v: Any = v, causal: bool = causal) -> Any:
                return sdpa(q, k, v, is_causal=causal, enable_gqa=True)

        else:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)

            def fn(q: Any = q, k: Any = k, v: Any = v, causal: bool = causal) -> Any:
                return sdpa(q, k, v, is_causal=causal)

        t = timer(fn)
        pairs = batch * q_len * (q_len + 1) / 2 if causal else batch * ctx
        kv_bytes = batch * ctx * kv_heads * d * 2 * 2
        out.append(
            {
                "kind": "attention",
                "model": model.name,
                "phase": phase,
                "batch": batch,
                "num_heads": heads,
                "num_kv_heads": kv_heads,
                "head_dim": d,
                "q_len": q_len,
                "kv_len": ctx,
                "dtype": "bf16",
                "gqa": "enable_gqa" if has_gqa else "kv heads repeated",
                "time_s": t,
                "tflops": 4.0 * heads * d * pairs / t / 1e12,
                "kv_gb_s": kv_bytes / t / 1e9,
            }
        )
    return out


def measure_copy(torch: Any, timer: Timer, device: str, nbytes: int) -> list[dict[str, Any]]:
    src = torch.empty(nbytes, device=device, dtype=torch.uint8)
    dst = torch.empty_like(src)
    t = timer(lambda: dst.copy_(src))
    return [{"kind": "copy", "bytes": nbytes, "time_s": t, "gb_s": 2 * nbytes / t / 1e9}]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_calibration: error: --device cuda: torch sees no CUDA device")
    torch.manual_seed(0)
    tiny = args.tiny
    models = load_shapes(TINY_MODELS if tiny else MODELS)
    divisor = TINY_SHAPE_DIVISOR if tiny and not device.startswith("cuda") else 1
    tokens = [("decode", m) for m in (TINY_DECODE_TOKENS if tiny else DECODE_TOKENS)]
    tokens += [("prefill", m) for m in (TINY_PREFILL_TOKENS if tiny else PREFILL_TOKENS)]
    timer = Timer(torch, device, warmup=args.warmup, repeats=args.repeats)
    started = time.perf_counter()
    entries = measure_gemms(torch, timer, device, models, tokens, divisor)
    entries += measure_attention(
        torch,
        timer,
        device,
        models[0],
        TINY_ATTN_DECODE if tiny else ATTN_DECODE,
        TINY_ATTN_PREFILL if tiny else ATTN_PREFILL,
        divisor,
    )
    entries += measure_copy(torch, timer, device, TINY_COPY_BYTES if tiny else COPY_BYTES)
    device_name = (
        torch.cuda.get_device_name(device)
        if device.startswith("cuda")
        else platform.processor() or "cpu"
    )
    return {
        "schema": RAW_SCHEMA,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(  # noqa: UP017 (3.10)
            timespec="seconds"
        ),
        "device": device,
        "device_name": device_name,
        "torch_version": torch.__version__,
        "cuda_version": getattr(torch.version, "cuda", None),
        "tiny": tiny,
        "shape_divisor": divisor,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "wall_s": time.perf_counter() - started,
        "measurements": entries,
    }


# -- fit ---------------------------------------------------------------------------------
def _import_headway() -> None:
    try:
        import headway  # noqa: F401
    except ImportError:  # another interpreter than the project venv: use the checkout
        sys.path.insert(0, str(REPO / "src"))


def gpu_for(raw: dict[str, Any], override: str | None) -> str:
    from headway.plan.calibration import CalibrationError

    if override:
        return override
    name = str(raw.get("device_name", "")).lower()
    for hint, catalog_name in GPU_NAME_HINTS:
        if hint in name:
            return catalog_name
    raise CalibrationError(
        f"device_name: {raw.get('device_name')!r} matches no catalog GPU; pass --gpu"
    )


def published_check(gpu: str, before: Any, after: Any, requests_per_user: int) -> dict[str, Any]:
    """The cost model before/after against the published points on `gpu`
    (planner_vs_published's loaders and predictions)."""
    import yaml

    import planner_vs_published as pvp
    from headway.resources.catalog import load_catalog

    catalog = load_catalog()
    doc = yaml.safe_load(pvp.DEFAULT_DATA.read_text())
    spec = catalog.gpu(gpu)
    gpu_names = {spec.name, *spec.aliases}
    latency = [p for p in pvp.load_latency_points(doc) if p.gpu in gpu_names]
    trt, trt_sets, _ = pvp.load_trtllm(doc, tiny=False)
    trt = [p for p in trt if pvp.cvp.GPU_NAMES[p.gpu] in gpu_names]
    sim = pvp.Simulator(catalog, requests_per_user, seed=0)
    out: dict[str, Any] = {
        "gpu": gpu,
        "num_latency_points": len(latency),
        "num_throughput_points": len(trt),
    }
    for label, eff in (("before", before), ("after", after)):
        ev = pvp.evaluate(sim, catalog, latency, trt, trt_sets, eff)
        out[label] = ev.mape_pct
    return out


def fit(args: argparse.Namespace) -> int:
    _import_headway()
    from headway.plan.calibration import RAW_SCHEMA as FIT_RAW_SCHEMA
    from headway.plan.calibration import CalibrationError, fit_efficiency
    from headway.resources.catalog import load_catalog

    assert FIT_RAW_SCHEMA == RAW_SCHEMA
    try:
        raw = json.loads(Path(args.fit).read_text())
        gpu_name = gpu_for(raw, args.gpu)
        gpu = load_catalog().gpu(gpu_name)
        result = fit_efficiency(raw, gpu)
    except (OSError, json.JSONDecodeError) as exc:
        print(f"gpu_calibration: error: --fit: {exc}", file=sys.stderr)
        return 2
    except (CalibrationError, ValueError) as exc:
        print(f"gpu_calibration: error: --fit {args.fit}: {exc}", file=sys.stderr)
        return 2
    from headway.core.costmodel import Efficiency

    doc = {
        **result.as_dict(),
        "raw_file": str(args.fit),
        "device_name": raw.get("device_name"),
        "torch_version": raw.get("torch_version"),
    }
    print(
        f"GPU profile {gpu.name} from {raw.get('device_name')} ({result.num_measurements} measurements)"
    )
    for name, value in result.fitted.items():
        print(f"  {name:28} default {getattr(Efficiency(), name):<10.4g} fitted {value:.4g}")
    print("  mean |log error| of the cost model against the kernels, before -> after:")
    for kind, before in result.error_before.items():
        print(f"    {kind:10} {before:7.1f}% -> {result.error_after[kind]:6.1f}%")
    if not args.no_published:
        check = published_check(gpu.name, Efficiency(), result.efficiency, args.requests_per_user)
        doc["published_check"] = check
        print(
            f"  published points on {gpu.name} ({check['num_throughput_points']} throughput, "
            f"{check['num_latency_points']} latency), MAPE before -> after:"
        )
        for kind in ("throughput", "latency"):
            b, a = check["before"][kind]["all"], check["after"][kind]["all"]
            print(f"    {kind:10} {b:6.1f}% -> {a:6.1f}%")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--device", default="cuda", help="torch device to measure (cuda, cuda:1, cpu)")
    ap.add_argument("--tiny", action="store_true", help="a few small shapes (smoke test)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs per kernel")
    ap.add_argument("--repeats", type=int, default=10, help="timed runs per kernel (median)")
    ap.add_argument(
        "--fit", type=Path, metavar="RAW.json", help="fit a raw file instead of measuring"
    )
    ap.add_argument("--gpu", help="catalog GPU of the raw file (default: from its device name)")
    ap.add_argument(
        "--no-published", action="store_true", help="--fit: skip the published-points check"
    )
    ap.add_argument(
        "--requests-per-user", type=int, default=3, help="--fit: as planner_vs_published"
    )
    ap.add_argument("--out", type=Path, help="write the raw (or, with --fit, the fit) JSON here")
    args = ap.parse_args(argv)
    if args.warmup < 0 or args.repeats < 1:
        ap.error("--warmup must be >= 0 and --repeats >= 1")
    if args.requests_per_user < 1:
        ap.error("--requests-per-user: must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.fit is not None:
        return fit(args)
    try:
        import torch  # noqa: F401
    except ImportError:
        print(
            "gpu_calibration: error: the measure phase needs PyTorch (not in the project venv); "
            "run it with an interpreter that has torch, or pass --fit RAW.json",
            file=sys.stderr,
        )
        return 2
    raw = measure(args)
    n_skipped = sum(1 for m in raw["measurements"] if m.get("skipped"))
    print(
        f"{raw['device_name']} (torch {raw['torch_version']}): {len(raw['measurements'])} "
        f"measurements ({n_skipped} skipped) in {raw['wall_s']:.1f} s"
    )
    for m in raw["measurements"]:
        if m.get("skipped"):
            continue
        rate = m.get("tflops")
        if m["kind"] == "copy":
            print(f"  copy {m['bytes'] / 2**20:.0f} MiB: {m['gb_s']:.1f} GB/s")
        elif m["kind"] == "gemm" and m["m"] in (1, 2048, 8192):
            print(f"  gemm {m['model']} {m['op']} {m['dtype']} m={m['m']}: {rate:.1f} TFLOP/s")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(raw, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
