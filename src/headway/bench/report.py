"""Reports of a `headway bench` results.json (schema `headway.bench/1`, docs/bench.md):
a rich table on the terminal, summary.md, PNG plots and one self-contained report.html.

Every view is built from one table model (`TextTable`), so the terminal, Markdown and
HTML show the same rows with the same formatting. A point is one load level of one arm;
points of different arms at the same load are shown side by side. Metrics a run did not
measure (no SLO, no cost inputs) get no row; a missing value in a row is shown as "-".
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SCHEMA = "headway.bench/1"
MISSING = "-"


@dataclass(frozen=True)
class Metric:
    """One row of a summary table: where the value lives and how to print it."""

    label: str
    key: str  # summary key, or "client.<key>" for the client block of a point
    fmt: Callable[[float], str]
    is_higher_better: bool | None = None  # None: neither (counts, lag)
    is_share: bool = False  # a fraction in [0, 1]: compared in percentage points

    def value(self, point: Mapping[str, Any]) -> float | None:
        """The metric's value in `point`, or None when it was not measured."""
        block, _, key = self.key.rpartition(".")
        source = point.get(block or "summary")
        if not isinstance(source, Mapping):
            return None
        raw = source.get(key)
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return None
        return float(raw)


@dataclass(frozen=True)
class TextTable:
    """A table of already formatted cells, shared by the terminal, Markdown and HTML."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    notes: tuple[str, ...] = field(default=())

    def is_numeric(self, column: int) -> bool:
        """Whether `column` holds numbers (right-aligned); the first never does."""
        return column > 0 and all(_looks_numeric(row[column]) for row in self.rows)


def _fmt_count(x: float) -> str:
    return f"{x:,.0f}"


def _fmt_rate(x: float) -> str:
    return f"{x:,.2f}" if abs(x) < 1000 else f"{x:,.0f}"


def fmt_ms(x: float) -> str:
    """Milliseconds with precision that suits the magnitude: 9.87, 98.7, 9,876."""
    return f"{x:,.2f}" if abs(x) < 10 else f"{x:,.1f}" if abs(x) < 1000 else f"{x:,.0f}"


def _fmt_share(x: float) -> str:
    return f"{100 * x:.1f}%"


def _fmt_usd(x: float) -> str:
    return f"${x:,.4f}" if abs(x) < 1 else f"${x:,.2f}"


def _latency(label: str, key: str) -> Metric:
    return Metric(label, key, fmt_ms, is_higher_better=False)


BASE_METRICS: tuple[Metric, ...] = (
    Metric("Requests completed", "completed", _fmt_count, is_higher_better=True),
    Metric("Requests failed", "failed", _fmt_count, is_higher_better=False),
    Metric("Request throughput (req/s)", "request_throughput", _fmt_rate, True),
    Metric("Output throughput (tok/s)", "output_throughput", _fmt_rate, True),
    Metric("Total token throughput (tok/s)", "total_token_throughput", _fmt_rate, True),
    _latency("TTFT mean (ms)", "mean_ttft_ms"),
    _latency("TTFT p50 (ms)", "median_ttft_ms"),
    _latency("TTFT p90 (ms)", "p90_ttft_ms"),
    _latency("TTFT p99 (ms)", "p99_ttft_ms"),
    _latency("TTFT-content p50 (ms)", "median_ttft_content_ms"),
    _latency("TPOT p50 (ms)", "median_tpot_ms"),
    _latency("TPOT p99 (ms)", "p99_tpot_ms"),
    _latency("ITL p50 (ms)", "median_itl_ms"),
    _latency("ITL p99 (ms)", "p99_itl_ms"),
    _latency("E2E p50 (ms)", "median_e2el_ms"),
    _latency("E2E p99 (ms)", "p99_e2el_ms"),
    Metric("Cached-token share", "cached_token_share", _fmt_share, True, is_share=True),
)
SLO_METRICS: tuple[Metric, ...] = (
    Metric("SLO attainment", "slo_attainment", _fmt_share, True, is_share=True),
    Metric("Goodput (req/s)", "request_goodput", _fmt_rate, True),
)
COST_METRICS: tuple[Metric, ...] = (
    Metric("Cost per 1M output tokens", "cost_per_1m_output_tokens_usd", _fmt_usd, False),
)
LAG_METRIC = Metric("Client lag p99 (ms)", "client.scheduling_lag_p99_ms", fmt_ms, None)


def iter_points(results: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    """(arm, point) for every point of every arm, arms in command order."""
    return [(arm, point) for arm in results.get("arms", []) for point in arm.get("points", [])]


def metrics_for(points: Sequence[Mapping[str, Any]]) -> tuple[Metric, ...]:
    """The rows worth showing for `points`: SLO and cost rows only where measured."""

    def measured(metrics: Sequence[Metric]) -> bool:
        return any(m.value(p) is not None for m in metrics for p in points)

    rows = list(BASE_METRICS)
    if measured(SLO_METRICS):
        rows.extend(SLO_METRICS)
    if measured(COST_METRICS):
        rows.extend(COST_METRICS)
    if measured((LAG_METRIC,)):
        rows.append(LAG_METRIC)
    return tuple(rows)


def is_unbounded_rate(rate: object) -> bool:
    """A request rate of None or inf means "send as fast as the concurrency cap allows"."""
    return rate is None or (isinstance(rate, int | float) and math.isinf(rate))


def load_label(load: Mapping[str, Any] | None) -> str:
    """A short human description of a load level, e.g. "4 sessions/s" or "concurrency 8"
    (the request rate counts session arrivals: single requests, chats or agent runs)."""
    load = load or {}
    rate = load.get("request_rate")
    concurrency = load.get("max_concurrency")
    burstiness = load.get("burstiness", 1.0)
    parts: list[str] = []
    if isinstance(rate, int | float) and not is_unbounded_rate(rate):
        parts.append(f"{rate:g} sessions/s")
        if isinstance(burstiness, int | float) and burstiness != 1.0:
            parts.append(f"burstiness {burstiness:g}")
    if concurrency is not None:
        parts.append(f"concurrency {concurrency}")
    return ", ".join(parts) or "unbounded rate"


def _load_key(load: Mapping[str, Any] | None) -> tuple[str, str, str]:
    load = load or {}
    return (
        repr(load.get("request_rate")),
        repr(load.get("burstiness", 1.0)),
        repr(load.get("max_concurrency")),
    )


def _lag_note(label: str, point: Mapping[str, Any]) -> str | None:
    client = point.get("client")
    if not isinstance(client, Mapping) or client.get("is_schedule_kept", True):
        return None
    lag = LAG_METRIC.value(point)
    lag_text = f" (p99 lag {fmt_ms(lag)} ms)" if lag is not None else ""
    return (
        f"WARNING: {label}: the client did not keep its send schedule{lag_text}; "
        "latencies and rates understate the target. Use --num-client-processes or a lower rate."
    )


def _failure_note(label: str, point: Mapping[str, Any]) -> str | None:
    summary = point.get("summary")
    kinds = summary.get("failures_by_kind") if isinstance(summary, Mapping) else None
    if not isinstance(kinds, Mapping) or not kinds:
        return None
    text = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
    return f"{label}: failures by kind: {text}"


def _rate_sort_key(load: Mapping[str, Any] | None) -> tuple[float, float]:
    load = load or {}
    rate, concurrency = load.get("request_rate"), load.get("max_concurrency")
    return (
        float(rate) if isinstance(rate, int | float) else math.inf,
        float(concurrency) if isinstance(concurrency, int | float) else math.inf,
    )


def summary_tables(results: Mapping[str, Any]) -> list[TextTable]:
    """One table per load level, arms side by side (arms missing a level are left out).
    Levels in run order; an SLO search's probes by rate."""
    groups: dict[tuple[str, str, str], list[tuple[Mapping[str, Any], Mapping[str, Any]]]] = {}
    for arm, point in iter_points(results):
        groups.setdefault(_load_key(point.get("load")), []).append((arm, point))
    ordered = list(groups.values())
    if results.get("kind") == "slo-search":
        ordered.sort(key=lambda members: _rate_sort_key(members[0][1].get("load")))
    tables = []
    num_groups = len(ordered)
    for i, members in enumerate(ordered, 1):
        points = [p for _, p in members]
        labels = [str(arm.get("label", f"arm {j}")) for j, (arm, _) in enumerate(members, 1)]
        rows = tuple((m.label, *(_cell(m, p) for p in points)) for m in metrics_for(points))
        notes = [
            note
            for label, p in zip(labels, points, strict=True)
            for note in (_lag_note(label, p), _failure_note(label, p))
            if note is not None
        ]
        load = load_label(points[0].get("load"))
        title = f"Load {i}/{num_groups}: {load}" if num_groups > 1 else f"Load: {load}"
        tables.append(TextTable(title, ("Metric", *labels), rows, tuple(notes)))
    return tables


