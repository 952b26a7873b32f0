"""`headway bench` as a library: configure, run against one or more targets, get the
results.json document (schema `headway.bench/1`, docs/bench.md).

Side by side: every target (arm) gets the same seeded plan, one arm after the other, in
the order given. With `reset_cache`, POST /reset_prefix_cache goes to the arm's target
and its `reset_urls` before each of its points, so no arm (and no sweep point) starts
with a cache the previous one warmed; a failed reset is a warning in the output and in
`metadata.warnings`, never an error.

A stop (`stop_event`, Ctrl-C in the CLI) ends the point in progress with partial
results (`metadata.is_partial`) and runs nothing after it.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import math
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import aiohttp
import numpy as np
from rich.console import Console

from headway import __version__
from headway.bench.client import DEFAULT_TIMEOUT_S, StreamingClient
from headway.bench.runner import (
    DEFAULT_MAX_SCHEDULING_LAG_MS,
    LoadLevel,
    PointRun,
    PointRunner,
    ScheduledSession,
    WorkerSpec,
    build_workload_and_tokenizer,
    is_plan_bounded,
    now_s,
    plan_sessions,
    run_point_multiprocess,
)
from headway.bench.workload_source import is_file_source
from headway.core.serving_metrics import (
    CostInputs,
    GoodputSlo,
    request_rows,
    summarize,
)
from headway.provenance import git_sha, machine_facts

SCHEMA = "headway.bench/1"
RESULTS_FILE = "results.json"
# A sweep stops once a point adds less than this share of output throughput.
SATURATION_GROWTH = 0.05
# ... or once more than this share of its requests failed.
SATURATION_FAILED_SHARE = 0.10
# ... or once the client's p99 scheduling lag exceeds this multiple of its bound.
SATURATION_LAG_FACTOR = 5.0
_EMPTY: Mapping[str, object] = MappingProxyType({})


@dataclass(frozen=True)
class BenchTarget:
    """One server to measure (an arm)."""

    base_url: str  # e.g. http://127.0.0.1:8080 (the client appends /v1/...)
    label: str
    reset_urls: tuple[str, ...] = ()  # extra servers whose POST /reset_prefix_cache is called

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"base_url: must start with http:// or https://, got {self.base_url!r}"
            )
        for url in self.reset_urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"reset_urls: must start with http:// or https://, got {url!r}")


@dataclass(frozen=True)
class BenchConfig:
    """A benchmark run: targets, workload, load and bounds (validated on construction)."""

    targets: tuple[BenchTarget, ...]
    model: str
    workload: str  # a core workload name or a trace / ShareGPT file path
    workload_params: Mapping[str, object] = field(default_factory=lambda: _EMPTY)
    request_rate: float | None = None  # sessions/s (None/inf: all at once)
    burstiness: float = 1.0
    max_concurrency: int | None = None
    num_requests: int | None = None  # hard cap on calls
    duration_s: float | None = None  # hard cap on time (issuing)
    goodput: GoodputSlo | None = None
    cost: CostInputs | None = None
    reset_cache: bool = False
    seed: int = 0
    tokenizer_path: str | None = None  # default: the shipped tokenizer
    num_client_processes: int = 1
    use_model_answers: bool = False
    show_progress: bool = True
    request_timeout_s: float = DEFAULT_TIMEOUT_S
    max_scheduling_lag_ms: float = DEFAULT_MAX_SCHEDULING_LAG_MS
    command: str | None = None  # for the metadata; default: this process's argv

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("targets: at least one target is required")
        labels = [t.label for t in self.targets]
        if len(set(labels)) != len(labels):
            raise ValueError(f"targets: labels must be unique, got {labels}")
        if not self.model:
            raise ValueError("model: required")
        if self.request_rate is not None and not self.request_rate > 0:
            raise ValueError(f"request_rate: must be > 0, got {self.request_rate}")
        if not self.burstiness > 0:
            raise ValueError(f"burstiness: must be > 0, got {self.burstiness}")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency: must be >= 1, got {self.max_concurrency}")
        if self.num_requests is not None and self.num_requests < 1:
            raise ValueError(f"num_requests: must be >= 1, got {self.num_requests}")
        if self.duration_s is not None and not self.duration_s > 0:
            raise ValueError(f"duration_s: must be > 0, got {self.duration_s}")
        if self.num_requests is None and self.duration_s is None:
            raise ValueError("num_requests / duration_s: give at least one bound")
        if (
            self.num_requests is None
            and self.request_rate is None
            and not self.max_concurrency
            and not is_file_source(self.workload)
        ):
            # Every session at once with no count: an unbounded burst. (A trace or
            # ShareGPT file is finite, and a trace brings its own arrival times.)
            raise ValueError("duration_s: needs request_rate or max_concurrency")
        if self.max_concurrency is not None and self.max_concurrency < self.num_client_processes:
            raise ValueError(
                f"num_client_processes: at most max_concurrency ({self.max_concurrency}), "
                f"got {self.num_client_processes}"
            )
        if self.num_client_processes < 1:
            raise ValueError(f"num_client_processes: must be >= 1, got {self.num_client_processes}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s: must be > 0, got {self.request_timeout_s}")
        if not self.max_scheduling_lag_ms > 0:
            raise ValueError(
                f"max_scheduling_lag_ms: must be > 0, got {self.max_scheduling_lag_ms}"
            )

    @property
    def level(self) -> LoadLevel:
        return LoadLevel(self.request_rate, self.burstiness, self.max_concurrency)


@dataclass(frozen=True)
class SloSearchSpec:
    """Search for the largest request rate whose SLO attainment is >= `attainment`."""

    rate_min: float
    rate_max: float
    attainment: float = 0.9  # share of requests that must meet every SLO
    tolerance: float = 0.1  # stop when the bracket is narrower (sessions/s)
    max_probes: int = 12

    def __post_init__(self) -> None:
        if not 0 < self.rate_min < self.rate_max:
            raise ValueError(
                f"rate_min / rate_max: need 0 < min < max, got {self.rate_min}, {self.rate_max}"
            )
        if not 0 < self.attainment <= 1:
            raise ValueError(f"attainment: must be in (0, 1], got {self.attainment}")
        if not self.tolerance > 0:
            raise ValueError(f"tolerance: must be > 0, got {self.tolerance}")
        if self.max_probes < 2:
            raise ValueError(f"max_probes: must be >= 2, got {self.max_probes}")


# -- one point ----------------------------------------------------------------------
class _BenchRun:
    """What one bench invocation shares between its points: the workload, the
    tokenizer, warnings, progress and the stop signal."""

    def __init__(
        self, config: BenchConfig, stop_event: asyncio.Event | None, console: Console | None
    ) -> None:
        self.config = config
        self.stop_event = stop_event
        self.console = console
        self.warnings: list[str] = []
        self.is_partial = False
        self.workload, self.tokenizer = build_workload_and_tokenizer(
            config.workload, config.workload_params, config.tokenizer_path
        )

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        if self.console is not None:
            self.console.print(f"[yellow]warning:[/yellow] {message}")
        else:
            print(f"headway bench: warning: {message}", file=sys.stderr)

    @property
    def is_stopped(self) -> bool:
        return self.is_partial or (self.stop_event is not None and self.stop_event.is_set())

    async def run_point(self, target: BenchTarget, level: LoadLevel) -> dict[str, Any]:
        config = self.config
        resets = await self.reset_caches(target) if config.reset_cache else None
        total = config.num_requests
        with _progress(config.show_progress, f"{target.label} {_level_text(level)}", total) as adv:
            if config.num_client_processes > 1:
                spec = WorkerSpec(
                    base_url=target.base_url,
                    model=config.model,
                    workload=config.workload,
                    workload_params=dict(config.workload_params),
                    tokenizer_path=config.tokenizer_path,
                    seed=config.seed,
                    level=level,
                    num_requests=config.num_requests,
                    duration_s=config.duration_s,
                    use_model_answers=config.use_model_answers,
                    timeout_s=config.request_timeout_s,
                    worker_index=0,
                    num_workers=config.num_client_processes,
                )
                run = await run_point_multiprocess(
                    spec, config.num_client_processes, self.stop_event, adv
                )
            else:
                run = await self._run_in_process(target, level, adv)
        if run.is_partial:
            self.is_partial = True
        point = point_result(level, run, config)
        if resets is not None:
            point["cache_reset"] = resets
        client = point["client"]
        if not client["is_schedule_kept"]:
            self.warn(
                f"{target.label} {_level_text(level)}: the client fell behind its schedule "
                f"(p99 scheduling lag {client['scheduling_lag_p99_ms']:.2f} ms > "
                f"{config.max_scheduling_lag_ms:g} ms); figures reflect the client, not "
                "only the target: use --num-client-processes or a less busy client machine"
            )
        return point

    async def _run_in_process(
        self, target: BenchTarget, level: LoadLevel, advance: Callable[[int], None]
    ) -> PointRun:
        config = self.config
        plan: Iterable[ScheduledSession] = plan_sessions(
            self.workload,
            level,
            seed=config.seed,
            num_requests=config.num_requests,
            duration_s=config.duration_s,
        )
        if is_plan_bounded(level, config.num_requests):
            # Build every prompt before the clock starts: generating a session inside
            # the dispatch loop would show up as client lag.
            plan = list(plan)
        async with StreamingClient(
            target.base_url,
            config.model,
            max_connections=0,
            tokenizer=self.tokenizer,
            timeout_s=config.request_timeout_s,
        ) as client:
            runner = PointRunner(
                client,
                level,
                duration_s=config.duration_s,
                use_model_answers=config.use_model_answers,
                on_call_done=lambda _r: advance(1),
            )
            return await runner.run(plan, now_s() + 0.001, self.stop_event)

    async def reset_caches(self, target: BenchTarget) -> list[dict[str, Any]]:
        """POST /reset_prefix_cache to the target and its reset_urls; failures warn."""
        outcomes: list[dict[str, Any]] = []
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for base in (target.base_url, *target.reset_urls):
                url = base.rstrip("/") + "/reset_prefix_cache"
                outcome: dict[str, Any] = {"url": url, "status": None, "is_reset": False}
                try:
                    async with http.post(url) as resp:
                        outcome["status"] = resp.status
                        body: Any = None
                        if resp.content_type == "application/json":
                            body = await resp.json()
                        # vLLM answers 200 {"success": false} while blocks are in use.
                        outcome["is_reset"] = resp.status == 200 and not (
                            isinstance(body, dict) and body.get("success") is False
                        )
                except (aiohttp.ClientError, OSError, ValueError) as exc:
                    outcome["error"] = f"{type(exc).__name__}: {exc}"
                if not outcome["is_reset"]:
                    why = outcome.get("error") or f"HTTP {outcome['status']}"
                    if outcome["status"] == 200:
                        why = "the server answered success=false (blocks still in use)"
                    self.warn(
                        f"{target.label}: cache reset at {url} failed ({why}); "
                        "this arm may start with a warm prefix cache"
                    )
                outcomes.append(outcome)
        return outcomes


class _NullProgress:
    def __enter__(self) -> Callable[[int], None]:
        return lambda _n: None

    def __exit__(self, *exc: object) -> None:
        return None


class _RichProgress:
    def __init__(self, description: str, total: int | None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._task = self._progress.add_task(description, total=total)

    def __enter__(self) -> Callable[[int], None]:
        self._progress.start()
        return lambda n: self._progress.advance(self._task, n)

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()


def _progress(is_shown: bool, description: str, total: int | None) -> Any:
    if is_shown and sys.stderr.isatty():
        return _RichProgress(description, total)
    return _NullProgress()


def _level_text(level: LoadLevel) -> str:
    parts = []
    if level.request_rate is not None:
        parts.append(f"rate {level.request_rate:g}/s")
    if level.max_concurrency is not None:
        parts.append(f"concurrency {level.max_concurrency}")
    return ", ".join(parts) or "all at once"


def point_result(level: LoadLevel, run: PointRun, config: BenchConfig) -> dict[str, Any]:
    """One entry of an arm's `points` (section C of the interfaces)."""
    lags_ms = np.asarray(run.lags_s or [0.0]) * 1000.0
    p99 = float(np.percentile(lags_ms, 99))
    records = sorted(run.records, key=lambda r: r.sent_at)
    return {
        "load": level.as_dict(),
        "summary": summarize(records, run.duration_s, goodput=config.goodput, cost=config.cost),
        "client": {
            "scheduling_lag_p50_ms": float(np.percentile(lags_ms, 50)),
            "scheduling_lag_p99_ms": p99,
            "scheduling_lag_max_ms": float(np.max(lags_ms)),
            "max_scheduling_lag_ms": config.max_scheduling_lag_ms,
            "num_processes": run.num_processes,
            "is_schedule_kept": p99 <= config.max_scheduling_lag_ms,
            "is_partial": run.is_partial,
        },
        "requests": request_rows(records, run.started_at),
    }


