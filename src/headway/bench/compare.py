"""`headway bench compare A/results.json B/results.json ...`: the key metrics of every
arm (and load level) of several runs side by side, each with its relative change against
the first column.

Inputs are validated before anything is printed: a file that is missing, is not JSON, or
lacks a key of schema `headway.bench/1` (docs/bench.md) is reported on one line naming
the file and the key, and the exit status is 2. A relative change is shown only where the
first column's value is a non-zero number (shares: the difference in percentage points); "better"/"worse" colouring follows the
metric's direction (throughput up is better, latency up is worse).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from headway.bench.report import (
    MISSING,
    SCHEMA,
    Metric,
    TextTable,
    load_label,
    markdown_table,
    metrics_for,
)

KINDS = ("run", "sweep", "slo-search")
RESULTS_FILE = "results.json"


class CompareInputError(ValueError):
    """A results file that cannot be compared; the message names the file and the key."""


@dataclass(frozen=True)
class Column:
    """One compared point: a load level of an arm of one results file."""

    label: str
    source: Path
    point: Mapping[str, Any]
    workload: str = ""  # the file's workload, parameters and seed: what it measured


@dataclass(frozen=True)
class Cell:
    """A formatted value and its change against the first column: relative (%), or in
    percentage points for shares (a cache hit share going 40% -> 60% is +20.0 pp)."""

    text: str
    change_pct: float | None = None
    is_better: bool | None = None
    is_points: bool = False

    @property
    def change_text(self) -> str:
        """e.g. "(+12.0%)", "(+20.0 pp)", or "" without a change."""
        if self.change_pct is None:
            return ""
        return f"({self.change_pct:+.1f}{' pp' if self.is_points else '%'})"

    def plain(self) -> str:
        """The cell as plain text, e.g. "81.3 (+12.0%)"."""
        return f"{self.text} {self.change_text}" if self.change_pct is not None else self.text


def _require(
    obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, path: Path
) -> Any:
    if key not in obj:
        raise CompareInputError(f"{path}: missing key {where}{key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise CompareInputError(
            f"{path}: {where}{key!r} must be {names}, got {type(value).__name__}"
        )
    return value


def validate_results(data: object, path: Path) -> Mapping[str, Any]:
    """`data` if it is a results.json of schema headway.bench/1, else CompareInputError."""
    if not isinstance(data, Mapping):
        raise CompareInputError(f"{path}: expected a JSON object, got {type(data).__name__}")
    schema = _require(data, "schema", str, "", path)
    if schema != SCHEMA:
        raise CompareInputError(f"{path}: 'schema' is {schema!r}, expected {SCHEMA!r}")
    kind = _require(data, "kind", str, "", path)
    if kind not in KINDS:
        raise CompareInputError(f"{path}: 'kind' is {kind!r}, expected one of {KINDS}")
    _require(data, "metadata", Mapping, "", path)
    arms = _require(data, "arms", list, "", path)
    if not arms:
        raise CompareInputError(f"{path}: 'arms' is empty")
    for i, arm in enumerate(arms):
        where = f"arms[{i}]."
        if not isinstance(arm, Mapping):
            raise CompareInputError(f"{path}: arms[{i}] must be an object")
        _require(arm, "label", str, where, path)
        points = _require(arm, "points", list, where, path)
        if not points:
            raise CompareInputError(f"{path}: {where}'points' is empty")
        for j, point in enumerate(points):
            pwhere = f"{where}points[{j}]."
            if not isinstance(point, Mapping):
                raise CompareInputError(f"{path}: {where}points[{j}] must be an object")
            _require(point, "load", Mapping, pwhere, path)
            _require(point, "summary", Mapping, pwhere, path)
            if "requests" in point and not isinstance(point["requests"], list):
                raise CompareInputError(f"{path}: {pwhere}'requests' must be list")
    return data


def load_results(path: Path) -> Mapping[str, Any]:
    """Read and validate one results.json."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CompareInputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CompareInputError(f"{path}: not valid JSON: {exc}") from None
    return validate_results(data, path)


def _file_names(paths: Sequence[Path]) -> list[str]:
    """Short distinct names: the parent folder for `.../results.json`, else the stem."""
    names = [p.parent.name if p.stem == "results" and p.parent.name else p.stem for p in paths]
    if len(set(names)) < len(names):
        names = [f"{n}#{i}" for i, n in enumerate(names, 1)]
    return names


def columns_of(loaded: Sequence[tuple[Path, Mapping[str, Any]]]) -> list[Column]:
    """Every (file, arm, load level) in input order."""
    names = _file_names([p for p, _ in loaded])
    columns = []
    for name, (path, results) in zip(names, loaded, strict=True):
        meta = results["metadata"]
        workload = json.dumps([meta.get("workload"), meta.get("seed")], sort_keys=True, default=str)
        is_multi_load = any(len(arm["points"]) > 1 for arm in results["arms"])
        for arm in results["arms"]:
            for point in arm["points"]:
                label = f"{name}: {arm['label']}"
                if is_multi_load:
                    label += f" @ {load_label(point.get('load'))}"
                columns.append(Column(label, path, point, workload))
    return columns


def _change(metric: Metric, base: float | None, value: float | None) -> Cell:
    if value is None:
        return Cell(MISSING)
    text = metric.fmt(value)
    if base is None or not math.isfinite(base):
        return Cell(text)
    if metric.is_share:
        change = 100.0 * (value - base)
    elif base == 0:
        return Cell(text)
    else:
        change = 100.0 * (value - base) / abs(base)
    is_better = None
    if metric.is_higher_better is not None and change != 0:
        is_better = (change > 0) == metric.is_higher_better
    return Cell(text, change, is_better, is_points=metric.is_share)