def slo_search_table(results: Mapping[str, Any]) -> TextTable | None:
    """For an SLO search: each arm's largest request rate meeting the attainment target."""
    if results.get("kind") != "slo-search":
        return None
    meta = results.get("metadata") or {}
    spec = meta.get("slo_search")
    target = spec.get("attainment") if isinstance(spec, Mapping) else None
    rows = []
    for arm in results.get("arms", []):
        found = arm.get("slo_search") if isinstance(arm.get("slo_search"), Mapping) else {}
        best = found.get("max_request_rate")
        bracket = found.get("bracket")
        rows.append(
            (
                str(arm.get("label", "?")),
                MISSING if best is None else f"{best:.3g} sessions/s",
                MISSING if not bracket else f"[{bracket[0]:.3g}, {bracket[1]:.3g}]",
                str(found.get("outcome", MISSING)),
                str(found.get("num_probes", len(arm.get("points", [])))),
            )
        )
    goal = f" with >= {100 * target:g}% SLO attainment" if isinstance(target, int | float) else ""
    return TextTable(
        f"SLO search: largest request rate{goal}",
        ("Arm", "Max rate", "Bracket", "Outcome", "Probes"),
        tuple(rows),
    )


# (short column name, metric): the overview has one column per arm and metric.
OVERVIEW_METRICS: tuple[tuple[str, Metric], ...] = (
    ("out tok/s", BASE_METRICS[3]),
    ("TTFT p50 ms", BASE_METRICS[6]),
    ("TTFT p99 ms", BASE_METRICS[8]),
    ("TPOT p50 ms", BASE_METRICS[10]),
    ("SLO met", SLO_METRICS[0]),
)


