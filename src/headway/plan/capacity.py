"""Find the cheapest fleets that meet percentile SLOs at a request rate.

`headway plan capacity --model M --gpus h100,h200,b200 --precisions bf16,fp8,fp4
--tp 1,2,4,8 --workload NAME|FILE --rate R --slo ttft_p90:MS,tpot_p90:MS` tries every
GPU type x precision x TP x routing profile, finds for each the fewest replicas that
meet every SLO percentile at rate R with no failed request (`headway.plan.search`: the
analytic saturated throughput bounds the count, the cluster simulation decides), and
ranks the feasible ones by $ per 1M useful output tokens (by GPUs when no price is
known). For each: replicas and GPUs, goodput per GPU (output tokens/s of requests that
met the per-request limits), $ per 1M input / output / useful output tokens, joules per
output token. Configurations that cannot work are listed with the reason.

Prices are inputs: `--gpu-hourly-usd h100=2.5,b200=5` (example defaults below, the
middle of REFERENCE.md's public 2026 on-demand ranges), `--gpu-power-w` (default: the
catalog's board power), `--energy-usd-per-kwh` (default: none; when given, the energy
at board power is added to the hourly price, for owned hardware whose hourly figure
is amortised purchase only). `--out DIR` writes capacity.json, pareto.png and a
self-contained report.html. Bad input prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shlex
import sys
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, cast

from headway import __version__
from headway.cli_support import key_value_arg
from headway.core import tokenomics
from headway.core.catalog import Catalog, CatalogError
from headway.plan.search import (
    Candidate,
    EngineLimits,
    Outcome,
    Probe,
    Scenario,
    Slo,
    build_scenario,
    parse_slo,
    search,
)

EXIT_USAGE = 2
SCHEMA = "headway.plan.capacity/1"
# Example prices, $ per GPU-hour: the middle of the public on-demand ranges REFERENCE.md
# quotes for 2026 (H100 ~$2-5, H200 ~$2.5-7, B200 ~$4-6). Override with --gpu-hourly-usd.
EXAMPLE_GPU_HOURLY_USD: Mapping[str, float] = {
    "h100-sxm": 3.0,
    "h200": 3.5,
    "b200": 5.0,
    "gb200": 6.0,
}
DEFAULT_PROFILES = ("round-robin", "kv-aware")


class UsageError(Exception):
    """Bad command-line input; the message names the flag."""


@dataclass(frozen=True)
class Prices:
    """What a GPU-hour costs and what a GPU draws, by catalog GPU name."""

    gpu_hourly_usd: Mapping[str, float]
    gpu_power_w: Mapping[str, float]
    energy_usd_per_kwh: float | None = None

    def hourly_usd(self, gpu: str) -> float | None:
        """All-in $ per GPU-hour: the price, plus energy when a $/kWh is given."""
        price = self.gpu_hourly_usd.get(gpu)
        if price is None:
            return None
        if self.energy_usd_per_kwh is not None and gpu in self.gpu_power_w:
            price += tokenomics.energy_usd_per_gpu_hour(
                self.gpu_power_w[gpu], self.energy_usd_per_kwh
            )
        return price


@dataclass(frozen=True)
class Figures:
    """The economics of one feasible configuration at its replica count."""

    num_replicas: int
    num_gpus: int
    output_tokens_per_s_per_gpu: float
    goodput_tokens_per_s_per_gpu: float  # useful output tokens/s per GPU
    tokens_per_s_per_user: float | None  # 1 / TPOT p50
    slo_attainment: float
    gpu_hourly_usd: float | None
    usd_per_1m_input_tokens: float | None
    usd_per_1m_output_tokens: float | None
    usd_per_1m_useful_tokens: float | None
    usd_per_month: float | None
    joules_per_output_token: float | None


def figures(outcome: Outcome, prices: Prices) -> Figures | None:
    """The economics of `outcome`'s chosen probe; None when it is infeasible."""
    probe = outcome.best
    if probe is None or outcome.num_replicas is None or outcome.num_gpus is None:
        return None
    s = probe.summary
    gpus = outcome.num_gpus
    duration_s = float(s["duration"])

    def rate(key: str) -> float:
        return float(s[key]) / duration_s if duration_s > 0 else 0.0

    output_rate = float(s["output_throughput"])
    input_rate = rate("total_input_tokens")
    useful_rate = rate("total_useful_output_tokens")
    tpot_ms = float(s["median_tpot_ms"])
    gpu = outcome.gpu_name or outcome.candidate.gpu
    hourly = prices.hourly_usd(gpu)
    power = prices.gpu_power_w.get(gpu)

    def usd(tokens_per_s: float) -> float | None:
        return None if hourly is None else tokenomics.usd_per_1m_tokens(hourly, gpus, tokens_per_s)

    return Figures(
        num_replicas=outcome.num_replicas,
        num_gpus=gpus,
        output_tokens_per_s_per_gpu=output_rate / gpus,
        goodput_tokens_per_s_per_gpu=useful_rate / gpus,
        tokens_per_s_per_user=1e3 / tpot_ms if tpot_ms > 0 else None,
        slo_attainment=float(s["slo_attainment"] or 0.0),
        gpu_hourly_usd=hourly,
        usd_per_1m_input_tokens=usd(input_rate),
        usd_per_1m_output_tokens=usd(output_rate),
        usd_per_1m_useful_tokens=usd(useful_rate),
        usd_per_month=None if hourly is None else tokenomics.monthly_usd(gpus, hourly),
        joules_per_output_token=(
            None if power is None else tokenomics.joules_per_token(power, gpus, output_rate)
        ),
    )


