"""The capacity search: the fewest replicas of one configuration that meet percentile
SLOs at a request rate, found with the cluster simulation.

A *configuration* is a GPU type, a precision, a tensor-parallel degree and a routing
profile. For each one:

1. The engine is sized on its GPU (`core.engine_factory`); a model that leaves no room
   for the KV cache, or a request longer than the cache or the context, makes the
   configuration infeasible with that reason.
2. The analytic saturated throughput (`core.throughput`, mean prompt and output
   lengths, no prefix caching) bounds the replica count from below:
   n0 = ceil(offered output tokens/s / saturated output tokens/s per replica).
3. The simulation runs the same arrivals (same sessions, same seed) at n0 replicas. If
   the SLOs are met it tries n0 - 1 (prefix caching can beat the analytic bound), and
   bisects down when that passes too; if not, the count doubles until they are met
   (or `max_replicas` is passed: infeasible), then bisects. Every count is simulated
   at most once.

Feasible = every SLO percentile met (`summary[f"{stat}_{metric}_ms"] <= limit`) and
no failed request. Bisection assumes feasibility does not get lost when a replica is
added; that holds for the loads and routers here in practice, not as a theorem
(routing noise can flip a borderline count), so the result is "the smallest count
found", with the probes kept for inspection.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from headway.cluster.simulation import (
    ClusterConfig,
    ClusterConfigError,
    ClusterRun,
    ClusterSimulation,
    ReplicaGroup,
)
from headway.core.arrivals import arrival_offsets_s
from headway.core.catalog import Catalog
from headway.core.engine_factory import EngineSpec, EngineSpecError, ResolvedEngine, resolve_engine
from headway.core.serving_metrics import GoodputSlo, summarize
from headway.core.throughput import ThroughputInputError, saturated_throughput
from headway.core.tokenizer import Tokenizer
from headway.core.workloads import Session, Workload

SLO_METRICS = ("ttft", "tpot", "itl", "e2el")
SLO_STATS = {"p50": "median", "median": "median", "mean": "mean", "p90": "p90"}
SLO_STATS.update({"p95": "p95", "p99": "p99"})


@dataclass(frozen=True)
class SloTarget:
    """One percentile target, e.g. ttft_p90 <= 500 ms."""

    metric: str  # ttft | tpot | itl | e2el
    stat: str  # median | mean | p90 | p95 | p99 (the summary's prefixes)
    limit_ms: float

    @property
    def name(self) -> str:
        return f"{self.metric}_{'p50' if self.stat == 'median' else self.stat}"

    @property
    def summary_key(self) -> str:
        return f"{self.stat}_{self.metric}_ms"


@dataclass(frozen=True)
class Slo:
    """Percentile targets, all of which a feasible configuration meets."""

    targets: tuple[SloTarget, ...]

    def goodput(self) -> GoodputSlo:
        """Per-request limits for goodput: each metric's tightest limit (a request is
        useful when it meets them; ITL has no per-request form and is left out)."""
        limits: dict[str, float] = {}
        for t in self.targets:
            if t.metric in ("ttft", "tpot", "e2el"):
                key = f"{t.metric}_ms"
                limits[key] = min(limits.get(key, math.inf), t.limit_ms)
        return GoodputSlo(**limits)

    def misses(self, summary: Mapping[str, Any]) -> list[str]:
        """The targets `summary` misses, as 'ttft_p90 812 ms > 500 ms'."""
        out = []
        for t in self.targets:
            value = float(summary[t.summary_key])
            if value > t.limit_ms:
                out.append(f"{t.name} {value:,.1f} ms > {t.limit_ms:g} ms")
        return out

    def text(self) -> str:
        return ", ".join(f"{t.name} <= {t.limit_ms:g} ms" for t in self.targets)


def parse_slo(text: str) -> Slo:
    """`ttft_p90:500,tpot_p90:50` -> Slo; ValueError naming the bad item."""
    targets = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, sep, raw = item.partition(":")
        metric, _, stat = name.strip().lower().partition("_")
        if not sep or metric not in SLO_METRICS or stat not in SLO_STATS:
            raise ValueError(
                f"expected METRIC_STAT:MS with METRIC one of {', '.join(SLO_METRICS)} and "
                f"STAT one of {', '.join(SLO_STATS)}, got {item!r}"
            )
        try:
            ms = float(raw)
        except ValueError:
            raise ValueError(f"{name}: expected milliseconds, got {raw!r}") from None
        if not (math.isfinite(ms) and ms > 0):
            raise ValueError(f"{name}: must be > 0 ms, got {raw!r}")
        targets.append(SloTarget(metric, SLO_STATS[stat], ms))
    if not targets:
        raise ValueError("at least one target is needed, e.g. ttft_p90:500,tpot_p90:50")
    return Slo(tuple(targets))


@dataclass(frozen=True)
class Scenario:
    """The load every configuration is tried on: fixed arrivals of fixed sessions."""

    arrivals: tuple[tuple[float, Session], ...]
    request_rate: float
    tokenizer: Tokenizer
    vocab: tuple[int, ...]
    mean_prompt_tokens: float
    mean_output_tokens: float
    max_request_tokens: int  # the longest call's prompt + max_tokens
    output_tokens_per_s: float  # offered: output tokens of all calls / arrival span

    @property
    def num_sessions(self) -> int:
        return len(self.arrivals)


def build_scenario(
    workload: Workload,
    tokenizer: Tokenizer,
    vocab: Sequence[int],
    *,
    num_sessions: int,
    request_rate: float,
    burstiness: float,
    seed: int,
) -> Scenario:
    """`num_sessions` sessions of `workload` arriving at `request_rate` sessions/s."""
    sessions = list(workload.sessions(num_sessions, seed))
    if not sessions:
        raise ValueError("workload: produced no sessions")
    offsets = arrival_offsets_s(
        len(sessions), request_rate, burstiness, np.random.default_rng(seed)
    )
    arrivals = tuple(
        (s.arrival_s if s.arrival_s is not None else float(t), s)
        for t, s in zip(offsets.tolist(), sessions, strict=True)
    )
    calls = [c for s in sessions for c in s.calls]
    if not calls:
        raise ValueError("workload: produced no calls")
    prompt = sum(c.prompt_tokens for c in calls)
    output = sum(c.max_tokens for c in calls)
    times = [t for t, _ in arrivals]
    if any(s.arrival_s is not None for s in sessions):  # a trace: its own times
        span_s = max(max(times) - min(times), 1.0 / request_rate)
    else:  # offsets are normalised so the last is num / rate (core.arrivals)
        span_s = len(times) / request_rate
    return Scenario(
        arrivals=arrivals,
        request_rate=request_rate,
        tokenizer=tokenizer,
        vocab=tuple(vocab),
        mean_prompt_tokens=prompt / len(calls),
        mean_output_tokens=output / len(calls),
        max_request_tokens=max(c.prompt_tokens + c.max_tokens for c in calls),
        output_tokens_per_s=output / span_s,
    )


@dataclass(frozen=True)
class Candidate:
    """One configuration: an engine and a routing profile."""

    gpu: str
    precision: str
    tp: int
    profile: str

    @property
    def label(self) -> str:
        return f"{self.gpu} {self.precision} tp{self.tp} {self.profile}"


@dataclass(frozen=True)
class EngineLimits:
    """Engine settings shared by every configuration (None: vLLM's defaults)."""

    block_size: int = 16
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    scrape_interval_s: float = 0.25
    kv_event_delay_s: float = 0.005


@dataclass(frozen=True)
class Probe:
    """One simulated replica count."""

    num_replicas: int
    summary: Mapping[str, Any]
    misses: tuple[str, ...]
    prefix_hit_rate: float
    num_preemptions: int
    mean_busy_fraction: float
    mean_decode_batch: float  # generated tokens per step, over replicas

    @property
    def is_feasible(self) -> bool:
        return not self.misses


@dataclass(frozen=True)
class Outcome:
    """What the search found for one configuration."""

    candidate: Candidate
    num_replicas: int | None  # None: infeasible
    reason: str | None  # why infeasible
    probes: tuple[Probe, ...] = ()
    analytic_replicas: int | None = None  # the lower bound the search started from
    saturated_output_tokens_per_s: float | None = None  # per replica
    kv_capacity_tokens: int | None = None
    model_name: str = ""
    gpu_name: str = ""  # the catalog's name for candidate.gpu (which may be an alias)

    @property
    def is_feasible(self) -> bool:
        return self.num_replicas is not None

    @property
    def num_gpus(self) -> int | None:
        return None if self.num_replicas is None else self.num_replicas * self.candidate.tp

    @property
    def best(self) -> Probe | None:
        """The probe at the chosen replica count."""
        for p in self.probes:
            if p.num_replicas == self.num_replicas:
                return p
        return None


def engine_spec(model: str, candidate: Candidate, limits: EngineLimits) -> EngineSpec:
    return EngineSpec(
        model=model,
        gpu=candidate.gpu,
        precision=candidate.precision,
        tp=candidate.tp,
        block_size=limits.block_size,
        max_num_seqs=limits.max_num_seqs,
        max_num_batched_tokens=limits.max_num_batched_tokens,
    )


def fit_problem(resolved: ResolvedEngine, scenario: Scenario) -> str | None:
    """Why the scenario's longest request cannot run on this engine, or None."""
    cfg = resolved.config
    capacity = cfg.num_gpu_blocks * cfg.block_size
    if scenario.max_request_tokens > capacity:
        return (
            f"the longest request needs {scenario.max_request_tokens:,} tokens of KV cache; "
            f"one replica holds {capacity:,}"
        )
    if scenario.max_request_tokens > cfg.max_model_len:
        return (
            f"the longest request ({scenario.max_request_tokens:,} tokens) exceeds the context "
            f"length {cfg.max_model_len:,}"
        )
    return None


def simulate(
    scenario: Scenario,
    catalog: Catalog,
    spec: EngineSpec,
    profile: str,
    num_replicas: int,
    limits: EngineLimits,
    seed: int,
) -> ClusterRun:
    """One cluster run of the scenario (raises ClusterConfigError on a bad profile)."""
    config = ClusterConfig(
        groups=(ReplicaGroup(spec, num_replicas),),
        routing={"preset": profile},
        scrape_interval_s=limits.scrape_interval_s,
        kv_event_delay_s=limits.kv_event_delay_s,
        seed=seed,
    )
    sim = ClusterSimulation(config, catalog, scenario.tokenizer, scenario.vocab)
    return sim.run(scenario.arrivals)


def probe_of(run: ClusterRun, num_replicas: int, slo: Slo) -> Probe:
    """The SLO verdict and engine figures of one run."""
    summary = summarize(run.records, run.duration_s, goodput=slo.goodput())
    misses = slo.misses(summary)
    failed = summary["failed"]
    assert isinstance(failed, int)
    if failed:
        misses.insert(0, f"{failed} failed requests")
    busy_s = sum(r.busy_s for r in run.replicas)
    steps = sum(r.num_steps for r in run.replicas)
    return Probe(
        num_replicas=num_replicas,
        summary=summary,
        misses=tuple(misses),
        prefix_hit_rate=run.prefix_hit_rate,
        num_preemptions=sum(r.num_preemptions for r in run.replicas),
        mean_busy_fraction=(
            busy_s / (len(run.replicas) * run.duration_s) if run.duration_s > 0 else 0.0
        ),
        mean_decode_batch=(
            sum(r.num_generation_tokens for r in run.replicas) / steps if steps else 0.0
        ),
    )


def search(
    model: str,
    candidate: Candidate,
    scenario: Scenario,
    catalog: Catalog,
    slo: Slo,
    *,
    limits: EngineLimits | None = None,
    max_replicas: int = 64,
    seed: int = 0,
    on_probe: Callable[[Candidate, Probe], None] | None = None,
) -> Outcome:
    """The fewest replicas of `candidate` meeting `slo` (see the module docstring)."""
    limits = limits or EngineLimits()
    spec = engine_spec(model, candidate, limits)
    try:
        resolved = resolve_engine(spec, catalog)
    except EngineSpecError as exc:
        return Outcome(candidate, None, str(exc).removeprefix(f"{exc.field}: "))
    model_name = resolved.cost_model.deployment.model.name
    gpu_name = resolved.cost_model.deployment.gpu.name
    capacity = resolved.capacity_tokens
    problem = fit_problem(resolved, scenario)
    if problem is not None:
        return Outcome(
            candidate,
            None,
            problem,
            kv_capacity_tokens=capacity,
            model_name=model_name,
            gpu_name=gpu_name,
        )
    sched = resolved.config.scheduler
    sat: float | None
    try:
        est = saturated_throughput(
            resolved.cost_model,
            max(1, round(scenario.mean_prompt_tokens)),
            max(1, round(scenario.mean_output_tokens)),
            block_size=limits.block_size,
            max_num_seqs=sched.max_num_seqs,
            max_num_batched_tokens=sched.max_num_batched_tokens,
        )
        sat = est.output_tokens_per_s
        n0 = max(1, math.ceil(scenario.output_tokens_per_s / sat))
    except ThroughputInputError:
        sat, n0 = None, 1
    probes: dict[int, Probe] = {}

    def run(n: int) -> Probe:
        if n not in probes:
            result = simulate(scenario, catalog, spec, candidate.profile, n, limits, seed)
            probes[n] = probe_of(result, n, slo)
            if on_probe is not None:
                on_probe(candidate, probes[n])
        return probes[n]

    def outcome(n: int | None, reason: str | None) -> Outcome:
        return Outcome(
            candidate,
            n,
            reason,
            tuple(probes[k] for k in sorted(probes)),
            analytic_replicas=n0,
            saturated_output_tokens_per_s=sat,
            kv_capacity_tokens=capacity,
            model_name=model_name,
            gpu_name=gpu_name,
        )

    if n0 > max_replicas:
        return outcome(
            None,
            f"the analytic bound alone needs {n0} replicas (> --max-replicas {max_replicas})",
        )
    try:
        lo, hi = 0, None  # lo: largest count known to miss (0: none); hi: smallest passing
        if run(n0).is_feasible:
            hi = n0
            if n0 > 1 and not run(n0 - 1).is_feasible:
                lo = n0 - 1
            elif n0 > 1:
                hi = n0 - 1
        else:
            lo = n0
            n = n0
            while hi is None:
                n = min(2 * n, max_replicas)
                if run(n).is_feasible:
                    hi = n
                elif n >= max_replicas:
                    misses = "; ".join(probes[n].misses)
                    return outcome(None, f"SLO missed at --max-replicas {max_replicas}: {misses}")
                else:
                    lo = n
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if run(mid).is_feasible:
                hi = mid
            else:
                lo = mid
    except ClusterConfigError as exc:
        return outcome(None, str(exc))
    return outcome(hi, None)