def overview_table(results: Mapping[str, Any]) -> TextTable | None:
    """For several load levels: one row per level, a few key metrics of every arm, so a
    sweep reads at a glance (None for a single level)."""
    groups: dict[tuple[str, str, str], dict[str, Mapping[str, Any]]] = {}
    labels: list[str] = []
    for arm, point in iter_points(results):
        label = str(arm.get("label", "?"))
        if label not in labels:
            labels.append(label)
        groups.setdefault(_load_key(point.get("load")), {})[label] = point
    if len(groups) < 2:
        return None
    points = [p for members in groups.values() for p in members.values()]
    columns = [(n, m) for n, m in OVERVIEW_METRICS if any(m.value(p) is not None for p in points)]
    ordered = sorted(
        groups.values(), key=lambda m: _rate_sort_key(next(iter(m.values())).get("load"))
    )
    header = ["Load"] + [f"{label} {name}" for label in labels for name, _ in columns]
    rows = []
    for members in ordered:
        load = load_label(next(iter(members.values())).get("load"))
        cells = [
            _cell(m, members[label]) if label in members else MISSING
            for label in labels
            for _, m in columns
        ]
        rows.append((load, *cells))
    return TextTable("Overview: key metrics by load level", tuple(header), tuple(rows))


def report_tables(results: Mapping[str, Any]) -> list[TextTable]:
    """Every table of a report: the SLO search answer (if any), the overview (several
    load levels), then one per load level."""
    first = [slo_search_table(results), overview_table(results)]
    return [t for t in first if t is not None] + summary_tables(results)


def run_notes(results: Mapping[str, Any]) -> list[str]:
    """Run-wide notes: partial results, runner warnings, sweeps stopped early."""
    meta = results.get("metadata") or {}
    notes = []
    if meta.get("is_partial"):
        notes.append("WARNING: partial results: the run was stopped before it finished.")
    # The runner's per-point schedule warnings are already notes of their tables.
    notes.extend(f"WARNING: {w}" for w in meta.get("warnings") or () if "schedule" not in str(w))
    for arm in results.get("arms", []):
        sweep = arm.get("sweep")
        if isinstance(sweep, Mapping) and sweep.get("stopped_early"):
            notes.append(f"{arm.get('label', '?')}: sweep stopped {sweep['stopped_early']}")
    return notes


def _cell(metric: Metric, point: Mapping[str, Any]) -> str:
    value = metric.value(point)
    return MISSING if value is None else metric.fmt(value)


def _looks_numeric(cell: str) -> bool:
    return cell == MISSING or cell[:1].isdigit() or cell[:1] in "$-+["


def rich_table(table: TextTable) -> Table:
    """`table` as a rich Table (numbers right-aligned)."""
    out = Table(title=table.title, title_justify="left")
    for j, name in enumerate(table.header):
        out.add_column(name, justify="right" if table.is_numeric(j) else "left", no_wrap=j == 0)
    for row in table.rows:
        out.add_row(*row)
    return out


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table(table: TextTable) -> str:
    """`table` as a GitHub-flavoured Markdown table with its title and notes."""
    lines = [f"### {table.title}", ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in table.header) + " |")
    aligns = ("---:" if table.is_numeric(j) else "---" for j in range(len(table.header)))
    lines.append("|" + "|".join(aligns) + "|")
    lines.extend("| " + " | ".join(_md_escape(c) for c in row) + " |" for row in table.rows)
    if table.notes:
        lines.append("")
        lines.extend(f"* {_md_escape(n)}" for n in table.notes)
    return "\n".join(lines) + "\n"