def rank(outcomes: Sequence[Outcome], prices: Prices) -> list[tuple[Outcome, Figures]]:
    """Feasible outcomes, cheapest first: $ per 1M useful tokens (unpriced last), then
    GPUs, then goodput per GPU (higher first)."""
    rows = [(o, f) for o in outcomes if (f := figures(o, prices)) is not None]
    return sorted(
        rows,
        key=lambda r: (
            r[1].usd_per_1m_useful_tokens is None,
            r[1].usd_per_1m_useful_tokens or 0.0,
            r[1].num_gpus,
            -r[1].goodput_tokens_per_s_per_gpu,
        ),
    )


# -- command line -------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (__doc__ or "").split("\n\n")[0]
    one_line_errors(p)
    add_scenario_arguments(p)
    c = p.add_argument_group("search")
    c.add_argument("--gpus", default="h100", help="GPU types, comma-separated (catalog names)")
    c.add_argument("--precisions", default="bf16", help="precision presets, comma-separated")
    c.add_argument("--tp", default="1", help="tensor-parallel degrees, comma-separated")
    c.add_argument(
        "--profiles",
        default=",".join(DEFAULT_PROFILES),
        help="routing presets, comma-separated (default: round-robin,kv-aware)",
    )
    c.add_argument("--max-replicas", type=int, default=64, help="give up above this count")
    add_price_arguments(p)
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, help="write capacity.json, pareto.png, report.html here")
    o.add_argument("--json", action="store_true", help="print the JSON document")


def add_scenario_arguments(p: argparse.ArgumentParser, *, is_slo_required: bool = True) -> None:
    """Model, load and SLO flags shared by capacity, explain and the what-ifs."""
    p.add_argument("--model", required=True, help="catalog model")
    w = p.add_argument_group("load")
    w.add_argument("--workload", default="synthetic", help="workload name or trace file")
    w.add_argument(
        "--workload-param", type=key_value_arg, action="append", default=[], metavar="KEY=VALUE"
    )
    w.add_argument("--rate", type=float, required=True, help="sessions/s")
    w.add_argument("--burstiness", type=float, default=1.0)
    w.add_argument(
        "--num-requests", type=int, default=300, help="sessions simulated per probe (default 300)"
    )
    w.add_argument(
        "--slo", required=is_slo_required, help="targets, e.g. ttft_p90:500,tpot_p90:50 (ms)"
    )
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--tokenizer", help="tokenizer.json (default: the shipped one)")
    e = p.add_argument_group("engine")
    e.add_argument("--block-size", type=int, default=16)
    e.add_argument("--max-num-seqs", type=int, help="default: vLLM's by GPU memory")
    e.add_argument("--max-num-batched-tokens", type=int, help="default: vLLM's by GPU memory")
    e.add_argument("--catalog", action="append", default=[], metavar="FILE")


