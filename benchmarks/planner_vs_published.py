"""Planner vs published figures: saturated throughput and latency at load, MAPE per set.

Two kinds of published point, each split into a calibration and a held-out set *before*
fitting (the split is declared in the data files, never chosen by the fit):

* **saturated throughput**: TensorRT-LLM's offline max-throughput tables
  (`benchmarks/data/trtllm_perf_overview.yaml`, reused with the split rule of
  `benchmarks/costmodel_vs_published.py`, predicted by the same analytic path as
  `headway plan throughput`), and the saturated rows of NVIDIA NIM's latency tables
  (`benchmarks/data/published_latency.yaml`, predicted by the cluster simulation at the
  published concurrency);
* **latency**: TTFT, ITL (against the simulated mean TPOT) and end-to-end latency from
  NVIDIA NIM's benchmark page and vLLM's performance-benchmark latency tests, predicted by
  the cluster simulation (`headway.cluster`: the engine `core.engine_factory` sizes, the
  round-robin router, virtual time) at the published load: closed-loop concurrency N (N
  users, each sending its next request when the previous one finished,
  `--requests-per-user` requests each) or a batch of N requests sent at once; random
  prompts of exactly ISL tokens (the chat template's tokens included), no prefix sharing
  (prefix caching off), exactly OSL output tokens.

Fit: the cost model's existing `Efficiency` factors (`FIT_BOUNDS`), a small grid then a
coordinate search (`costmodel_vs_published.fit`), minimising the mean of the calibration
throughput MAPE and the calibration latency MAPE. Reported: every point's published,
default and fitted prediction, and the MAPE of each set for each kind.

    .venv/bin/python benchmarks/planner_vs_published.py --out benchmarks/results/planner_vs_published.json
    .venv/bin/python benchmarks/planner_vs_published.py --tiny --out /tmp/x.json   # CI smoke
"""

from __future__ import annotations

import argparse
import array
import dataclasses
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from headway.core.catalog import Catalog
from headway.core.costmodel import Efficiency
from headway.resources.catalog import load_catalog

sys.path.insert(0, str(Path(__file__).resolve().parent))
import costmodel_vs_published as cvp
from _common import relative_path, write_result

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "benchmarks" / "data" / "published_latency.yaml"
TARGET_HELD_OUT_MAPE_PCT = {"throughput": 20.0, "latency": 30.0}

# Summary key of the simulation for each published metric.
SUMMARY_KEYS = {
    "ttft_ms": "mean_ttft_ms",
    "itl_ms": "mean_tpot_ms",
    "e2el_ms": "mean_e2el_ms",
    "output_tokens_per_s": "output_throughput",
}
KIND_OF_METRIC = {
    "ttft_ms": "latency",
    "itl_ms": "latency",
    "e2el_ms": "latency",
    "output_tokens_per_s": "throughput",
}

# Fitted factors: the ones costmodel_vs_published fits (offline throughput pins them), plus
# the two that set unloaded latency: the fixed per-step cost (decode steps of a few
# requests last 5-20 ms, so a few hundred microseconds matter) and the GEMM efficiency
# ceiling (prefill of long prompts is compute bound: TTFT).
FIT_BOUNDS: dict[str, tuple[float, float]] = {
    "memory_bandwidth_fraction": (0.4, 0.95),
    "max_mfu": (0.3, 0.9),
    "step_overhead_s": (0.0, 2e-3),
    "per_sequence_overhead_s": (0.0, 2e-5),
    "fp4_mfu_scale": (0.25, 1.0),
}
GRID: dict[str, tuple[float, ...]] = {
    "memory_bandwidth_fraction": (0.66, 0.74, 0.82),
    "max_mfu": (0.5, 0.6, 0.7),
}
TINY_GRID: dict[str, tuple[float, ...]] = {"memory_bandwidth_fraction": (0.7, 0.8)}