# -- metadata --------------------------------------------------------------------------
def metadata(config: BenchConfig, params: Mapping[str, object]) -> dict[str, Any]:
    goodput = config.goodput
    return {
        "git_sha": git_sha(),
        "command": config.command or shlex.join(["headway", *sys.argv[1:]]),
        "machine": machine_facts(),
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "headway_version": __version__,
        "workload": {"name": config.workload, "params": _json_ready(params)},
        "seed": config.seed,
        "model": config.model,
        "goodput": (
            None
            if goodput is None
            else {
                "ttft_ms": goodput.ttft_ms,
                "tpot_ms": goodput.tpot_ms,
                "e2el_ms": goodput.e2el_ms,
            }
        ),
        "gpu_count": config.cost.gpu_count if config.cost is not None else None,
        "gpu_hourly_usd": config.cost.gpu_hourly_usd if config.cost is not None else None,
        "num_requests": config.num_requests,
        "duration_s": config.duration_s,
        "num_client_processes": config.num_client_processes,
        "use_model_answers": config.use_model_answers,
        "reset_cache": config.reset_cache,
        "warnings": [],
        "is_partial": False,
    }


def _json_ready(value: object) -> Any:
    return json.loads(json.dumps(value, default=str))


async def target_versions(base_url: str) -> dict[str, Any]:
    """GET /version and /v1/models of a target (what answered, or why not)."""
    out: dict[str, Any] = {}
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for key, path in (("version", "/version"), ("models", "/v1/models")):
            try:
                async with http.get(base_url.rstrip("/") + path) as resp:
                    if resp.status == 200:
                        out[key] = await resp.json(content_type=None)
                    else:
                        out[key] = {"error": f"HTTP {resp.status}"}
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                out[key] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