def add_price_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prices (inputs; see docs/planner.md)")
    example = ",".join(f"{k}={v:g}" for k, v in EXAMPLE_GPU_HOURLY_USD.items())
    g.add_argument(
        "--gpu-hourly-usd",
        default="",
        metavar="GPU=USD,...",
        help=f"$ per GPU-hour (example defaults: {example})",
    )
    g.add_argument(
        "--gpu-power-w", default="", metavar="GPU=W,...", help="default: catalog board power"
    )
    g.add_argument("--energy-usd-per-kwh", type=float, help="add energy at board power")


def one_line_errors(p: argparse.ArgumentParser) -> None:
    """argparse's own errors (a missing flag, "--tp abc") print the whole usage block
    first; keep them to the one line every other input error gets."""
    p.error = types.MethodType(_one_line_error, p)  # type: ignore[method-assign]


def _one_line_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    parser.exit(EXIT_USAGE, f"{parser.prog}: error: {message}\n")


def split_list(text: str, flag: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise UsageError(f"{flag}: at least one value is needed")
    return items


def _positive_ints(text: str, flag: str) -> list[int]:
    out = []
    for s in split_list(text, flag):
        try:
            n = int(s)
        except ValueError:
            raise UsageError(f"{flag}: expected integers, got {s!r}") from None
        if n < 1:
            raise UsageError(f"{flag}: must be >= 1, got {n}")
        out.append(n)
    return out


def _per_gpu(text: str, flag: str, catalog: Catalog) -> dict[str, float]:
    """`h100=2.5,b200=5` -> {catalog name: value}."""
    out: dict[str, float] = {}
    for item in (s.strip() for s in text.split(",") if s.strip()):
        name, sep, raw = item.partition("=")
        if not sep:
            raise UsageError(f"{flag}: expected GPU=VALUE, got {item!r}")
        try:
            gpu = catalog.gpu(name).name
        except CatalogError as exc:
            raise UsageError(f"{flag}: {exc}") from None
        try:
            value = float(raw)
        except ValueError:
            raise UsageError(f"{flag}: {name}: expected a number, got {raw!r}") from None
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f"{flag}: {name}: must be >= 0, got {raw!r}")
        out[gpu] = value
    return out


def load_catalog_arg(args: argparse.Namespace) -> Catalog:
    from headway.resources.catalog import load_catalog

    try:
        return load_catalog(args.catalog)
    except (CatalogError, OSError) as exc:
        raise UsageError(f"--catalog: {exc}") from None


def prices_from_args(args: argparse.Namespace, catalog: Catalog) -> Prices:
    hourly = dict(EXAMPLE_GPU_HOURLY_USD)
    hourly.update(_per_gpu(args.gpu_hourly_usd, "--gpu-hourly-usd", catalog))
    power = {name: g.board_power_w for name, g in catalog.gpus.items()}
    power.update(_per_gpu(args.gpu_power_w, "--gpu-power-w", catalog))
    kwh = args.energy_usd_per_kwh
    if kwh is not None and not (math.isfinite(kwh) and kwh >= 0):
        raise UsageError(f"--energy-usd-per-kwh: must be >= 0, got {kwh}")
    return Prices(hourly, power, kwh)


def scenario_from_args(args: argparse.Namespace, catalog: Catalog) -> tuple[Scenario, Slo]:
    """Check the shared flags and build the scenario; UsageError naming the flag."""
    from headway.bench.workload_source import build_from_source

    try:
        catalog.model(args.model)
    except CatalogError as exc:
        raise UsageError(f"--model: {exc}") from None
    if not (math.isfinite(args.rate) and args.rate > 0):
        raise UsageError(f"--rate: must be > 0, got {args.rate}")
    if not args.burstiness > 0:
        raise UsageError(f"--burstiness: must be > 0, got {args.burstiness}")
    for name in ("num_requests", "block_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}: must be >= 1")
    try:
        slo = parse_slo(args.slo) if args.slo is not None else Slo(())
    except ValueError as exc:
        raise UsageError(f"--slo: {exc}") from None
    try:
        workload, tokenizer = build_from_source(
            args.workload, dict(args.workload_param), args.tokenizer
        )
        scenario = build_scenario(
            workload,
            tokenizer,
            tokenizer.output_vocab(),
            num_sessions=args.num_requests,
            request_rate=args.rate,
            burstiness=args.burstiness,
            seed=args.seed,
        )
    except (ValueError, OSError) as exc:
        raise UsageError(f"--workload: {exc}") from None
    return scenario, slo