# -- published points ------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyPoint:
    """One published figure at a load (a row cell of a latency table)."""

    id: str
    source: str
    model: str
    gpu: str
    precision: str
    tp: int
    isl: int
    osl: int
    load_kind: str  # "concurrency" (closed loop) | "batch" (all sent at once)
    load_value: int
    metric: str
    value: float
    set: str
    is_full_reservation: bool = False  # the source's engine admits only what fits whole

    @property
    def scenario(self) -> Scenario:
        return Scenario(
            self.model,
            self.gpu,
            self.precision,
            self.tp,
            self.isl,
            self.osl,
            self.load_kind,
            self.load_value,
            self.is_full_reservation,
        )

    @property
    def kind(self) -> str:
        return KIND_OF_METRIC[self.metric]


@dataclass(frozen=True)
class Scenario:
    """One simulated run; several published metrics may read the same run."""

    model: str
    gpu: str
    precision: str
    tp: int
    isl: int
    osl: int
    load_kind: str
    load_value: int
    is_full_reservation: bool = False

    @property
    def label(self) -> str:
        admission = " full-reservation" if self.is_full_reservation else ""
        return (
            f"{self.model} {self.gpu} {self.precision} tp{self.tp} {self.isl}/{self.osl} "
            f"{self.load_kind}={self.load_value}{admission}"
        )


class DataError(ValueError):
    """A published-points file that does not have the declared shape; names the field."""


def load_latency_points(doc: Mapping[str, Any]) -> list[LatencyPoint]:
    """The `points` of a published_latency.yaml document, validated."""
    points: list[LatencyPoint] = []
    sources = doc.get("sources") or {}
    for i, raw in enumerate(doc.get("points") or []):
        where = f"points[{i}]"
        try:
            (load_kind, load_value), *rest = dict(raw["load"]).items()
            if rest or load_kind not in ("concurrency", "batch"):
                raise DataError(f"{where}.load: one of concurrency: N or batch: N")
            p = LatencyPoint(
                id=str(raw["id"]),
                source=str(raw["source"]),
                model=str(raw["model"]),
                gpu=str(raw["gpu"]),
                precision=str(raw["precision"]),
                tp=int(raw["tp"]),
                isl=int(raw["isl"]),
                osl=int(raw["osl"]),
                load_kind=str(load_kind),
                load_value=int(load_value),
                metric=str(raw["metric"]),
                value=float(raw["value"]),
                set=str(raw["set"]),
                is_full_reservation=(sources.get(raw["source"]) or {}).get("admission")
                == "full_reservation",
            )
        except KeyError as exc:
            raise DataError(f"{where}.{exc.args[0]}: missing") from None
        if p.metric not in SUMMARY_KEYS:
            raise DataError(f"{where}.metric: {p.metric!r} is not one of {sorted(SUMMARY_KEYS)}")
        if p.set not in ("calibration", "held_out"):
            raise DataError(f"{where}.set: must be calibration or held_out, got {p.set!r}")
        if p.source not in sources:
            raise DataError(f"{where}.source: {p.source!r} is not under sources")
        if p.load_value < 1 or p.isl < 1 or p.osl < 1 or p.value <= 0:
            raise DataError(f"{where}: load, isl, osl and value must be positive")
        points.append(p)
    ids = [p.id for p in points]
    if len(set(ids)) != len(ids):
        raise DataError("points: ids must be unique")
    return points


def load_trtllm(
    doc: Mapping[str, Any], *, tiny: bool
) -> tuple[list[cvp.Point], dict[cvp.Point, str], dict[str, Any]]:
    """The TensorRT-LLM throughput points and their declared split."""
    spec = doc["trtllm"]
    trt_doc = yaml.safe_load((REPO / spec["file"]).read_text())
    points = cvp.load_points(trt_doc, spec["source"], spec["models"])
    split_spec = spec["split"]
    sets = cvp.split(points, int(split_spec["seed"]), int(split_spec["holdout_per_stratum"]))
    if tiny:
        # Two calibration rows and one held-out row per stratum, from the declared split.
        kept: list[cvp.Point] = []
        for stratum in sorted({p.stratum for p in points}):
            rows = [p for p in points if p.stratum == stratum]
            kept += [p for p in rows if sets[p] == "calibration"][:2]
            kept += [p for p in rows if sets[p] == "held_out"][:1]
        points = kept
    meta = trt_doc.get("sources", {}).get(spec["source"], {})
    return points, sets, {"file": spec["file"], "source": spec["source"], "url": meta.get("url")}