def metadata_items(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The run's metadata as (name, text) pairs, for the Markdown and HTML headers."""
    meta = results.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    items: list[tuple[str, str]] = [("kind", str(results.get("kind", "run")))]
    workload = meta.get("workload")
    if isinstance(workload, Mapping):
        params = workload.get("params")
        text = str(workload.get("name", "?"))
        if isinstance(params, Mapping) and params:
            text += " (" + ", ".join(f"{k}={_param_text(v)}" for k, v in params.items()) + ")"
        items.append(("workload", text))
    for key in ("command", "model", "git_sha", "headway_version", "started_at", "seed"):
        if meta.get(key) is not None:
            items.append((key.replace("_", " "), str(meta[key])))
    goodput = meta.get("goodput")
    if isinstance(goodput, Mapping):
        slo = ", ".join(f"{k} <= {v}" for k, v in goodput.items() if v is not None)
        items.append(("goodput SLO", slo or "none"))
    if meta.get("gpu_count") is not None:
        items.append(("GPUs", str(meta["gpu_count"])))
    if meta.get("gpu_hourly_usd") is not None:
        items.append(("GPU price", f"${meta['gpu_hourly_usd']}/h"))
    machine = meta.get("machine")
    if isinstance(machine, Mapping) and machine:
        items.append(("machine", ", ".join(f"{k}={v}" for k, v in machine.items())))
    for arm in results.get("arms", []):
        target = arm.get("target")
        versions = target.get("versions") if isinstance(target, Mapping) else None
        text = str(arm.get("base_url", "?"))
        version_text = _versions_text(versions) if isinstance(versions, Mapping) else ""
        if version_text:
            text += f" ({version_text})"
        items.append((f"arm {arm.get('label', '?')}", text))
    return items


def _param_text(value: object) -> str:
    """A workload parameter as written on the command line: a length or delay
    distribution as `kind:mean[:field=value,...]` (just the mean when constant)."""
    if isinstance(value, Mapping):
        mean_key = "mean" if "mean" in value else "mean_s" if "mean_s" in value else None
        if mean_key is not None and "kind" in value:
            if value["kind"] == "constant":
                return (
                    f"{value[mean_key]:g}"
                    if isinstance(value[mean_key], float)
                    else str(value[mean_key])
                )
            extra = ",".join(
                f"{k}={v}"
                for k, v in value.items()
                if k not in ("kind", mean_key) and v is not None
            )
            return f"{value['kind']}:{value[mean_key]}" + (f":{extra}" if extra else "")
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def _versions_text(versions: Mapping[str, Any]) -> str:
    """What a target said about itself, short: "version 0.11.0, models llama-3.1-8b"."""
    parts = []
    for key, value in versions.items():
        if isinstance(value, Mapping):
            if "error" in value:
                continue
            data = value.get("data")
            if isinstance(data, list):
                ids = [str(m.get("id")) for m in data if isinstance(m, Mapping)]
                parts.append(f"{key} {', '.join(ids)}")
            elif "version" in value:
                parts.append(f"{key} {value['version']}")
        elif value is not None:
            parts.append(f"{key} {value}")
    return "; ".join(parts)


def summary_markdown(results: Mapping[str, Any], extra_tables: Sequence[TextTable] = ()) -> str:
    """summary.md: the metadata, then the tables (`extra_tables` after the bench's)."""
    lines = ["# Headway bench summary", ""]
    lines.extend(f"* **{name}**: {_md_escape(text)}" for name, text in metadata_items(results))
    lines.append("")
    notes = run_notes(results)
    if notes:
        lines.extend(["## Notes", ""] + [f"* {_md_escape(n)}" for n in notes] + [""])
    lines.extend(markdown_table(t) for t in (*report_tables(results), *extra_tables))
    return "\n".join(lines)


def print_summary(results: Mapping[str, Any], console: Console) -> None:
    """Print one table per load level (arms side by side) and any warnings."""
    for table in report_tables(results):
        console.print(rich_table(table))
        for note in table.notes:
            style = "bold yellow" if note.startswith("WARNING") else "dim"
            console.print(note, style=style, highlight=False, markup=False)
    for note in run_notes(results):
        style = "bold yellow" if note.startswith("WARNING") else ""
        console.print(note, style=style, highlight=False, markup=False)


def write_report(
    results: Mapping[str, Any], out_dir: Path, *, extra_tables: Sequence[TextTable] = ()
) -> None:
    """Write summary.md, the PNG plots and a self-contained report.html into `out_dir`;
    `extra_tables` (what a caller measured besides the bench, e.g. the demo's calls per
    replica) follow the bench's tables."""
    from headway.bench import html, plots  # matplotlib / jinja2 only when a report is made

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.md").write_text(summary_markdown(results, extra_tables), encoding="utf-8")
    images = plots.write_plots(results, out_dir)
    html.write_html(
        out_dir / "report.html",
        title="Headway bench report",
        metadata=metadata_items(results),
        tables=[*report_tables(results), *extra_tables],
        images=images,
        notes=run_notes(results),
    )