def limits_from_args(args: argparse.Namespace) -> EngineLimits:
    return EngineLimits(
        block_size=args.block_size,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )


def candidates_from_args(args: argparse.Namespace, catalog: Catalog) -> list[Candidate]:
    from headway.core.catalog import precision
    from headway.routing import KvBlockIndex, RoutingResources, build_handler

    gpus = []
    for name in split_list(args.gpus, "--gpus"):
        try:
            gpus.append(catalog.gpu(name).name)
        except CatalogError as exc:
            raise UsageError(f"--gpus: {exc}") from None
    precisions = split_list(args.precisions, "--precisions")
    for name in precisions:
        try:
            precision(name)
        except CatalogError as exc:
            raise UsageError(f"--precisions: {exc}") from None
    profiles = split_list(args.profiles, "--profiles")
    for name in profiles:
        try:
            build_handler({"preset": name}, resources=RoutingResources(kv_index=KvBlockIndex()))
        except ValueError as exc:
            raise UsageError(f"--profiles: {exc}") from None
    tps = _positive_ints(args.tp, "--tp")
    return [Candidate(g, p, t, r) for g in gpus for p in precisions for t in tps for r in profiles]


def run(args: argparse.Namespace) -> int:
    prog = "headway plan capacity"
    try:
        catalog = load_catalog_arg(args)
        scenario, slo = scenario_from_args(args, catalog)
        candidates = candidates_from_args(args, catalog)
        prices = prices_from_args(args, catalog)
        if args.max_replicas < 1:
            raise UsageError("--max-replicas: must be >= 1")
    except UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    def progress(c: Candidate, p: Probe) -> None:
        verdict = "meets the SLO" if p.is_feasible else "; ".join(p.misses)
        print(f"  {c.label}: {p.num_replicas} replicas: {verdict}", file=sys.stderr)

    outcomes = []
    for c in candidates:
        outcomes.append(
            search(
                args.model,
                c,
                scenario,
                catalog,
                slo,
                limits=limits_from_args(args),
                max_replicas=args.max_replicas,
                seed=args.seed,
                on_probe=progress,
            )
        )
    doc = document(args, scenario, slo, prices, outcomes)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_tables(doc)
    if args.out is not None:
        write_outputs(doc, args.out)
        print(f"report: {args.out / 'report.html'}", file=sys.stderr)
    return 0


# -- results --------------------------------------------------------------------------
def _round(x: float | None, digits: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, digits)


def outcome_json(o: Outcome, prices: Prices) -> dict[str, Any]:
    """One configuration's entry in capacity.json."""
    f = figures(o, prices)
    best = o.best
    out: dict[str, Any] = {
        "gpu": o.candidate.gpu,
        "precision": o.candidate.precision,
        "tp": o.candidate.tp,
        "profile": o.candidate.profile,
        "is_feasible": o.is_feasible,
        "reason": o.reason,
        "num_replicas": o.num_replicas,
        "num_gpus": o.num_gpus,
        "analytic_replicas": o.analytic_replicas,
        "saturated_output_tokens_per_s_per_replica": _round(o.saturated_output_tokens_per_s),
        "kv_capacity_tokens_per_replica": o.kv_capacity_tokens,
        "probes": [
            {
                "num_replicas": p.num_replicas,
                "is_feasible": p.is_feasible,
                "misses": list(p.misses),
                "p90_ttft_ms": _round(float(p.summary["p90_ttft_ms"])),
                "p90_tpot_ms": _round(float(p.summary["p90_tpot_ms"])),
            }
            for p in o.probes
        ],
    }
    if f is not None and best is not None:
        out["figures"] = {k: _round(v) for k, v in f.__dict__.items()}
        out["engines"] = {
            "prefix_hit_rate": _round(best.prefix_hit_rate),
            "num_preemptions": best.num_preemptions,
            "mean_busy_fraction": _round(best.mean_busy_fraction),
            "mean_decode_batch": _round(best.mean_decode_batch),
        }
        out["summary"] = {k: v for k, v in best.summary.items() if not isinstance(v, dict)}
    return out