def compare_cells(columns: Sequence[Column]) -> list[tuple[Metric, list[Cell]]]:
    """Each metric row: the first column's value, then the others with their change."""
    rows = []
    for metric in metrics_for([c.point for c in columns]):
        values = [metric.value(c.point) for c in columns]
        first = Cell(MISSING if values[0] is None else metric.fmt(values[0]))
        rows.append((metric, [first] + [_change(metric, values[0], v) for v in values[1:]]))
    return rows


def compare_table(columns: Sequence[Column]) -> TextTable:
    """The comparison as a plain table (Markdown and HTML)."""
    rows = tuple(
        (metric.label, *(cell.plain() for cell in cells))
        for metric, cells in compare_cells(columns)
    )
    notes = [
        f"WARNING: {c.label}: the client did not keep its send schedule"
        for c in columns
        if isinstance(c.point.get("client"), Mapping)
        and not c.point["client"].get("is_schedule_kept", True)
    ]
    if len({c.workload for c in columns}) > 1:
        files = sorted({str(c.source) for c in columns if c.workload != columns[0].workload})
        notes.append(
            f"WARNING: {', '.join(files)} ran another workload (name, parameters or seed) "
            f"than {columns[0].source}: the columns are not like for like"
        )
    title = f"Compared against {columns[0].label}"
    return TextTable(title, ("Metric", *(c.label for c in columns)), rows, tuple(notes))


def _rich_compare(columns: Sequence[Column]) -> Table:
    table = Table(title=f"Compared against {columns[0].label}", title_justify="left")
    table.add_column("Metric", no_wrap=True)
    for c in columns:
        table.add_column(c.label, justify="right")
    for metric, cells in compare_cells(columns):
        row = []
        for cell in cells:
            text = Text(cell.text)
            if cell.change_pct is not None:
                style = {True: "green", False: "red", None: "dim"}[cell.is_better]
                text.append(f" {cell.change_text}", style=style)
            row.append(text)
        table.add_row(metric.label, *row)
    return table


def compare_markdown(
    loaded: Sequence[tuple[Path, Mapping[str, Any]]], columns: Sequence[Column]
) -> str:
    """compare.md: the files compared, then the table."""
    lines = ["# Headway bench compare", ""]
    for name, (path, results) in zip(_file_names([p for p, _ in loaded]), loaded, strict=True):
        meta = results["metadata"]
        workload = meta.get("workload") if isinstance(meta.get("workload"), Mapping) else {}
        lines.append(
            f"* **{name}**: `{path}` ({results['kind']}, workload "
            f"{(workload or {}).get('name', '?')}, git {meta.get('git_sha') or '?'})"
        )
    lines.append("")
    lines.append(markdown_table(compare_table(columns)))
    return "\n".join(lines)


def _metadata(loaded: Sequence[tuple[Path, Mapping[str, Any]]]) -> list[tuple[str, str]]:
    items = []
    for name, (path, results) in zip(_file_names([p for p, _ in loaded]), loaded, strict=True):
        meta = results["metadata"]
        text = f"{path} ({results['kind']})"
        if meta.get("command"):
            text += f": {meta['command']}"
        if meta.get("git_sha"):
            text += f" [git {meta['git_sha']}]"
        items.append((name, text))
    return items


def write_compare(
    loaded: Sequence[tuple[Path, Mapping[str, Any]]], columns: Sequence[Column], out_dir: Path
) -> None:
    """compare.md, the overlaid latency CDFs and report.html in `out_dir`."""
    from headway.bench import html, plots  # matplotlib / jinja2 only when writing

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.md").write_text(compare_markdown(loaded, columns), encoding="utf-8")
    series = [(c.label, plots.latency_samples(c.point.get("requests") or ())) for c in columns]
    cdf = plots.plot_latency_cdfs(series, "Latency CDFs, overlaid", out_dir / "compare_cdf.png")
    html.write_html(
        out_dir / "report.html",
        title="Headway bench compare",
        metadata=_metadata(loaded),
        tables=[compare_table(columns)],
        images=[plots.Image("Latency CDFs of every compared point", cdf)],
    )


def run_compare(paths: Sequence[Path], out_dir: Path | None, console: Console) -> int:
    """Load, validate and compare `paths` (results.json files, or the directories that
    hold them); print the table, write compare.md and report.html into `out_dir` when
    given. 0 on success, 2 on bad input."""
    if not paths:
        console.print("headway bench compare: error: no results files given", style="red")
        return 2
    loaded = []
    try:
        for raw in paths:
            path = Path(raw)
            if path.is_dir():  # a run's output directory
                path = path / RESULTS_FILE
            loaded.append((path, load_results(path)))
    except CompareInputError as exc:
        console.print(
            f"headway bench compare: error: {exc}", style="red", highlight=False, markup=False
        )
        return 2
    columns = columns_of(loaded)
    console.print(_rich_compare(columns))
    for note in compare_table(columns).notes:
        console.print(note, style="bold yellow", highlight=False, markup=False)
    if out_dir is not None:
        write_compare(loaded, columns, out_dir)
        console.print(
            f"Wrote {out_dir / 'compare.md'} and {out_dir / 'report.html'}",
            highlight=False,
            markup=False,
        )
    return 0