async def _arm(bench: _BenchRun, target: BenchTarget) -> dict[str, Any]:
    return {
        "label": target.label,
        "base_url": target.base_url,
        "reset_urls": list(target.reset_urls),
        "target": {"versions": await target_versions(target.base_url)},
        "points": [],
    }


def _document(kind: str, bench: _BenchRun) -> dict[str, Any]:
    meta = metadata(bench.config, bench.workload.params())
    return {"schema": SCHEMA, "kind": kind, "metadata": meta, "arms": []}


def _finish(doc: dict[str, Any], bench: _BenchRun) -> dict[str, Any]:
    doc["metadata"]["warnings"] = list(bench.warnings)
    doc["metadata"]["is_partial"] = bench.is_partial
    return doc


# -- the three kinds of run ------------------------------------------------------------
async def run_bench(
    config: BenchConfig,
    *,
    stop_event: asyncio.Event | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """One load level against every target; results.json content of kind "run"."""
    bench = _BenchRun(config, stop_event, console)
    doc = _document("run", bench)
    for target in config.targets:
        if bench.is_stopped:
            break
        arm = await _arm(bench, target)
        arm["points"].append(await bench.run_point(target, config.level))
        doc["arms"].append(arm)
    return _finish(doc, bench)


def saturation_reason(previous: Mapping[str, Any] | None, point: Mapping[str, Any]) -> str | None:
    """Why a sweep stops after `point` (None: go on)."""
    summary = point["summary"]
    num = summary["completed"] + summary["failed"]
    if num and summary["failed"] / num > SATURATION_FAILED_SHARE:
        return f"{summary['failed']} of {num} requests failed"
    client = point["client"]
    if client["scheduling_lag_p99_ms"] > SATURATION_LAG_FACTOR * client["max_scheduling_lag_ms"]:
        return f"the client fell behind (p99 lag {client['scheduling_lag_p99_ms']:.1f} ms)"
    if previous is not None:
        before = previous["summary"]["output_throughput"]
        after = summary["output_throughput"]
        if before > 0 and after < before * (1 + SATURATION_GROWTH):
            return (
                f"output throughput grew {100 * (after / before - 1):.1f}% "
                f"(< {100 * SATURATION_GROWTH:g}%): saturated"
            )
    return None


async def run_sweep(
    config: BenchConfig,
    levels: Sequence[LoadLevel],
    *,
    stop_event: asyncio.Event | None = None,
    console: Console | None = None,
    is_stop_at_saturation: bool = True,
) -> dict[str, Any]:
    """Every target at each load level in order, stopping an arm early at saturation;
    results.json content of kind "sweep"."""
    if not levels:
        raise ValueError("levels: at least one load level is required")
    bench = _BenchRun(config, stop_event, console)
    doc = _document("sweep", bench)
    for target in config.targets:
        if bench.is_stopped:
            break
        arm = await _arm(bench, target)
        arm["sweep"] = {"stopped_early": None}
        previous: dict[str, Any] | None = None
        for level in levels:
            if bench.is_stopped:
                break
            point = await bench.run_point(target, level)
            arm["points"].append(point)
            reason = saturation_reason(previous, point) if is_stop_at_saturation else None
            if reason is not None and level != levels[-1]:
                arm["sweep"]["stopped_early"] = f"after {_level_text(level)}: {reason}"
                if console is not None:
                    console.print(f"{target.label}: sweep stopped {arm['sweep']['stopped_early']}")
                break
            previous = point
        doc["arms"].append(arm)
    return _finish(doc, bench)


def _attainment(point: Mapping[str, Any]) -> float:
    value = point["summary"].get("slo_attainment")
    return float(value) if value is not None else 0.0


async def run_slo_search(
    config: BenchConfig,
    spec: SloSearchSpec,
    *,
    stop_event: asyncio.Event | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Per target, the largest request rate in [rate_min, rate_max] whose SLO attainment
    is >= spec.attainment, by bisection to spec.tolerance; results.json of kind
    "slo-search" (each arm's probes are its points, in probe order)."""
    if config.goodput is None:
        raise ValueError("goodput: slo-search needs SLOs (--goodput)")
    bench = _BenchRun(config, stop_event, console)
    doc = _document("slo-search", bench)
    doc["metadata"]["slo_search"] = {
        "attainment": spec.attainment,
        "rate_min": spec.rate_min,
        "rate_max": spec.rate_max,
        "tolerance": spec.tolerance,
    }
    for target in config.targets:
        if bench.is_stopped:
            break
        arm = await _arm(bench, target)

        async def probe(
            rate: float, arm: dict[str, Any] = arm, target: BenchTarget = target
        ) -> bool:
            level = LoadLevel(rate, config.burstiness, config.max_concurrency)
            point = await bench.run_point(target, level)
            is_met = _attainment(point) >= spec.attainment
            point["slo_search"] = {"is_met": is_met}
            arm["points"].append(point)
            return is_met

        best: float | None = None
        lo, hi = spec.rate_min, spec.rate_max
        outcome = "bracketed"
        if await probe(hi):
            best, outcome = hi, "met at rate_max (the answer may be higher)"
        elif bench.is_stopped:
            outcome = "stopped"
        elif not await probe(lo):
            outcome = "not met at rate_min"
        else:
            best = lo
            while hi - lo > spec.tolerance and len(arm["points"]) < spec.max_probes:
                if bench.is_stopped:
                    outcome = "stopped"
                    break
                mid = (lo + hi) / 2
                if await probe(mid):
                    lo = best = mid
                else:
                    hi = mid
        arm["slo_search"] = {
            "max_request_rate": best,
            "bracket": [lo, hi] if best is not None else None,
            "outcome": outcome,
            "num_probes": len(arm["points"]),
        }
        doc["arms"].append(arm)
    return _finish(doc, bench)


def write_results(results: Mapping[str, Any], out_dir: Path) -> Path:
    """Write `results` as DIR/results.json (DIR created); returns the file's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_finite(results), indent=1, allow_nan=False, default=str) + "\n")
    tmp.replace(path)
    return path


def _finite(value: Any) -> Any:
    """`value` with every NaN / infinity replaced by None (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