def document(
    args: argparse.Namespace,
    scenario: Scenario,
    slo: Slo,
    prices: Prices,
    outcomes: Sequence[Outcome],
) -> dict[str, Any]:
    """capacity.json: inputs, then configurations ranked (feasible) or with reasons."""
    ranked = rank(outcomes, prices)
    infeasible = [o for o in outcomes if not o.is_feasible]
    return {
        "schema": SCHEMA,
        "metadata": {
            "command": shlex.join(["headway", *sys.argv[1:]]),
            "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "headway_version": __version__,
            "model": args.model,
            "workload": args.workload,
            "workload_params": {k: str(v) for k, v in args.workload_param},
            "request_rate": scenario.request_rate,
            "num_sessions_per_probe": scenario.num_sessions,
            "mean_prompt_tokens": _round(scenario.mean_prompt_tokens, 1),
            "mean_output_tokens": _round(scenario.mean_output_tokens, 1),
            "offered_output_tokens_per_s": _round(scenario.output_tokens_per_s, 1),
            "slo": {t.name: t.limit_ms for t in slo.targets},
            "gpu_hourly_usd": dict(prices.gpu_hourly_usd),
            "gpu_power_w": dict(prices.gpu_power_w),
            "energy_usd_per_kwh": prices.energy_usd_per_kwh,
            "seed": args.seed,
        },
        "ranked": [outcome_json(o, prices) for o, _ in ranked],
        "infeasible": [outcome_json(o, prices) for o in infeasible],
    }


def _usd(x: float | None) -> str:
    return "-" if x is None else f"{x:,.3f}"


def _num(x: float | None, fmt: str = ",.0f") -> str:
    return "-" if x is None else format(x, fmt)


def tables(doc: Mapping[str, Any]) -> list[Any]:
    """The ranked and the infeasible configurations as bench `TextTable`s."""
    from headway.bench.report import TextTable

    header = (
        "configuration",
        "replicas",
        "GPUs",
        "goodput tok/s/GPU",
        "output tok/s/GPU",
        "tok/s/user",
        "$/1M in",
        "$/1M out",
        "$/1M useful",
        "$/month",
        "J/out token",
        "TTFT p90 ms",
        "TPOT p90 ms",
    )
    rows = []
    for e in doc["ranked"]:
        f, s = e["figures"], e["summary"]
        rows.append(
            (
                f"{e['gpu']} {e['precision']} tp{e['tp']} {e['profile']}",
                str(f["num_replicas"]),
                str(f["num_gpus"]),
                _num(f["goodput_tokens_per_s_per_gpu"]),
                _num(f["output_tokens_per_s_per_gpu"]),
                _num(f["tokens_per_s_per_user"], ",.1f"),
                _usd(f["usd_per_1m_input_tokens"]),
                _usd(f["usd_per_1m_output_tokens"]),
                _usd(f["usd_per_1m_useful_tokens"]),
                _num(f["usd_per_month"]),
                _num(f["joules_per_output_token"], ",.2f"),
                _num(s["p90_ttft_ms"], ",.1f"),
                _num(s["p90_tpot_ms"], ",.2f"),
            )
        )
    meta = doc["metadata"]
    slo = ", ".join(f"{k} <= {v:g} ms" for k, v in meta["slo"].items())
    out = [
        TextTable(
            f"Feasible configurations at {meta['request_rate']:g} sessions/s ({slo}), cheapest "
            "first",
            header,
            tuple(rows),
            notes=(
                "$ figures charge the whole fleet's hourly price to each token kind; "
                "'useful' counts output of requests that met the per-request limits.",
            ),
        )
    ]
    if doc["infeasible"]:
        out.append(
            TextTable(
                "Infeasible configurations",
                ("configuration", "why"),
                tuple(
                    (f"{e['gpu']} {e['precision']} tp{e['tp']} {e['profile']}", str(e["reason"]))
                    for e in doc["infeasible"]
                ),
            )
        )
    return out