# -- simulation ------------------------------------------------------------------------
class MemoTokenizer:
    """A tokenizer whose `encode` remembers its answers (as compact int arrays), so the
    many simulations of one fit tokenize each random prompt once. Same ids as the inner
    tokenizer; the simulation's results do not depend on it."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._cache: dict[str, array.array[int]] = {}

    @property
    def vocab_size(self) -> int:
        return int(self._inner.vocab_size)

    @property
    def eos_token_id(self) -> int:
        return int(self._inner.eos_token_id)

    def encode(self, text: str) -> list[int]:
        hit = self._cache.get(text)
        if hit is None:
            hit = self._cache[text] = array.array("i", self._inner.encode(text))
        return hit.tolist()

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self._inner.decode(token_ids))

    def output_vocab(self) -> tuple[int, ...]:
        return tuple(self._inner.output_vocab())


class Simulator:
    """Runs scenarios in the cluster simulation; builds each scenario's sessions once."""

    def __init__(self, catalog: Catalog, requests_per_user: int, seed: int) -> None:
        from headway.bench.workload_source import load_bench_tokenizer
        from headway.core.workloads import build_workload

        self._build_workload = build_workload
        self.catalog = catalog
        self.requests_per_user = requests_per_user
        self.seed = seed
        self.base_tokenizer = load_bench_tokenizer(None)
        self.tokenizer = MemoTokenizer(self.base_tokenizer)
        self._arrivals: dict[Scenario, list[tuple[float, Any]]] = {}
        self.num_runs = 0
        self.cpu_s = 0.0

    def full_reservation_limit(self, sc: Scenario) -> int:
        """max_num_seqs that admits only requests whose whole ISL + OSL fits the KV cache
        alongside the others (TensorRT-LLM's GUARANTEED_NO_EVICT capacity scheduler, the
        default of the engine behind NIM's numbers), so nothing is ever preempted."""
        from headway.core.engine_factory import EngineSpec, resolve_engine

        resolved = resolve_engine(
            EngineSpec(model=sc.model, gpu=sc.gpu, precision=sc.precision, tp=sc.tp),
            self.catalog,
        )
        block = resolved.config.block_size
        blocks_per_request = -(-(sc.isl + sc.osl) // block)
        fits = resolved.config.num_gpu_blocks // blocks_per_request
        return max(1, min(fits, resolved.config.scheduler.max_num_seqs))

    def service_s(self, sc: Scenario) -> float:
        """A steady-state estimate of one request's service (default cost model): OSL
        steps of the mean step with B = min(N, what fits) requests in flight."""
        from headway.core.engine_factory import EngineSpec, resolve_engine
        from headway.core.throughput import step_work

        resolved = resolve_engine(
            EngineSpec(model=sc.model, gpu=sc.gpu, precision=sc.precision, tp=sc.tp),
            self.catalog,
        )
        fits = (
            self.full_reservation_limit(sc)
            if sc.is_full_reservation
            else resolved.capacity_tokens // (sc.isl + (sc.osl + 1) // 2)
        )
        batch = max(1, min(sc.load_value, fits, resolved.config.scheduler.max_num_seqs))
        return sc.osl * resolved.cost_model.step_time_s(step_work(batch, sc.isl, sc.osl))

    def arrivals(self, sc: Scenario) -> list[tuple[float, Any]]:
        """(start time, session) per user. A batch load sends everything at t=0. A
        closed-loop load starts the N users at seeded uniform random times within one
        request's service (`service_s`): the phases of a long-running closed loop are
        spread out and random (so prompts sometimes arrive while another is in
        prefill), while N users started together would stay bunched for the whole run
        of a deterministic simulation (same service times), queueing behind each other's
        prefills, and evenly spaced ones would never meet."""
        if sc not in self._arrivals:
            from headway.core.workloads import Session, Stage

            def workload(content: int) -> Any:
                return self._build_workload(
                    "synthetic",
                    {"input_len": content, "output_len": sc.osl},
                    self.base_tokenizer,
                )

            overhead = next(iter(workload(8).sessions(1, self.seed))).calls[0].prompt_tokens - 8
            content = max(1, sc.isl - overhead)
            users = sc.load_value
            per_user = 1 if sc.load_kind == "batch" else self.requests_per_user
            calls = [
                s.stages[0].calls[0]
                for s in workload(content).sessions(users * per_user, self.seed)
            ]
            if sc.load_kind == "batch":
                starts = [0.0] * users
            else:
                rng = np.random.default_rng([self.seed, users, sc.isl, sc.osl])
                starts = sorted(rng.uniform(0.0, self.service_s(sc), users).tolist())
            self._arrivals[sc] = [
                (
                    starts[u],
                    Session(
                        f"u{u}",
                        tuple(Stage(0.0, (c,)) for c in calls[u * per_user : (u + 1) * per_user]),
                    ),
                )
                for u in range(users)
            ]
        return self._arrivals[sc]

    def run(self, sc: Scenario, efficiency: Efficiency) -> dict[str, Any]:
        """Steady-state metrics of the scenario at `efficiency` (see `steady_state`)."""
        from headway.cluster.simulation import ClusterConfig, ClusterSimulation, ReplicaGroup
        from headway.core.engine_factory import EngineSpec

        arrivals = self.arrivals(sc)
        started = time.process_time()
        spec = EngineSpec(
            model=sc.model,
            gpu=sc.gpu,
            precision=sc.precision,
            tp=sc.tp,
            enable_prefix_caching=False,
            max_num_seqs=self.full_reservation_limit(sc) if sc.is_full_reservation else None,
            efficiency=efficiency,
        )
        config = ClusterConfig(
            groups=(ReplicaGroup(spec, 1),),
            routing={"preset": "round-robin"},
            is_kv_events_enabled=False,
            seed=self.seed,
        )
        sim = ClusterSimulation(config, self.catalog, self.tokenizer, self.tokenizer.output_vocab())
        run = sim.run(arrivals)
        self.num_runs += 1
        self.cpu_s += time.process_time() - started
        replica = run.replicas[0]
        last_start_s = max(t for t, _ in arrivals)
        return {
            **steady_state(run.records, last_start_s),
            "num_preemptions": replica.num_preemptions,
            "num_steps": replica.num_steps,
            "prompt_tokens_per_request": replica.num_prompt_tokens / max(1, len(run.records)),
        }


def steady_state(records: Sequence[Any], last_start_s: float) -> dict[str, Any]:
    """Mean TTFT, TPOT and end-to-end latency of the requests that ran wholly while every
    user was in the loop (from the last user's start until the first user's last request
    ends), and the output tokens/s emitted in that window. Falls back to all requests when the
    window holds none (one request per user, or a batch load)."""
    ok = [r for r in records if r.is_success and r.chunk_times]
    last_ends: dict[str, float] = {}
    for r in ok:
        last_ends[r.session_id] = max(last_ends.get(r.session_id, 0.0), r.chunk_times[-1])
    window_end_s = min(last_ends.values()) if last_ends else 0.0
    kept = [r for r in ok if last_start_s <= r.sent_at and r.chunk_times[-1] <= window_end_s]
    if window_end_s > last_start_s and kept:
        lo, hi = last_start_s, window_end_s
        num_tokens = sum(1 for r in ok for t in r.chunk_times if lo <= t < hi)
        throughput = num_tokens / (hi - lo)
        window = "steady"
    else:
        kept = ok
        start = min(r.sent_at for r in ok)
        end = max(r.chunk_times[-1] for r in ok)
        throughput = sum(len(r.chunk_times) for r in ok) / (end - start)
        window = "whole run"
    ttft = [r.chunk_times[0] - r.sent_at for r in kept]
    tpot = [
        (r.chunk_times[-1] - r.chunk_times[0]) / (len(r.chunk_times) - 1)
        for r in kept
        if len(r.chunk_times) > 1
    ]
    e2el = [r.chunk_times[-1] - r.sent_at for r in kept]
    return {
        "summary": {
            "mean_ttft_ms": 1e3 * float(np.mean(ttft)),
            "mean_tpot_ms": 1e3 * float(np.mean(tpot)) if tpot else float("nan"),
            "mean_e2el_ms": 1e3 * float(np.mean(e2el)),
            "output_throughput": throughput,
        },
        "window": window,
        "num_measured_requests": len(kept),
    }


# -- predictions -----------------------------------------------------------------------
def predict_latency(
    sim: Simulator, points: Sequence[LatencyPoint], efficiency: Efficiency
) -> dict[str, dict[str, Any]]:
    """Point id -> prediction, one simulation per scenario."""
    runs: dict[Scenario, dict[str, Any]] = {}
    out: dict[str, dict[str, Any]] = {}
    for p in points:
        sc = p.scenario
        if sc not in runs:
            runs[sc] = sim.run(sc, efficiency)
        r = runs[sc]
        predicted = float(r["summary"][SUMMARY_KEYS[p.metric]])  # type: ignore[arg-type]
        out[p.id] = {
            "predicted": predicted,
            "error_pct": 100.0 * (predicted - p.value) / p.value,
            "num_preemptions": r["num_preemptions"],
            "prompt_tokens_per_request": r["prompt_tokens_per_request"],
            "window": r["window"],
            "num_measured_requests": r["num_measured_requests"],
        }
    return out


def predict_trtllm(
    catalog: Catalog, points: Sequence[cvp.Point], efficiency: Efficiency
) -> dict[cvp.Point, cvp.Prediction]:
    return {p: cvp.predict(cvp.deployment_for(catalog, p), p, efficiency) for p in points}


def mape(errors: Sequence[float]) -> float:
    return float(np.mean(np.abs(errors))) if errors else float("nan")


@dataclass
class Evaluation:
    """All predictions at one `Efficiency`, and the MAPE per kind and set."""

    latency: dict[str, dict[str, Any]]
    trtllm: dict[cvp.Point, cvp.Prediction]
    mape_pct: dict[str, dict[str, float]]


def evaluate(
    sim: Simulator,
    catalog: Catalog,
    latency_points: Sequence[LatencyPoint],
    trt_points: Sequence[cvp.Point],
    trt_sets: Mapping[cvp.Point, str],
    efficiency: Efficiency,
) -> Evaluation:
    lat = predict_latency(sim, latency_points, efficiency)
    trt = predict_trtllm(catalog, trt_points, efficiency)
    errors: dict[str, dict[str, list[float]]] = {
        kind: {"calibration": [], "held_out": []} for kind in ("throughput", "latency")
    }
    for p in latency_points:
        errors[p.kind][p.set].append(lat[p.id]["error_pct"])
    for tp, pred in trt.items():
        errors["throughput"][trt_sets[tp]].append(pred.error_pct)
    mapes = {
        kind: {
            "calibration": mape(by_set["calibration"]),
            "held_out": mape(by_set["held_out"]),
            "all": mape(by_set["calibration"] + by_set["held_out"]),
            "num_calibration": len(by_set["calibration"]),
            "num_held_out": len(by_set["held_out"]),
        }
        for kind, by_set in errors.items()
    }
    return Evaluation(lat, trt, mapes)


# -- main --------------------------------------------------------------------------------
PROVENANCE_INPUTS = [
    "src/headway/core/costmodel.py",
    "src/headway/core/throughput.py",
    "src/headway/core/engine.py",
    "src/headway/core/scheduler.py",
    "src/headway/core/engine_factory.py",
    "src/headway/cluster/simulation.py",
    "src/headway/resources/data/catalog.yaml",
    "benchmarks/planner_vs_published.py",
    "benchmarks/costmodel_vs_published.py",
    "benchmarks/data/published_latency.yaml",
    "benchmarks/data/trtllm_perf_overview.yaml",
]

# Tiny mode keeps the cheap latency scenarios (few users) only.
TINY_MAX_USERS = 8


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="published points (YAML)")
    ap.add_argument(
        "--requests-per-user",
        type=int,
        default=3,
        help="closed-loop requests each of the N users sends (concurrency loads)",
    )
    ap.add_argument("--seed", type=int, default=0, help="prompt and sampler seed")
    ap.add_argument("--max-sweeps", type=int, default=2, help="coordinate-search sweeps")
    ap.add_argument("--no-fit", action="store_true", help="report the default factors only")
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="CI smoke: small loads only, 3 TensorRT-LLM rows per stratum, grid-only fit",
    )
    ap.add_argument("--out", type=Path, default=None, help="write the result JSON here")
    args = ap.parse_args(argv)
    if args.requests_per_user < 1:
        ap.error("--requests-per-user: must be >= 1")
    if args.max_sweeps < 0:
        ap.error("--max-sweeps: must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.process_time()
    try:
        doc = yaml.safe_load(args.data.read_text())
        latency_points = load_latency_points(doc)
        trt_points, trt_sets, trt_meta = load_trtllm(doc, tiny=args.tiny)
    except (OSError, DataError, KeyError, yaml.YAMLError) as exc:
        print(f"planner_vs_published: error: --data: {exc}", file=sys.stderr)
        return 2
    requests_per_user = args.requests_per_user
    if args.tiny:
        latency_points = [p for p in latency_points if p.load_value <= TINY_MAX_USERS]
        requests_per_user = min(requests_per_user, 2)
    catalog = load_catalog()
    sim = Simulator(catalog, requests_per_user, args.seed)
    calibration_lat = [p for p in latency_points if p.set == "calibration"]
    calibration_trt = [p for p in trt_points if trt_sets[p] == "calibration"]

    def loss(eff: Efficiency) -> float:
        ev = evaluate(sim, catalog, calibration_lat, calibration_trt, trt_sets, eff).mape_pct
        parts = [ev[k]["calibration"] for k in ("throughput", "latency")]
        value = float(np.mean([x for x in parts if not math.isnan(x)]))
        print(
            f"  fit: loss {value:6.2f}% (throughput {parts[0]:.1f}%, latency {parts[1]:.1f}%) "
            f"at {_factors_text(eff)}  [{time.process_time() - started:.0f} CPU s]",
            file=sys.stderr,
        )
        return value

    default = Efficiency()
    fit_info: dict[str, Any] = {"skipped": True}
    fitted = default
    if not args.no_fit:
        grid = TINY_GRID if args.tiny else GRID
        sweeps = 0 if args.tiny else args.max_sweeps
        result = cvp.fit(loss, default, FIT_BOUNDS, grid, max_sweeps=sweeps, min_step=0.05)
        fitted = result.efficiency
        fit_info = {
            "objective": "mean of the calibration MAPE of throughput points and of latency points",
            "method": "grid, then coordinate search (costmodel_vs_published.fit)",
            "fitted_fields": list(FIT_BOUNDS),
            "bounds": {k: list(v) for k, v in FIT_BOUNDS.items()},
            "grid": {k: list(v) for k, v in grid.items()},
            "max_sweeps": sweeps,
            "num_evaluations": result.num_evaluations,
            "calibration_loss_pct": result.calibration_mape_pct,
            "trace": result.trace,
        }

    evals = {
        "default": evaluate(sim, catalog, latency_points, trt_points, trt_sets, default),
        "fitted": evaluate(sim, catalog, latency_points, trt_points, trt_sets, fitted),
    }
    rows = latency_rows(latency_points, evals) + trtllm_rows(trt_points, trt_sets, evals)
    print_table(rows, evals, default, fitted)
    cpu_s = time.process_time() - started
    print(f"\n{sim.num_runs} simulations, {cpu_s:.1f} CPU s")

    result_doc = {
        "benchmark": "planner_vs_published",
        "data": {
            "latency_file": relative_path(str(args.data)),
            "sources": doc.get("sources"),
            "trtllm": {**trt_meta, "split": doc["trtllm"]["split"]},
            "num_latency_points": len(latency_points),
            "num_trtllm_points": len(trt_points),
        },
        "config": {
            "tiny": args.tiny,
            "seed": args.seed,
            "requests_per_user": requests_per_user,
            "simulation": (
                "headway.cluster.ClusterSimulation, one replica sized by core.engine_factory "
                "(vLLM defaults, gpu_memory_utilization 0.9), prefix caching off, round-robin "
                "routing, synthetic random prompts of exactly isl tokens (template included), "
                "ignore_eos osl tokens; concurrency N = N closed-loop users from t=0, batch N = "
                "N requests at t=0"
            ),
            "throughput_prediction": (
                "TensorRT-LLM rows: costmodel_vs_published.predict (core.throughput at "
                "trtllm-bench's limits); NIM saturated rows: the simulation's output tokens/s"
            ),
            "fit": fit_info,
        },
        "efficiency": {
            "default": dataclasses.asdict(default),
            "fitted": dataclasses.asdict(fitted),
        },
        "mape_pct": {label: ev.mape_pct for label, ev in evals.items()},
        "target_held_out_mape_pct": TARGET_HELD_OUT_MAPE_PCT,
        "meets_target": {
            label: {
                kind: ev.mape_pct[kind]["held_out"] <= TARGET_HELD_OUT_MAPE_PCT[kind]
                for kind in TARGET_HELD_OUT_MAPE_PCT
            }
            for label, ev in evals.items()
        },
        "points": rows,
        "cpu_s": cpu_s,
        "num_simulations": sim.num_runs,
    }
    write_result(args.out, result_doc, PROVENANCE_INPUTS)
    return 0


def _factors_text(eff: Efficiency) -> str:
    return " ".join(f"{name}={getattr(eff, name):.4g}" for name in FIT_BOUNDS)


def latency_rows(
    points: Sequence[LatencyPoint], evals: Mapping[str, Evaluation]
) -> list[dict[str, Any]]:
    rows = []
    for p in points:
        row: dict[str, Any] = {
            **dataclasses.asdict(p),
            "kind": p.kind,
            "scenario": p.scenario.label,
            "published": p.value,
        }
        for label, ev in evals.items():
            row[label] = ev.latency[p.id]
        rows.append(row)
    return rows


def trtllm_rows(
    points: Sequence[cvp.Point], sets: Mapping[cvp.Point, str], evals: Mapping[str, Evaluation]
) -> list[dict[str, Any]]:
    rows = []
    for p in points:
        row: dict[str, Any] = {
            "id": f"trtllm-{p.stratum}-{p.isl}-{p.osl}",
            "source": "trtllm",
            "model": p.model,
            "gpu": p.gpu,
            "precision": p.precision,
            "tp": p.tp,
            "isl": p.isl,
            "osl": p.osl,
            "metric": "output_tokens_per_s_per_gpu",
            "kind": "throughput",
            "set": sets[p],
            "scenario": "offline max throughput",
            "published": p.published_tokens_per_s_per_gpu,
        }
        for label, ev in evals.items():
            pred = ev.trtllm[p]
            row[label] = {
                "predicted": pred.predicted_tokens_per_s_per_gpu,
                "error_pct": pred.error_pct,
                "bound": pred.bound,
            }
        rows.append(row)
    return rows


def print_table(
    rows: Sequence[Mapping[str, Any]],
    evals: Mapping[str, Evaluation],
    default: Efficiency,
    fitted: Efficiency,
) -> None:
    print("Planner vs published figures (predicted: default / fitted Efficiency)")
    header = (
        f"{'point':44} {'metric':20} {'set':11} {'published':>10} {'default':>10} {'err%':>7} "
        f"{'fitted':>10} {'err%':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        d, f = r["default"], r["fitted"]
        print(
            f"{r['id'][:44]:44} {r['metric'][:20]:20} {r['set']:11} {r['published']:>10.2f} "
            f"{d['predicted']:>10.2f} {d['error_pct']:>+7.1f} {f['predicted']:>10.2f} "
            f"{f['error_pct']:>+7.1f}"
        )
    print()
    for label, ev in evals.items():
        for kind in ("throughput", "latency"):
            m = ev.mape_pct[kind]
            print(
                f"MAPE {label:8} {kind:10}: calibration {m['calibration']:5.1f}% "
                f"(n={m['num_calibration']:.0f})  held-out {m['held_out']:5.1f}% "
                f"(n={m['num_held_out']:.0f})  target <= {TARGET_HELD_OUT_MAPE_PCT[kind]:.0f}%"
            )
    print()
    for name in FIT_BOUNDS:
        print(
            f"  {name:28} default {getattr(default, name):<10.4g} fitted {getattr(fitted, name):.4g}"
        )


if __name__ == "__main__":
    sys.exit(main())
