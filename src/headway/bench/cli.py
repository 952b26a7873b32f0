"""`headway bench`: measure one or more OpenAI-compatible targets (docs/bench.md).

headway bench --base-url URL [--base-url URL2 ...] --model M --workload NAME|FILE
              [--request-rate R [--burstiness G] | --max-concurrency C]
              [--num-requests N | --duration S] --out DIR
headway bench sweep      ... (--request-rates 1,2,4 | --concurrencies 1,8,32)
headway bench slo-search ... --goodput ttft:500 tpot:50 --rate-min 1 --rate-max 64
headway bench compare A/results.json B/results.json --out DIR
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shlex
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from headway.bench.api import (
    BenchConfig,
    BenchTarget,
    SloSearchSpec,
    run_bench,
    run_slo_search,
    run_sweep,
    write_results,
)
from headway.bench.client import DEFAULT_TIMEOUT_S
from headway.bench.runner import (
    DEFAULT_MAX_SCHEDULING_LAG_MS,
    LoadLevel,
    WorkerError,
    timer_kind_from_env,
)
from headway.cli_support import goodput_arg, key_value_arg, stop_on_first_sigint
from headway.core.serving_metrics import CostInputs, GoodputSlo

EXIT_INTERRUPTED = 130


# -- argument types (argparse names the option in their errors) ------------------------
def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _finite_positive_float(text: str) -> float:
    value = _positive_float(text)
    if math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {text!r}")
    return text.rstrip("/")


def _list_of(item: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        values = [item(x.strip()) for x in text.split(",") if x.strip()]
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        return values

    return parse


# -- the parsers ----------------------------------------------------------------------
def _add_run_arguments(p: argparse.ArgumentParser, is_required: bool = True) -> None:
    """The options every kind of run takes. On the `bench` parser itself they cannot be
    required (argparse would then demand them of `bench compare` too): checked in run."""
    t = p.add_argument_group("targets")
    t.add_argument("--base-url", type=_url, action="append", required=is_required, dest="base_urls", metavar="URL",
                   help="server to measure (without /v1); repeat for side-by-side arms")  # fmt: skip
    t.add_argument("--label", action="append", dest="labels", default=None, metavar="NAME",
                   help="name of each arm, in --base-url order (default: host:port)")  # fmt: skip
    t.add_argument("--model", required=is_required, help="model name sent in every request")
    t.add_argument("--reset-cache", action="store_true",
                   help="POST /reset_prefix_cache to each target (and --reset-url) before each of its points")  # fmt: skip
    t.add_argument("--reset-url", action="append", dest="reset_urls", default=[],
                   metavar="[LABEL=]URL",
                   help="another server to reset with --reset-cache (e.g. the engines behind a gateway); LABEL= binds it to one arm")  # fmt: skip
    t.add_argument("--request-timeout", type=_finite_positive_float, default=DEFAULT_TIMEOUT_S,
                   metavar="S", help=f"per-request timeout (default {DEFAULT_TIMEOUT_S:g} s)")  # fmt: skip
    w = p.add_argument_group("workload")
    w.add_argument("--workload", required=is_required, metavar="NAME|FILE",
                   help="synthetic, shared-prefix, multi-turn, agentic, long-context, or a trace / ShareGPT file")  # fmt: skip
    w.add_argument("--workload-param", type=key_value_arg, action="append", default=[],
                   metavar="KEY=VALUE", dest="workload_params",
                   help="a workload parameter (VALUE parsed as JSON when it is JSON)")  # fmt: skip
    w.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="tokenizer.json to count prompt tokens with (default: the shipped one)")  # fmt: skip
    w.add_argument("--seed", type=int, default=0, help="seed of the workload and the arrivals")
    w.add_argument("--use-model-answers", action="store_true",
                   help="send the model's real answers in later turns instead of the scripted ones")  # fmt: skip
    lo = p.add_argument_group("load and bounds")
    lo.add_argument("--burstiness", type=_finite_positive_float, default=1.0,
                    help="gamma shape of the arrival gaps (1 = Poisson, < 1 burstier)")  # fmt: skip
    bound = lo.add_mutually_exclusive_group()
    bound.add_argument("--num-requests", type=_positive_int, default=None, metavar="N",
                       help="stop after N calls")  # fmt: skip
    bound.add_argument("--duration", type=_finite_positive_float, default=None, metavar="S",
                       help="issue calls for S seconds")  # fmt: skip
    lo.add_argument("--num-client-processes", type=_positive_int, default=1, metavar="N",
                    help="split the sessions over N client processes")  # fmt: skip
    lo.add_argument("--max-scheduling-lag-ms", type=_finite_positive_float,
                    default=DEFAULT_MAX_SCHEDULING_LAG_MS,
                    help="p99 client lag above which a point is flagged (default %(default)s)")  # fmt: skip
    m = p.add_argument_group("metrics")
    m.add_argument("--goodput", type=goodput_arg, nargs="+", default=None, metavar="METRIC:MS",
                   help="SLOs, e.g. ttft:500 tpot:50 e2el:10000")  # fmt: skip
    m.add_argument("--gpu-count", type=_positive_int, default=None, help="GPUs serving a target")
    m.add_argument("--gpu-hourly-usd", type=_non_negative_float, default=None,
                   help="price of one GPU-hour (with --gpu-count)")  # fmt: skip
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, required=is_required, metavar="DIR",
                   help="results.json, summary.md, plots and report.html go here")  # fmt: skip
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    o.add_argument("--no-report", action="store_true", help="write results.json only")


def _add_load_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("load level")
    g.add_argument("--request-rate", type=_positive_float, default=None, metavar="R",
                   help="session arrivals per second (inf = all at once)")  # fmt: skip
    g.add_argument("--max-concurrency", type=_positive_int, default=None, metavar="C",
                   help="at most C sessions in flight")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_run_arguments(parser, is_required=False)
    _add_load_arguments(parser)
    parser.set_defaults(_bench_run=_run_single, _bench_parser=parser)
    sub = parser.add_subparsers(dest="bench_command", metavar="BENCH_COMMAND")

    sweep = sub.add_parser("sweep", help="one run per load level, stopping at saturation",
                           description="one run per load level, stopping at saturation")  # fmt: skip
    _add_run_arguments(sweep)
    levels = sweep.add_argument_group("levels").add_mutually_exclusive_group(required=True)
    levels.add_argument("--request-rates", type=_list_of(_positive_float), metavar="R1,R2,...")
    levels.add_argument("--concurrencies", type=_list_of(_positive_int), metavar="C1,C2,...")
    sweep.add_argument("--request-rate", type=_positive_float, default=None, metavar="R",
                       help="with --concurrencies: arrival rate of every level")  # fmt: skip
    sweep.add_argument("--max-concurrency", type=_positive_int, default=None, metavar="C",
                       help="with --request-rates: concurrency cap of every level")  # fmt: skip
    sweep.add_argument("--no-early-stop", action="store_true",
                       help="run every level even past saturation")  # fmt: skip
    sweep.set_defaults(_bench_run=_run_sweep, _bench_parser=sweep)

    slo = sub.add_parser("slo-search", help="largest request rate meeting the --goodput SLOs",
                         description="largest request rate whose SLO attainment is >= --attainment, by bisection")  # fmt: skip
    _add_run_arguments(slo)
    s = slo.add_argument_group("search")
    s.add_argument("--rate-min", type=_finite_positive_float, required=True, metavar="R")
    s.add_argument("--rate-max", type=_finite_positive_float, required=True, metavar="R")
    s.add_argument("--tolerance", type=_finite_positive_float, default=None, metavar="R",
                   help="stop when the bracket is this narrow (default: 5%% of --rate-max)")  # fmt: skip
    s.add_argument("--attainment", type=_finite_positive_float, default=90.0, metavar="PCT",
                   help="required share of requests meeting every SLO, percent (default 90)")  # fmt: skip
    s.add_argument("--max-probes", type=_positive_int, default=12)
    slo.add_argument("--max-concurrency", type=_positive_int, default=None, metavar="C")
    slo.set_defaults(_bench_run=_run_slo_search, _bench_parser=slo)

    cmp = sub.add_parser("compare", help="compare results.json files",
                         description="compare results.json files of earlier runs")  # fmt: skip
    cmp.add_argument("paths", nargs="+", type=Path, metavar="RESULTS",
                     help="results.json files (or the directories holding them)")  # fmt: skip
    cmp.add_argument("--out", type=Path, required=True, metavar="DIR")
    cmp.set_defaults(_bench_run=_run_compare, _bench_parser=cmp)


# -- building the config ------------------------------------------------------------
def _targets(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[BenchTarget, ...]:
    urls: list[str] = args.base_urls
    labels: list[str] = args.labels or []
    if labels and len(labels) != len(urls):
        parser.error(f"argument --label: {len(labels)} labels for {len(urls)} --base-url")
    if not labels:
        labels = [urlsplit(u).netloc for u in urls]
        if len(set(labels)) != len(labels):
            labels = [f"{i}:{label}" for i, label in enumerate(labels)]
    if len(set(labels)) != len(labels):
        parser.error(f"argument --label: labels must be unique, got {labels}")
    bound: dict[str, list[str]] = {label: [] for label in labels}
    shared: list[str] = []
    for raw in args.reset_urls:
        label, sep, rest = raw.partition("=")
        if sep and label in bound:
            bound[label].append(_checked_url(rest, parser))
        else:
            shared.append(_checked_url(raw, parser))
    if args.reset_urls and not args.reset_cache:
        parser.error("argument --reset-url: only meaningful with --reset-cache")
    return tuple(
        BenchTarget(url, label, tuple(shared + bound[label]))
        for url, label in zip(urls, labels, strict=True)
    )


def _checked_url(text: str, parser: argparse.ArgumentParser) -> str:
    try:
        return _url(text)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"argument --reset-url: {exc}")


def _config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> BenchConfig:
    if args.num_requests is None and args.duration is None:
        parser.error("one of the arguments --num-requests --duration is required")
    try:
        timer_kind_from_env()  # read again by each client process; named here if wrong
    except ValueError as exc:
        parser.error(f"environment: {exc}")
    goodput = None
    if args.goodput is not None:
        slo = dict(args.goodput)
        if len(slo) != len(args.goodput):
            parser.error("argument --goodput: a metric is given twice")
        goodput = GoodputSlo(**slo)
    if (args.gpu_count is None) != (args.gpu_hourly_usd is None):
        parser.error("arguments --gpu-count and --gpu-hourly-usd go together")
    cost = None
    if args.gpu_count is not None:
        cost = CostInputs(args.gpu_count, args.gpu_hourly_usd)
    rate = getattr(args, "request_rate", None)
    is_rate_given = rate is not None or getattr(args, "request_rates", None) is not None
    if args.burstiness != 1.0 and not is_rate_given and args.bench_command != "slo-search":
        parser.error("argument --burstiness: needs --request-rate")
    try:
        return BenchConfig(
            targets=_targets(args, parser),
            model=args.model,
            workload=args.workload,
            workload_params=dict(args.workload_params),
            request_rate=None if rate is None or math.isinf(rate) else rate,
            burstiness=args.burstiness,
            max_concurrency=getattr(args, "max_concurrency", None),
            num_requests=args.num_requests,
            duration_s=args.duration,
            goodput=goodput,
            cost=cost,
            reset_cache=args.reset_cache,
            seed=args.seed,
            tokenizer_path=args.tokenizer,
            num_client_processes=args.num_client_processes,
            use_model_answers=args.use_model_answers,
            show_progress=not args.no_progress,
            request_timeout_s=args.request_timeout,
            max_scheduling_lag_ms=args.max_scheduling_lag_ms,
            command=shlex.join(["headway", *sys.argv[1:]]),
        )
    except ValueError as exc:
        parser.error(str(exc))


# -- running --------------------------------------------------------------------------
def _run_until_done(
    main: Callable[[asyncio.Event], Coroutine[Any, Any, dict[str, Any]]],
) -> dict[str, Any]:
    """Run `main(stop_event)` on uvloop. The first Ctrl-C sets the stop event (the run
    ends with partial results); a second one cancels outright."""
    import uvloop

    async def wrapper() -> dict[str, Any]:
        return await main(stop_on_first_sigint("headway bench"))

    return uvloop.run(wrapper())


def _finish(results: dict[str, Any], args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console()
    path = write_results(results, args.out)
    if not args.no_report:
        try:
            from headway.bench import report

            report.write_report(results, args.out)
            report.print_summary(results, console)
        except (ImportError, AttributeError) as exc:
            print(f"headway bench: report not written ({exc})", file=sys.stderr)
    console.print(f"wrote {path}")
    if results["metadata"].get("is_partial"):
        print("headway bench: interrupted; partial results saved", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _execute(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    main: Callable[[asyncio.Event], Coroutine[Any, Any, dict[str, Any]]],
) -> int:
    try:
        results = _run_until_done(main)
    except (ValueError, FileNotFoundError) as exc:
        # Workload construction (bad --workload-param, unreadable trace file).
        parser.error(f"argument --workload/--workload-param: {exc}")
    except asyncio.CancelledError:
        print("headway bench: aborted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except WorkerError as exc:
        print(f"headway bench: error: {exc}", file=sys.stderr)
        return 1
    return _finish(results, args)


def _run_single(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args._bench_parser
    missing = [
        option
        for option, value in (
            ("--base-url", args.base_urls),
            ("--model", args.model),
            ("--workload", args.workload),
            ("--out", args.out),
        )
        if value is None
    ]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    config = _config(args, parser)
    return _execute(args, parser, lambda stop: run_bench(config, stop_event=stop))


def _run_sweep(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args._bench_parser
    config = _config(args, parser)
    levels: list[LoadLevel]
    if args.request_rates is not None:
        levels = [
            LoadLevel(None if math.isinf(r) else r, config.burstiness, config.max_concurrency)
            for r in args.request_rates
        ]
    else:
        levels = [LoadLevel(config.request_rate, config.burstiness, c) for c in args.concurrencies]
    return _execute(
        args,
        parser,
        lambda stop: run_sweep(
            config, levels, stop_event=stop, is_stop_at_saturation=not args.no_early_stop
        ),
    )


def _run_slo_search(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args._bench_parser
    if args.goodput is None:
        parser.error("the following arguments are required: --goodput")
    config = _config(args, parser)
    if not args.attainment <= 100:
        parser.error(f"argument --attainment: must be <= 100, got {args.attainment:g}")
    tolerance = args.tolerance if args.tolerance is not None else 0.05 * args.rate_max
    try:
        spec = SloSearchSpec(
            rate_min=args.rate_min,
            rate_max=args.rate_max,
            attainment=args.attainment / 100.0,
            tolerance=tolerance,
            max_probes=max(2, args.max_probes),
        )
    except ValueError as exc:
        parser.error(f"argument --rate-min/--rate-max: {exc}")
    return _execute(args, parser, lambda stop: run_slo_search(config, spec, stop_event=stop))


def _run_compare(args: argparse.Namespace) -> int:
    from rich.console import Console

    from headway.bench.compare import run_compare

    return int(run_compare(args.paths, args.out, Console()))


def run(args: argparse.Namespace) -> int:
    return int(args._bench_run(args))