def print_tables(doc: Mapping[str, Any]) -> None:
    from rich.console import Console

    from headway.bench.report import rich_table

    console = Console(width=max(160, Console().width))
    for t in tables(doc):
        console.print(rich_table(t))
        for note in t.notes:
            console.print(note, style="dim", highlight=False, markup=False)
    if not doc["ranked"]:
        console.print("No configuration meets the SLO.", style="bold yellow")


def plot_pareto(doc: Mapping[str, Any], path: Path) -> Path:
    """Output tokens/s per GPU against tokens/s per user (1 / TPOT p50), one point per
    feasible configuration, one colour per GPU type, the Pareto front of all points."""
    import matplotlib
    from matplotlib.figure import Figure

    from headway.bench.plots import DPI, FONT_SIZES, pareto_front

    with matplotlib.rc_context(cast(Any, FONT_SIZES)):
        fig = Figure(figsize=(9, 6.5), dpi=DPI, layout="constrained")
        ax = fig.subplots()
        by_gpu: dict[str, list[tuple[float, float, str]]] = {}
        # The routing profile is named only when points differ in it.
        has_profiles = len({e["profile"] for e in doc["ranked"]}) > 1
        for e in doc["ranked"]:
            f = e["figures"]
            if f["tokens_per_s_per_user"] is None:
                continue
            profile = f" {e['profile']}" if has_profiles else ""
            label = f"{e['precision']} tp{e['tp']}{profile} x{f['num_replicas']}"
            by_gpu.setdefault(e["gpu"], []).append(
                (f["tokens_per_s_per_user"], f["output_tokens_per_s_per_gpu"], label)
            )
        cmap = matplotlib.colormaps["tab10"]
        all_xy: list[tuple[float, float]] = []
        for i, (gpu, pts) in enumerate(sorted(by_gpu.items())):
            color = cmap(i % 10)
            ax.scatter([x for x, _, _ in pts], [y for _, y, _ in pts], color=color, label=gpu)
            # Configurations that differ only in routing often land on one point.
            labels: dict[tuple[float, float], list[str]] = {}
            for x, y, label in pts:
                labels.setdefault((round(x, 3), round(y, 3)), []).append(label)
            for (x, y), names in labels.items():
                ax.annotate(
                    "\n".join(names), (x, y), textcoords="offset points", xytext=(5, 5), fontsize=7
                )
            all_xy.extend((x, y) for x, y, _ in pts)
        if all_xy:
            front = pareto_front(all_xy)
            ax.plot(*zip(*front, strict=True), color="black", linewidth=1, label="Pareto front")
            ax.set_ylim(0, 1.15 * max(y for _, y in all_xy))
            ax.legend(framealpha=0.9)
        else:
            ax.text(0.5, 0.5, "no feasible configuration", ha="center", transform=ax.transAxes)
        ax.set_xlabel("tokens/s per user (1 / TPOT p50)")
        ax.set_ylabel("output tokens/s per GPU")
        ax.set_title("Feasible configurations: up and to the right is better")
        ax.grid(True, alpha=0.3)
        fig.savefig(path)
    return path


def write_outputs(doc: Mapping[str, Any], out_dir: Path) -> None:
    """capacity.json, pareto.png and report.html in `out_dir`."""
    from headway.bench import html, plots

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "capacity.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    image = plots.Image(
        "Output tokens/s per GPU against tokens/s per user, feasible configurations",
        plot_pareto(doc, out_dir / "pareto.png"),
    )
    meta = doc["metadata"]
    html.write_html(
        out_dir / "report.html",
        title="Headway capacity plan",
        metadata=[(k, json.dumps(v) if isinstance(v, dict) else str(v)) for k, v in meta.items()],
        tables=tables(doc),
        images=[image],
    )
