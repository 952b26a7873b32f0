"""What-ifs: speculative decoding, prefill/decode disaggregation, quantization, routing.

`headway plan whatif spec-decode|pd|quant|router ...`. The first three are analytic
(the cost model, `headway.core.tokenomics`); `router` runs the capacity search once per
routing profile with the cluster simulation.

* spec-decode: expected tokens per target step E = (1 - a^(k+1)) / (1 - a) from the
  acceptance probability a (or a measured acceptance length, which is E), the ideal
  speed-up E / (k c + 1), the speed-up at each batch size with the verify step priced
  by the cost model, and the batch size above which speculation stops paying.
* pd: a prefill pool and a decode pool against one aggregated pool, per request rate:
  prefill replicas serve prompts at the token budget, decode replicas run the largest
  batch that meets the TPOT target (and fits the KV cache), the prompt's KV cache
  crosses a link of the given bandwidth in isl x KV bytes per token / bandwidth. The
  analytic answer ignores queueing and the interference chunked prefill causes in the
  aggregated pool beyond what the mean step prices. With `--simulate N`, the cluster
  simulation (P/D pools with the KV hand-off, headway.cluster) runs the workload
  (fixed ISL/OSL, Poisson arrivals at the rate) on every split P + D = N and on N
  aggregated replicas, and picks the best P:D by simulation: the lowest TTFT p90 among
  the splits that meet the TPOT target on p90 (without a target: the lowest TTFT p90
  among those that keep up, i.e. whose TPOT p90 is within 10% of the best).
* quant: weight and KV-cache precision side by side: memory, KV capacity, the batch
  that fits, saturated throughput, unloaded TPOT. Accuracy is not modelled.
* router: the fewest replicas per routing profile at the same SLO, and the GPUs and
  $/month the better one saves.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from headway.core import tokenomics
from headway.core.catalog import CatalogError, precision
from headway.core.costmodel import CostModel, Deployment, SeqWork
from headway.core.scheduler import vllm_default_limits
from headway.core.throughput import KvReservation as _Reservation
from headway.core.throughput import (
    ThroughputInputError,
    kv_blocks_per_seq,
    saturated_throughput,
    step_work,
)
from headway.plan.capacity import (
    EXIT_USAGE,
    Prices,
    UsageError,
    add_price_arguments,
    add_scenario_arguments,
    figures,
    limits_from_args,
    load_catalog_arg,
    one_line_errors,
    prices_from_args,
    scenario_from_args,
    split_list,
)
from headway.plan.search import Candidate, Outcome, search

DEFAULT_LINK_GB_S = 50.0  # one 400 Gb/s NIC per GPU, a common RDMA fabric


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (__doc__ or "").split("\n\n")[0]
    sub = parser.add_subparsers(dest="whatif", metavar="WHATIF", required=True)
    for name, add, run, text in (
        ("spec-decode", _add_spec, _run_spec, "speculative decoding: E, speed-up, break-even"),
        ("pd", _add_pd, _run_pd, "prefill/decode pools vs aggregated, best P:D ratio"),
        ("quant", _add_quant, _run_quant, "weights and KV precision side by side"),
        ("router", _add_router, _run_router, "GPUs and $/month saved by a routing profile"),
    ):
        p = sub.add_parser(name, help=text)
        one_line_errors(p)
        add(p)
        p.set_defaults(_whatif_run=run)


def run(args: argparse.Namespace) -> int:
    prog = f"headway plan whatif {args.whatif}"
    try:
        result: dict[str, Any] = args._whatif_run(args)
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(result["text"]))
    return 0


# -- shared -------------------------------------------------------------------------
def _add_deployment(p: argparse.ArgumentParser, *, with_precision: bool = True) -> None:
    p.add_argument("--model", required=True, help="catalog model")
    p.add_argument("--gpu", default="h100", help="catalog GPU")
    if with_precision:
        p.add_argument("--precision", default="bf16")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--catalog", action="append", default=[], metavar="FILE")
    p.add_argument("--json", action="store_true", help="print a JSON object")


def _deployment(args: argparse.Namespace, precision_name: str | None = None) -> Deployment:
    catalog = load_catalog_arg(args)
    if args.tp < 1:
        raise UsageError(f"--tp: must be >= 1, got {args.tp}")
    try:
        model = catalog.model(args.model)
    except CatalogError as exc:
        raise UsageError(f"--model: {exc}") from None
    try:
        gpu = catalog.gpu(args.gpu)
    except CatalogError as exc:
        raise UsageError(f"--gpu: {exc}") from None
    name = precision_name if precision_name is not None else args.precision
    try:
        prec = precision(name)
    except CatalogError as exc:
        raise UsageError(f"--precision: {exc}") from None
    return Deployment(model, gpu, prec, args.tp)


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{name.replace('_', '-')}: must be > 0, got {value}")


def _largest_batch(limit: int, step_s: Callable[[int], float], max_step_s: float | None) -> int:
    """The largest batch in [1, limit] whose step fits `max_step_s` (0 if none does);
    step time grows with the batch, so by bisection."""
    if max_step_s is None:
        return limit
    if step_s(1) > max_step_s:
        return 0
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if step_s(mid) <= max_step_s:
            lo = mid
        else:
            hi = mid - 1
    return lo


# -- speculative decoding -------------------------------------------------------------
def _add_spec(p: argparse.ArgumentParser) -> None:
    _add_deployment(p)
    p.add_argument("--k", type=int, default=4, help="draft tokens per step (default 4)")
    a = p.add_mutually_exclusive_group(required=True)
    a.add_argument("--acceptance-prob", type=float, help="per-token acceptance probability a")
    a.add_argument(
        "--acceptance-length", type=float, help="measured mean acceptance length (vLLM's), = E"
    )
    p.add_argument(
        "--draft-cost", type=float, default=0.05, help="draft step / target step (default 0.05)"
    )
    p.add_argument("--context", type=int, default=1024, help="tokens of context per sequence")
    p.add_argument("--max-batch", type=int, default=1024, help="largest batch to consider")


def _run_spec(args: argparse.Namespace) -> dict[str, Any]:
    d = _deployment(args)
    if args.k < 1:
        raise UsageError(f"--k: must be >= 1, got {args.k}")
    if args.context < 1 or args.max_batch < 1:
        raise UsageError("--context and --max-batch: must be >= 1")
    if not (math.isfinite(args.draft_cost) and args.draft_cost >= 0):
        raise UsageError(f"--draft-cost: must be >= 0, got {args.draft_cost}")
    try:
        if args.acceptance_prob is not None:
            a = args.acceptance_prob
            e = tokenomics.spec_decode_expected_tokens(a, args.k)
        else:
            a = tokenomics.acceptance_prob_from_length(args.acceptance_length, args.k)
            e = args.acceptance_length
    except ValueError as exc:
        flag = "--acceptance-prob" if args.acceptance_prob is not None else "--acceptance-length"
        raise UsageError(f"{flag}: {exc}") from None
    cm = CostModel(d)
    ideal = tokenomics.spec_decode_speedup(e, args.k, args.draft_cost)
    batches = sorted({1 << i for i in range(args.max_batch.bit_length())} | {args.max_batch})
    rows = [
        tokenomics.spec_decode_at_batch(cm, b, args.context, e, args.k, args.draft_cost)
        for b in batches
    ]
    break_even = tokenomics.spec_decode_break_even_batch(
        cm, args.context, e, args.k, args.draft_cost, args.max_batch
    )
    text = [
        f"{d.model.name} on {d.tp} x {d.gpu.name} ({d.precision.name}), k = {args.k} draft "
        f"tokens, draft cost c = {args.draft_cost:g}, context {args.context:,} tokens",
        f"  acceptance probability a      {a:.4f}",
        f"  tokens per target step E      {e:.4f}  (= (1 - a^(k+1)) / (1 - a))",
        f"  ideal speed-up E / (k c + 1)  {ideal:.3f}",
        "  batch   decode step ms   verify step ms   draft ms   speed-up",
    ]
    text += [
        f"  {r.num_seqs:5d}   {1e3 * r.decode_step_s:14.3f}   {1e3 * r.verify_step_s:14.3f}"
        f"   {1e3 * r.draft_s:8.3f}   {r.speedup:8.3f}"
        for r in rows
    ]
    text.append(
        f"  stops paying at batch {break_even:,} (the verify step of k + 1 tokens per "
        "sequence turns compute-bound)"
        if break_even is not None
        else f"  pays up to batch {args.max_batch:,} (KV reads, shared by the verified tokens, "
        "dominate the step)"
    )
    return {
        "acceptance_prob": a,
        "expected_tokens_per_step": e,
        "ideal_speedup": ideal,
        "by_batch": [asdict(r) for r in rows],
        "break_even_batch": break_even,
        "text": text,
    }


# -- prefill/decode disaggregation ---------------------------------------------------
def _add_pd(p: argparse.ArgumentParser) -> None:
    _add_deployment(p)
    p.add_argument("--isl", type=int, required=True, help="prompt tokens per request")
    p.add_argument("--osl", type=int, required=True, help="output tokens per request")
    p.add_argument("--rate", type=float, required=True, help="requests/s")
    p.add_argument("--tpot-ms", type=float, help="TPOT target for the decode batches")
    p.add_argument(
        "--link-gb-s",
        type=float,
        default=DEFAULT_LINK_GB_S,
        help=f"KV transfer bandwidth per prefill replica, GB/s (default {DEFAULT_LINK_GB_S:g})",
    )
    p.add_argument("--max-num-seqs", type=int, help="default: vLLM's by GPU memory")
    p.add_argument("--max-num-batched-tokens", type=int, help="default: vLLM's by GPU memory")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument(
        "--simulate",
        type=int,
        metavar="N",
        help="also simulate every P + D = N split and N aggregated replicas (N >= 2)",
    )
    p.add_argument(
        "--sim-requests", type=int, default=300, help="requests per simulation (default 300)"
    )
    p.add_argument("--link-latency-ms", type=float, default=0.0, help="per KV transfer")
    p.add_argument("--seed", type=int, default=0)


@dataclass(frozen=True)
class PdPlan:
    """Disaggregated and aggregated pools for one rate (requests/s per replica)."""

    prefill_requests_per_s: float
    decode_requests_per_s: float
    aggregated_requests_per_s: float
    decode_batch: int
    aggregated_batch: int
    prefill_s: float  # one prompt alone
    kv_transfer_s: float
    num_prefill_replicas: int
    num_decode_replicas: int
    num_aggregated_replicas: int
    best_ratio: tuple[int, int]  # prefill : decode replicas for a balanced pool


def pd_plan(
    cm: CostModel,
    isl: int,
    osl: int,
    rate: float,
    *,
    tpot_s: float | None,
    link_bytes_per_s: float,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    block_size: int,
) -> PdPlan:
    """The analytic P/D comparison (see the module docstring)."""
    d = cm.deployment
    # Prefill: whole prompts packed into the token budget (chunks of it for long ones).
    if isl <= max_num_batched_tokens:
        n = max_num_batched_tokens // isl
        prefill_rps = n / cm.step_time_s([SeqWork(isl, 0)] * n)
    else:
        t, done = 0.0, 0
        while done < isl:
            c = min(max_num_batched_tokens, isl - done)
            t += cm.step_time_s([SeqWork(c, done)])
            done += c
        prefill_rps = 1.0 / t
    prefill_alone_s = 0.0
    done = 0
    while done < isl:
        c = min(max_num_batched_tokens, isl - done)
        prefill_alone_s += cm.step_time_s([SeqWork(c, done)])
        done += c
    # Decode: B sequences at the mean context, as large as KV, max_num_seqs and TPOT allow.
    blocks = cm.kv_capacity_blocks(block_size)
    by_kv = blocks // kv_blocks_per_seq(isl, osl, block_size, _Reservation.AVERAGE)
    context = isl + (osl + 1) // 2
    limit = max(0, min(max_num_seqs, by_kv))

    def decode_step(b: int) -> float:
        return cm.step_time_s([SeqWork(1, context)] * b)

    b_dec = _largest_batch(limit, decode_step, tpot_s) if limit else 0
    decode_rps = b_dec / (decode_step(b_dec) * osl) if b_dec else 0.0

    # Aggregated: the mean step of continuous batching with prefill mixed in.
    by_budget = max(1, max_num_batched_tokens * osl // (isl + osl - 1))
    agg_limit = max(0, min(max_num_seqs, by_kv, by_budget))

    def agg_step(b: int) -> float:
        return cm.step_time_s(step_work(b, isl, osl))

    b_agg = _largest_batch(agg_limit, agg_step, tpot_s) if agg_limit else 0
    agg_rps = b_agg / (agg_step(b_agg) * osl) if b_agg else 0.0
    transfer_s = tokenomics.kv_transfer_time_s(
        isl, d.model.kv_bytes_per_token(d.precision.kv_cache), link_bytes_per_s
    )
    # A prefill replica also cannot hand off faster than its link moves KV.
    prefill_rps = min(prefill_rps, 1.0 / transfer_s) if transfer_s > 0 else prefill_rps

    def need(per_replica: float) -> int:
        return tokenomics.ceil_div(rate, per_replica) if per_replica > 0 else 0

    return PdPlan(
        prefill_requests_per_s=prefill_rps,
        decode_requests_per_s=decode_rps,
        aggregated_requests_per_s=agg_rps,
        decode_batch=b_dec,
        aggregated_batch=b_agg,
        prefill_s=prefill_alone_s,
        kv_transfer_s=transfer_s,
        num_prefill_replicas=need(prefill_rps),
        num_decode_replicas=need(decode_rps),
        num_aggregated_replicas=need(agg_rps),
        best_ratio=_ratio(prefill_rps, decode_rps),
    )


def _ratio(prefill_rps: float, decode_rps: float, max_total: int = 16) -> tuple[int, int]:
    """The small P:D whose pools are closest to balanced (the pool that idles least)."""
    if prefill_rps <= 0 or decode_rps <= 0:
        return (0, 0)
    best, best_waste = (1, 1), math.inf
    for p in range(1, max_total):
        for d in range(1, max_total - p + 1):
            served = min(p * prefill_rps, d * decode_rps)
            waste = (p + d) / served  # replicas per request/s served
            if waste < best_waste - 1e-12:
                best, best_waste = (p, d), waste
    return best


def _run_pd(args: argparse.Namespace) -> dict[str, Any]:
    d = _deployment(args)
    for name in ("isl", "osl", "block_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}: must be >= 1")
    _positive(args, "rate", "tpot_ms", "link_gb_s")
    cm = CostModel(d)
    if cm.kv_capacity_tokens() < 1:
        raise UsageError(
            f"--model: {d.model.name} does not fit on {d.tp} x {d.gpu.name} at {args.precision}"
        )
    default_tokens, default_seqs = vllm_default_limits(d.gpu.hbm_bytes)
    plan = pd_plan(
        cm,
        args.isl,
        args.osl,
        args.rate,
        tpot_s=None if args.tpot_ms is None else args.tpot_ms / 1e3,
        link_bytes_per_s=args.link_gb_s * 1e9,
        max_num_seqs=args.max_num_seqs or default_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens or default_tokens,
        block_size=args.block_size,
    )
    tp = d.tp
    pd_gpus = (plan.num_prefill_replicas + plan.num_decode_replicas) * tp
    agg_gpus = plan.num_aggregated_replicas * tp
    tpot = "" if args.tpot_ms is None else f", TPOT <= {args.tpot_ms:g} ms"
    text = [
        f"{d.model.name} on {tp} x {d.gpu.name} per replica ({d.precision.name}), ISL "
        f"{args.isl:,} / OSL {args.osl:,}, {args.rate:g} requests/s{tpot} (analytic)",
        f"  prefill replica     {plan.prefill_requests_per_s:10.2f} requests/s "
        f"(prompt alone {1e3 * plan.prefill_s:,.1f} ms)",
        f"  KV transfer         {1e3 * plan.kv_transfer_s:10.2f} ms per prompt over "
        f"{args.link_gb_s:g} GB/s (TTFT = prefill + transfer + queueing)",
        f"  decode replica      {plan.decode_requests_per_s:10.2f} requests/s (batch "
        f"{plan.decode_batch:,})",
        f"  aggregated replica  {plan.aggregated_requests_per_s:10.2f} requests/s (batch "
        f"{plan.aggregated_batch:,}, prefill mixed in)",
        f"  best P:D ratio      {plan.best_ratio[0]}:{plan.best_ratio[1]} (balanced pools)",
        f"  at {args.rate:g} requests/s: disaggregated {plan.num_prefill_replicas} P + "
        f"{plan.num_decode_replicas} D = {pd_gpus} GPUs; aggregated "
        f"{plan.num_aggregated_replicas} replicas = {agg_gpus} GPUs",
    ]
    if plan.decode_batch == 0:
        text.append("  no decode batch meets the TPOT target on this configuration")
    out: dict[str, Any] = {
        **asdict(plan),
        "num_pd_gpus": pd_gpus,
        "num_aggregated_gpus": agg_gpus,
    }
    if args.simulate is not None:
        sim = _simulate_pd(args)
        out["simulated"] = sim
        text.extend(sim.pop("text"))
    out["text"] = text
    return out


def _simulate_pd(args: argparse.Namespace) -> dict[str, Any]:
    """Every P + D = N split and N aggregated replicas in the cluster simulation."""
    import numpy as np

    from headway.cluster.simulation import (
        ClusterConfig,
        ClusterConfigError,
        ClusterSimulation,
        ReplicaGroup,
        ReplicaRole,
    )
    from headway.core.arrivals import arrival_offsets_s
    from headway.core.engine_factory import EngineSpec
    from headway.core.serving_metrics import summarize
    from headway.core.workloads import build_workload
    from headway.resources.tokenizer import default_tokenizer

    n = args.simulate
    if n < 2:
        raise UsageError(f"--simulate: needs >= 2 replicas (one of each pool), got {n}")
    if args.sim_requests < 1:
        raise UsageError(f"--sim-requests: must be >= 1, got {args.sim_requests}")
    if not (math.isfinite(args.link_latency_ms) and args.link_latency_ms >= 0):
        raise UsageError(f"--link-latency-ms: must be >= 0, got {args.link_latency_ms}")
    catalog = load_catalog_arg(args)
    tokenizer = default_tokenizer()
    workload = build_workload(
        "synthetic", {"input_len": args.isl, "output_len": args.osl}, tokenizer
    )
    sessions = list(workload.sessions(args.sim_requests, args.seed))
    offsets = arrival_offsets_s(len(sessions), args.rate, 1.0, np.random.default_rng(args.seed))
    arrivals = list(zip(offsets.tolist(), sessions, strict=True))
    spec = EngineSpec(
        model=args.model,
        gpu=args.gpu,
        precision=args.precision,
        tp=args.tp,
        block_size=args.block_size,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )
    layouts: list[tuple[str, tuple[ReplicaGroup, ...]]] = [
        (
            f"{p}:{n - p}",
            (
                ReplicaGroup(spec, p, ReplicaRole.PREFILL),
                ReplicaGroup(spec, n - p, ReplicaRole.DECODE),
            ),
        )
        for p in range(1, n)
    ]
    layouts.append((f"{n} aggregated", (ReplicaGroup(spec, n),)))
    rows: list[dict[str, Any]] = []
    for label, groups in layouts:
        try:
            config = ClusterConfig(
                groups=groups,
                routing={"preset": "least-request"},
                seed=args.seed,
                kv_link_bytes_per_s=args.link_gb_s * 1e9,
                kv_link_latency_s=args.link_latency_ms / 1e3,
            )
            run = ClusterSimulation(config, catalog, tokenizer, tokenizer.output_vocab()).run(
                arrivals
            )
        except (ClusterConfigError, ValueError) as exc:
            raise UsageError(f"--simulate: {exc}") from None
        summary = summarize(run.records, run.duration_s)
        rows.append(
            {
                "layout": label,
                "num_prefill": groups[0].count if len(groups) == 2 else 0,
                "num_decode": groups[1].count if len(groups) == 2 else 0,
                "ttft_p90_ms": summary["p90_ttft_ms"],
                "tpot_p90_ms": summary["p90_tpot_ms"],
                "output_tokens_per_s": summary["output_throughput"],
                "failed": summary["failed"],
                "mean_kv_transfer_ms": 1e3 * run.mean_kv_transfer_s,
            }
        )
    splits = [r for r in rows if r["num_prefill"]]
    if args.tpot_ms is not None:
        ok = [
            r for r in splits if r["tpot_p90_ms"] is not None and r["tpot_p90_ms"] <= args.tpot_ms
        ]
    else:
        best_tpot = min(r["tpot_p90_ms"] for r in splits if r["tpot_p90_ms"] is not None)
        ok = [
            r
            for r in splits
            if r["tpot_p90_ms"] is not None and r["tpot_p90_ms"] <= 1.1 * best_tpot
        ]
    best = min(ok, key=lambda r: r["ttft_p90_ms"]) if ok else None
    text = [
        f"  simulated ({args.sim_requests} requests at {args.rate:g}/s, {n} replicas, "
        "least-request routing):",
        f"    {'layout':<14}{'TTFT p90 ms':>12}{'TPOT p90 ms':>12}{'out tok/s':>11}"
        f"{'KV xfer ms':>11}",
    ]
    for r in rows:
        text.append(
            f"    {r['layout']:<14}{_ms(r['ttft_p90_ms']):>12}{_ms(r['tpot_p90_ms']):>12}"
            f"{r['output_tokens_per_s']:>11.0f}{r['mean_kv_transfer_ms']:>11.2f}"
        )
    if best is not None:
        text.append(f"  best P:D by simulation: {best['layout']}")
    else:
        text.append("  no P:D split meets the TPOT target in simulation")
    return {
        "num_replicas": n,
        "rows": rows,
        "best_layout": best["layout"] if best is not None else None,
        "best_ratio": [best["num_prefill"], best["num_decode"]] if best is not None else None,
        "text": text,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# -- quantization ---------------------------------------------------------------------
def _add_quant(p: argparse.ArgumentParser) -> None:
    _add_deployment(p, with_precision=False)
    p.add_argument(
        "--precisions",
        default="bf16,fp8-kvbf16,fp8,fp4",
        help="presets to compare (default bf16,fp8-kvbf16,fp8,fp4)",
    )
    p.add_argument("--isl", type=int, default=1024)
    p.add_argument("--osl", type=int, default=256)
    p.add_argument("--max-num-seqs", type=int, help="default: vLLM's by GPU memory")
    p.add_argument("--max-num-batched-tokens", type=int, help="default: vLLM's by GPU memory")


def _run_quant(args: argparse.Namespace) -> dict[str, Any]:
    if args.isl < 1 or args.osl < 1:
        raise UsageError("--isl and --osl: must be >= 1")
    rows: list[dict[str, Any]] = []
    where = ""
    for name in split_list(args.precisions, "--precisions"):
        try:
            d = _deployment(args, name)
        except UsageError as exc:
            raise UsageError(str(exc).replace("--precision:", "--precisions:")) from None
        cm = CostModel(d)
        where = f"{d.model.name} on {d.tp} x {d.gpu.name}"
        default_tokens, default_seqs = vllm_default_limits(d.gpu.hbm_bytes)
        row: dict[str, Any] = {
            "precision": name,
            "weights": d.precision.weights.value,
            "kv_cache": d.precision.kv_cache.value,
            "weight_gib_per_gpu": d.weight_bytes_per_gpu / 2**30,
            "kv_capacity_tokens": cm.kv_capacity_tokens(),
            "fits": cm.kv_capacity_tokens() > 0,
        }
        if row["fits"]:
            context = args.isl + (args.osl + 1) // 2
            row["unloaded_tpot_ms"] = 1e3 * cm.step_time_s([SeqWork(1, context)])
            try:
                est = saturated_throughput(
                    cm,
                    args.isl,
                    args.osl,
                    max_num_seqs=args.max_num_seqs or default_seqs,
                    max_num_batched_tokens=args.max_num_batched_tokens or default_tokens,
                )
                row["max_batch_by_kv"] = est.max_num_seqs_by_kv
                row["saturated_output_tokens_per_s_per_gpu"] = est.output_tokens_per_s_per_gpu
            except ThroughputInputError as exc:
                row["fits"] = False
                row["reason"] = exc.message
        else:
            row["reason"] = "weights leave no room for the KV cache"
        rows.append(row)
    base = next((r for r in rows if r["fits"]), None)
    text = [
        f"{where}, ISL {args.isl:,} / OSL {args.osl:,} (accuracy is not modelled)",
        "  precision      weights GiB/GPU   KV tokens   batch by KV   sat. out tok/s/GPU   "
        "vs first   TPOT@1 ms",
    ]
    for r in rows:
        if not r["fits"]:
            text.append(
                f"  {r['precision']:<13} {r['weight_gib_per_gpu']:15.1f}   does not fit: "
                f"{r['reason']}"
            )
            continue
        assert base is not None
        rel = (
            r["saturated_output_tokens_per_s_per_gpu"]
            / base["saturated_output_tokens_per_s_per_gpu"]
        )
        text.append(
            f"  {r['precision']:<13} {r['weight_gib_per_gpu']:15.1f}   "
            f"{r['kv_capacity_tokens']:9,}   {r['max_batch_by_kv']:11,}   "
            f"{r['saturated_output_tokens_per_s_per_gpu']:18,.0f}   {rel:7.2f}x   "
            f"{r['unloaded_tpot_ms']:9.2f}"
        )
    return {"precisions": rows, "text": text}


# -- routing --------------------------------------------------------------------------
def _add_router(p: argparse.ArgumentParser) -> None:
    add_scenario_arguments(p)
    p.add_argument("--gpu", default="h100", help="catalog GPU")
    p.add_argument("--precision", default="bf16")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument(
        "--profiles",
        default="round-robin,kv-aware",
        help="routing presets; the first is the baseline (default round-robin,kv-aware)",
    )
    p.add_argument("--max-replicas", type=int, default=64)
    add_price_arguments(p)
    p.add_argument("--json", action="store_true", help="print a JSON object")


def router_savings(
    outcomes: list[Outcome], prices: Prices
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows per profile (GPUs, $/month, saved against the first) and the text."""
    base = outcomes[0]
    base_f = figures(base, prices)
    rows, text = [], []
    for o in outcomes:
        f = figures(o, prices)
        row: dict[str, Any] = {
            "profile": o.candidate.profile,
            "num_replicas": o.num_replicas,
            "num_gpus": o.num_gpus,
            "reason": o.reason,
            "usd_per_month": f.usd_per_month if f else None,
            "prefix_hit_rate": o.best.prefix_hit_rate if o.best else None,
        }
        if f is not None and base_f is not None and o is not base:
            row["gpus_saved"] = base_f.num_gpus - f.num_gpus
            if f.usd_per_month is not None and base_f.usd_per_month is not None:
                row["usd_per_month_saved"] = base_f.usd_per_month - f.usd_per_month
        rows.append(row)
        if f is None:
            text.append(f"  {o.candidate.profile:<16} infeasible: {o.reason}")
            continue
        saved = ""
        if "gpus_saved" in row:
            usd = row.get("usd_per_month_saved")
            saved = f"; saves {row['gpus_saved']} GPUs" + (
                f" = ${usd:,.0f}/month" if usd is not None else ""
            )
        hits = row["prefix_hit_rate"] or 0.0
        month = "-" if f.usd_per_month is None else f"${f.usd_per_month:,.0f}/month"
        text.append(
            f"  {o.candidate.profile:<16} {f.num_replicas} replicas = {f.num_gpus} GPUs, "
            f"{month}, prefix-cache hits {hits:.0%}{saved}"
        )
    return rows, text


def _run_router(args: argparse.Namespace) -> dict[str, Any]:
    from headway.plan.capacity import candidates_from_args

    catalog = load_catalog_arg(args)
    scenario, slo = scenario_from_args(args, catalog)
    prices = prices_from_args(args, catalog)
    args.gpus, args.precisions = args.gpu, args.precision
    args.tp = str(args.tp)
    candidates: list[Candidate] = candidates_from_args(args, catalog)
    if args.max_replicas < 1:
        raise UsageError("--max-replicas: must be >= 1")
    outcomes = [
        search(
            args.model,
            c,
            scenario,
            catalog,
            slo,
            limits=limits_from_args(args),
            max_replicas=args.max_replicas,
            seed=args.seed,
        )
        for c in candidates
    ]
    rows, lines = router_savings(outcomes, prices)
    c = candidates[0]
    head = (
        f"{args.model} on {c.gpu} ({c.precision}, tp {c.tp}) at {args.rate:g} sessions/s of "
        f"{args.workload}, {slo.text()}"
    )
    return {"profiles": rows, "text": [head, *lines]}
