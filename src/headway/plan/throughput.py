"""Predict a deployment's saturated (offline, max-throughput) output tokens/s per GPU.

`headway plan throughput --model M --gpu G --tp T --precision P --isl I --osl O`
prints the cost model's steady state with every request queued at once: the output
and total tokens/s (per GPU and in all), the batch size reached and which limit sets it
(KV capacity, --max-num-seqs, --max-num-batched-tokens, or the throughput peak), the
step time and the TPOT at that batch. The method is in `headway.core.throughput`.

Defaults follow TensorRT-LLM's max-throughput runs: up to 2048 sequences and 8192
batched tokens per step (its BuildConfig defaults; vLLM's own default of 256 sequences
caps offline throughput lower: pass --max-num-seqs 256 to model it). KV blocks are
charged at mean occupancy (on-demand paging, as vLLM and Headway's engine do);
--kv-reservation full charges isl + osl per request up front, as TensorRT-LLM's default
GUARANTEED_NO_EVICT scheduler does.

Bad input prints one line naming the flag and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
from typing import Any, NoReturn

from headway.core.catalog import CatalogError, precision
from headway.core.costmodel import CostModel, Deployment
from headway.core.engine_factory import DEFAULT_PRECISION
from headway.core.throughput import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_MAX_NUM_BATCHED_TOKENS,
    DEFAULT_MAX_NUM_SEQS,
    KvReservation,
    ThroughputEstimate,
    ThroughputInputError,
    saturated_throughput,
)
from headway.resources.catalog import load_catalog

EXIT_USAGE = 2
_PROG = "headway plan throughput"

# ThroughputInputError.field -> the flag that sets it.
_FLAGS = {
    "isl": "--isl",
    "osl": "--osl",
    "tp": "--tp",
    "block_size": "--block-size",
    "max_num_seqs": "--max-num-seqs",
    "max_num_batched_tokens": "--max-num-batched-tokens",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0] if __doc__ else None
    # argparse's own errors (a missing flag, "--isl abc") print the whole usage block
    # first; keep them to the one line every other input error gets.
    parser.error = types.MethodType(_one_line_error, parser)  # type: ignore[method-assign]
    parser.add_argument("--model", required=True, help="model name or alias from the catalog")
    parser.add_argument("--gpu", required=True, help="GPU name or alias from the catalog")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (default 1)")
    parser.add_argument(
        "--precision",
        default=DEFAULT_PRECISION,
        help="weights/KV precision preset: bf16, fp8, fp8-kvbf16, fp4, ... "
        f"(default {DEFAULT_PRECISION})",
    )
    parser.add_argument("--isl", type=int, required=True, help="prompt tokens per request")
    parser.add_argument("--osl", type=int, required=True, help="output tokens per request")
    parser.add_argument(
        "--max-num-seqs",
        type=int,
        default=DEFAULT_MAX_NUM_SEQS,
        help=f"most requests in flight (default {DEFAULT_MAX_NUM_SEQS})",
    )
    parser.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=DEFAULT_MAX_NUM_BATCHED_TOKENS,
        help=f"most tokens per step (default {DEFAULT_MAX_NUM_BATCHED_TOKENS})",
    )
    parser.add_argument(
        "--block-size",
        type=int,
        default=DEFAULT_BLOCK_SIZE,
        help=f"KV block size in tokens (default {DEFAULT_BLOCK_SIZE})",
    )
    parser.add_argument(
        "--kv-reservation",
        choices=[r.value for r in KvReservation],
        default=KvReservation.AVERAGE.value,
        help="KV charged per request: mean occupancy (average, default) or isl+osl (full)",
    )
    parser.add_argument(
        "--catalog",
        action="append",
        default=[],
        metavar="FILE",
        help="extra catalog YAML (GPUs/models) merged over the built-in one; repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON object")


def _one_line_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.exit(EXIT_USAGE, f"{_PROG}: error: {message}\n")


class _UsageError(Exception):
    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")


def run(args: argparse.Namespace) -> int:
    try:
        inputs, estimate = _estimate(args)
    except _UsageError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps({"inputs": inputs, "estimate": _jsonable(estimate)}, indent=2))
    else:
        print(_format(inputs, estimate))
    return 0


def _estimate(args: argparse.Namespace) -> tuple[dict[str, Any], ThroughputEstimate]:
    if args.tp < 1:
        raise _UsageError("--tp", f"must be >= 1, got {args.tp}")
    try:
        catalog = load_catalog(args.catalog)
    except CatalogError as exc:
        raise _UsageError("--catalog", str(exc)) from None
    try:
        model = catalog.model(args.model)
    except CatalogError as exc:
        raise _UsageError("--model", _strip_field(str(exc))) from None
    try:
        gpu = catalog.gpu(args.gpu)
    except CatalogError as exc:
        raise _UsageError("--gpu", _strip_field(str(exc))) from None
    try:
        prec = precision(args.precision)
    except CatalogError as exc:
        raise _UsageError("--precision", _strip_field(str(exc))) from None
    deployment = Deployment(model=model, gpu=gpu, precision=prec, tp=args.tp)
    try:
        estimate = saturated_throughput(
            CostModel(deployment),
            args.isl,
            args.osl,
            block_size=args.block_size,
            max_num_seqs=args.max_num_seqs,
            max_num_batched_tokens=args.max_num_batched_tokens,
            kv_reservation=KvReservation(args.kv_reservation),
        )
    except ThroughputInputError as exc:
        raise _UsageError(_FLAGS.get(exc.field, exc.field), exc.message) from None
    inputs = {
        "model": model.name,
        "gpu": gpu.name,
        "tp": args.tp,
        "precision": args.precision.strip().lower(),
        "weights_dtype": prec.weights.value,
        "kv_cache_dtype": prec.kv_cache.value,
        "isl": args.isl,
        "osl": args.osl,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "block_size": args.block_size,
        "kv_reservation": args.kv_reservation,
    }
    return inputs, estimate


def _strip_field(message: str) -> str:
    """'model: unknown ...' -> 'unknown ...' (the flag replaces the field name)."""
    head, sep, rest = message.partition(": ")
    return rest if sep and " " not in head else message


def _jsonable(estimate: ThroughputEstimate) -> dict[str, Any]:
    out = dataclasses.asdict(estimate)
    out["bound"] = estimate.bound.value
    out["kv_reservation"] = estimate.kv_reservation.value
    return out


def _format(inputs: dict[str, Any], e: ThroughputEstimate) -> str:
    limits = (
        f"kv_capacity {e.max_num_seqs_by_kv}, max_num_seqs {e.max_num_seqs}, "
        f"max_num_batched_tokens {e.max_num_seqs_by_token_budget}"
    )
    kind = "compute" if e.is_compute_bound else "memory"
    lines = [
        f"{inputs['model']} on {e.num_gpus} x {inputs['gpu']} (tp={inputs['tp']}, "
        f"{inputs['precision']}), ISL {inputs['isl']} / OSL {inputs['osl']}, "
        "offline saturation",
        f"  output tokens/s per GPU  {e.output_tokens_per_s_per_gpu:12,.0f}",
        f"  output tokens/s (all)    {e.output_tokens_per_s:12,.0f}",
        f"  total tokens/s per GPU   {e.total_tokens_per_s_per_gpu:12,.0f}",
        f"  total tokens/s (all)     {e.total_tokens_per_s:12,.0f}",
        f"  requests/s               {e.requests_per_s:12,.2f}",
        f"  batch size               {e.num_seqs:12,d}  (bound: {e.bound.value})",
        f"  request limits           {limits}",
        f"  KV capacity              {e.kv_capacity_tokens:,} tokens = {e.kv_capacity_blocks:,} "
        f"blocks of {e.block_size}; {e.kv_blocks_per_seq} blocks per request "
        f"({e.kv_reservation.value})",
        f"  tokens per step          {e.num_decode_tokens_per_step:,} decode + "
        f"{e.num_prefill_tokens_per_step:,} prefill",
        f"  step time                {1e3 * e.step_time_s:12,.2f} ms  ({kind}-bound: compute "
        f"{1e3 * e.compute_s:.2f} ms, memory {1e3 * e.memory_s:.2f} ms, comm "
        f"{1e3 * e.comm_s:.2f} ms, overhead {1e3 * e.overhead_s:.2f} ms)",
        f"  TPOT at this batch       {1e3 * e.tpot_s:12,.2f} ms",
    ]
    return "\n".join(lines)
