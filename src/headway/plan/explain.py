"""Say what limits one configuration at a given load, in plain words with the numbers.

`headway plan explain --model M --gpu G --precision P --tp T --replicas N --workload W
--rate R [--slo ...]` simulates the fleet once (`headway.cluster`) and reads the cost
model (`headway.core.costmodel`, `headway.core.throughput`) at the operating point the
simulation reached, then names the limit:

* queueing: the offered load is at or above what the replicas can do at saturation
  (utilisation >= 95% of the analytic saturated throughput), or TTFT p90 is over 5 x
  a request's unloaded TTFT: requests wait, TTFT grows with the queue (the engines'
  busy share is no sign: continuous batching steps whenever any request is in);
* KV capacity: requests were preempted, or the KV cache the running batch holds
  (mean running requests x mean context) fills >= 90% of it, or the mean batch is
  >= 90% of the requests that fit, so the batch cannot grow (checked before waiting
  in TTFT, which a full cache also causes);
* compute or HBM bandwidth: otherwise the step at the mean batch is priced by the
  roofline, and the larger of its compute and memory terms is the limit.

It also compares TTFT and TPOT with their unloaded values (one request alone), which
shows how much is waiting and batching rather than the hardware. Figures from the mean
prompt and output lengths are estimates; the simulated percentiles are measured.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass

from headway.core.catalog import Dtype
from headway.core.costmodel import CostModel, SeqWork
from headway.core.engine_factory import EngineSpecError, resolve_engine
from headway.core.throughput import ThroughputInputError, saturated_throughput
from headway.plan.capacity import (
    EXIT_USAGE,
    UsageError,
    add_scenario_arguments,
    limits_from_args,
    load_catalog_arg,
    one_line_errors,
    scenario_from_args,
)
from headway.plan.search import (
    Candidate,
    Probe,
    Scenario,
    Slo,
    engine_spec,
    fit_problem,
    probe_of,
    simulate,
)

QUEUEING_UTILISATION = 0.95
QUEUEING_TTFT_FACTOR = 5.0  # TTFT p90 this many times the unloaded TTFT: mostly waiting
KV_FULL_FRACTION = 0.9
LIMITS = ("queueing", "kv_capacity", "compute", "hbm_bandwidth")


@dataclass(frozen=True)
class Explanation:
    """What limits a configuration, with the figures behind it."""

    limit: str  # one of LIMITS
    lines: tuple[str, ...]  # plain-words findings, the verdict first
    figures: dict[str, float | int | None]
    is_slo_met: bool | None  # None: no SLO given


def unloaded_ttft_s(cost_model: CostModel, prompt_tokens: int, max_batched_tokens: int) -> float:
    """One prompt alone: its prefill in chunks of the token budget (first token with it)."""
    t, done = 0.0, 0
    while done < prompt_tokens:
        n = min(max_batched_tokens, prompt_tokens - done)
        t += cost_model.step_time_s([SeqWork(n, done)])
        done += n
    return t


def mean_step(num_seqs: int, isl: int, osl: int, prefix_hit_rate: float) -> list[SeqWork]:
    """The mean step of `core.throughput.step_work` with the prompt's cached share
    skipped: prefill computes only the uncached tail, after the cached prefix."""
    num_new = max(1, round(isl * (1.0 - prefix_hit_rate)))
    num_cached = isl - num_new
    num_decode = round(num_seqs * (osl - 1) / osl)
    num_prefill = round(num_seqs * num_new / osl)
    work = [SeqWork(1, isl + (osl + 1) // 2)] * num_decode
    num_whole, remainder = divmod(num_prefill, num_new)
    work.extend([SeqWork(num_new, num_cached)] * num_whole)
    if remainder:
        work.append(SeqWork(remainder, num_cached + (num_new - remainder) // 2))
    return work


def explain(
    cost_model: CostModel,
    scenario: Scenario,
    probe: Probe,
    slo: Slo,
    *,
    num_replicas: int,
    kv_capacity_tokens: int,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    block_size: int,
) -> Explanation:
    """The limit of the fleet that produced `probe` (see the module docstring)."""
    d = cost_model.deployment
    isl = max(1, round(scenario.mean_prompt_tokens))
    osl = max(1, round(scenario.mean_output_tokens))
    s = probe.summary
    offered = scenario.output_tokens_per_s / num_replicas
    try:
        sat = saturated_throughput(
            cost_model,
            isl,
            osl,
            block_size=block_size,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
        )
        sat_rate: float | None = sat.output_tokens_per_s
        sat_bound: str | None = sat.bound.value
    except ThroughputInputError:
        sat, sat_rate, sat_bound = None, None, None
    utilisation = offered / sat_rate if sat_rate else math.inf
    batch = max(1.0, probe.mean_decode_batch)
    context = isl + osl / 2
    kv_in_use = batch * context
    kv_fraction = kv_in_use / kv_capacity_tokens if kv_capacity_tokens else math.inf
    step = cost_model.step_cost(mean_step(max(1, round(batch)), isl, osl, probe.prefix_hit_rate))
    ttft0_ms = 1e3 * unloaded_ttft_s(cost_model, isl, max_num_batched_tokens)
    tpot0_ms = 1e3 * cost_model.step_time_s([SeqWork(1, round(context))])
    ttft_p90, tpot_p50 = float(s["p90_ttft_ms"]), float(s["median_tpot_ms"])
    misses = list(probe.misses)

    # Engines step whenever any request is in, so their busy share says little about
    # headroom; waiting shows in TTFT far above the unloaded prefill instead.
    is_waiting = ttft_p90 > QUEUEING_TTFT_FACTOR * ttft0_ms
    by_kv = sat.max_num_seqs_by_kv if sat is not None else None
    kv_hint = "fp8 KV, " if d.precision.kv_cache == Dtype.BF16 else ""
    is_kv_full = (
        probe.num_preemptions > 0
        or kv_fraction >= KV_FULL_FRACTION
        or (by_kv is not None and batch >= KV_FULL_FRACTION * by_kv)
    )
    if utilisation >= QUEUEING_UTILISATION or (is_waiting and not is_kv_full):
        limit = "queueing"
        verdict = (
            f"Queueing limits it: each replica is offered {offered:,.0f} output tokens/s, "
            f"{utilisation:.0%} of the {sat_rate or 0:,.0f} it can produce at saturation; "
            f"requests wait (TTFT p90 {ttft_p90:,.1f} ms against {ttft0_ms:,.1f} ms for a "
            "request alone). "
            "More replicas, or a faster configuration, are what helps."
        )
        if sat_bound == "kv_capacity" and sat is not None:
            verdict += (
                f" At saturation the batch is capped by KV capacity ({sat.num_seqs:,} "
                f"requests), so more KV room per replica ({kv_hint}larger TP or GPU) also helps."
            )
    elif is_kv_full:
        limit = "kv_capacity"
        verdict = (
            f"KV-cache capacity limits it: the running batch (~{batch:,.1f} requests of "
            f"~{context:,.0f} tokens) holds ~{kv_in_use:,.0f} of the {kv_capacity_tokens:,} "
            f"tokens a replica has ({kv_fraction:.0%}; about {by_kv or 0:,} such requests "
            f"fit), with {probe.num_preemptions} preemptions, so requests wait for room "
            f"(TTFT p90 {ttft_p90:,.1f} ms against {ttft0_ms:,.1f} ms alone). "
            f"{'FP8 KV, a' if kv_hint else 'A'} larger TP or GPU, or shorter contexts raise "
            "the batch that fits."
        )
    elif step.compute_s >= step.memory_s:
        limit = "compute"
        verdict = (
            f"Compute limits it: a step at the mean batch (~{batch:,.1f} decoding requests plus "
            f"prefill chunks, {step.num_tokens:,} tokens) spends {1e3 * step.compute_s:,.2f} ms "
            f"on math against {1e3 * step.memory_s:,.2f} ms reading HBM. Lower-precision "
            "tensor cores (fp8, fp4) or more GPUs per replica help; more HBM bandwidth does not."
        )
    else:
        limit = "hbm_bandwidth"
        verdict = (
            f"HBM bandwidth limits it: a step at the mean batch (~{batch:,.1f} decoding "
            f"requests, {step.num_tokens:,} tokens) reads weights and KV for "
            f"{1e3 * step.memory_s:,.2f} ms against {1e3 * step.compute_s:,.2f} ms of math. "
            "Smaller weights (fp8, fp4), a GPU with faster HBM, or a larger batch (more load "
            "per replica) use the hardware better."
        )
    lines = [
        verdict,
        f"Load: {scenario.request_rate:g} sessions/s, mean {isl:,} prompt and {osl:,} output "
        f"tokens per call: {scenario.output_tokens_per_s:,.0f} output tokens/s over "
        f"{num_replicas} replica{'s' if num_replicas > 1 else ''} ({offered:,.0f} each).",
        f"Saturation (analytic, one replica): {sat_rate or 0:,.0f} output tokens/s, batch "
        f"bound by {sat_bound}; utilisation {utilisation:.0%}.",
        f"Memory: weights {d.weight_bytes_per_gpu / 2**30:,.1f} GiB per GPU of "
        f"{d.gpu.hbm_bytes / 2**30:,.1f}; KV cache {kv_capacity_tokens:,} tokens per replica, "
        f"~{kv_fraction:.0%} in use at the mean batch; {probe.num_preemptions} preemptions.",
        f"Step at the mean batch: {1e3 * step.duration_s:,.2f} ms = compute "
        f"{1e3 * step.compute_s:,.2f} / memory {1e3 * step.memory_s:,.2f} (the larger of "
        f"each roofline pair counts) + comm {1e3 * step.comm_s:,.2f} + overhead "
        f"{1e3 * step.overhead_s:,.2f} ms.",
        f"TTFT p90 {ttft_p90:,.1f} ms against {ttft0_ms:,.1f} ms unloaded: "
        f"{max(0.0, ttft_p90 - ttft0_ms):,.1f} ms is waiting and sharing steps.",
        f"TPOT p50 {tpot_p50:,.2f} ms against {tpot0_ms:,.2f} ms for one request alone: "
        f"batching and prefill chunks add {max(0.0, tpot_p50 - tpot0_ms):,.2f} ms.",
        f"Engines busy {probe.mean_busy_fraction:.0%}; prefix-cache hits "
        f"{probe.prefix_hit_rate:.0%}; {s['failed']} failed requests.",
    ]
    is_slo_met: bool | None = None
    if slo.targets:
        is_slo_met = not misses
        lines.append(
            f"SLO ({slo.text()}): met."
            if is_slo_met
            else f"SLO ({slo.text()}): missed: {'; '.join(misses)}."
        )
    figures: dict[str, float | int | None] = {
        "offered_output_tokens_per_s_per_replica": offered,
        "saturated_output_tokens_per_s_per_replica": sat_rate,
        "utilisation": utilisation if math.isfinite(utilisation) else None,
        "mean_busy_fraction": probe.mean_busy_fraction,
        "mean_decode_batch": probe.mean_decode_batch,
        "kv_capacity_tokens": kv_capacity_tokens,
        "kv_in_use_fraction": kv_fraction if math.isfinite(kv_fraction) else None,
        "num_preemptions": probe.num_preemptions,
        "step_ms": 1e3 * step.duration_s,
        "step_compute_ms": 1e3 * step.compute_s,
        "step_memory_ms": 1e3 * step.memory_s,
        "step_comm_ms": 1e3 * step.comm_s,
        "unloaded_ttft_ms": ttft0_ms,
        "unloaded_tpot_ms": tpot0_ms,
        "p90_ttft_ms": ttft_p90,
        "median_tpot_ms": tpot_p50,
        "p90_tpot_ms": float(s["p90_tpot_ms"]),
        "prefix_hit_rate": probe.prefix_hit_rate,
    }
    return Explanation(limit, tuple(lines), figures, is_slo_met)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (__doc__ or "").split("\n\n")[0]
    one_line_errors(p)
    add_scenario_arguments(p, is_slo_required=False)
    c = p.add_argument_group("configuration")
    c.add_argument("--gpu", default="h100", help="catalog GPU")
    c.add_argument("--precision", default="bf16")
    c.add_argument("--tp", type=int, default=1)
    c.add_argument("--replicas", type=int, default=1)
    c.add_argument("--profile", default="round-robin", help="routing preset")
    p.add_argument("--json", action="store_true", help="print a JSON object")


def run(args: argparse.Namespace) -> int:
    prog = "headway plan explain"
    try:
        catalog = load_catalog_arg(args)
        scenario, slo = scenario_from_args(args, catalog)
        for name in ("tp", "replicas"):
            if getattr(args, name) < 1:
                raise UsageError(f"--{name}: must be >= 1")
        limits = limits_from_args(args)
        candidate = Candidate(args.gpu, args.precision, args.tp, args.profile)
        spec = engine_spec(args.model, candidate, limits)
        try:
            resolved = resolve_engine(spec, catalog)
        except EngineSpecError as exc:
            flag = {"model": "--model", "gpu": "--gpu", "precision": "--precision"}
            message = str(exc).removeprefix(f"{exc.field}: ")
            raise UsageError(f"{flag.get(exc.field, '--' + exc.field)}: {message}") from None
        problem = fit_problem(resolved, scenario)
        if problem is not None:
            raise UsageError(f"--workload: {problem}")
        try:
            result = simulate(
                scenario, catalog, spec, args.profile, args.replicas, limits, args.seed
            )
        except ValueError as exc:
            raise UsageError(f"--profile: {exc}") from None
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    probe = probe_of(result, args.replicas, slo)
    sched = resolved.config.scheduler
    e = explain(
        resolved.cost_model,
        scenario,
        probe,
        slo,
        num_replicas=args.replicas,
        kv_capacity_tokens=resolved.capacity_tokens,
        max_num_seqs=sched.max_num_seqs,
        max_num_batched_tokens=sched.max_num_batched_tokens,
        block_size=args.block_size,
    )
    if args.json:
        print(json.dumps(asdict(e), indent=2))
        return 0
    d = resolved.cost_model.deployment
    print(
        f"{d.model.name} on {args.replicas} x {args.tp} {d.gpu.name} ({args.precision}, "
        f"{args.profile} routing) at {args.rate:g} sessions/s of {args.workload}"
    )
    for i, line in enumerate(e.lines):
        print(("* " if i else "") + line)
    return 0
