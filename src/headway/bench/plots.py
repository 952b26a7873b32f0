"""PNG plots of `headway bench` results: latency CDFs, latency against load, and the
throughput/interactivity Pareto plot.

matplotlib is imported inside the functions that draw (Agg canvas, no pyplot global
state), so importing this module costs nothing and `headway sim` never pays for it.
Per-request values come from the `requests` arrays of results.json and count only
successful requests; TPOT per request is (e2el - ttft) / (output_tokens - 1) for requests
with more than one output token (REFERENCE.md "Benchmark metric definitions").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, cast

import numpy as np

from headway.bench.report import is_unbounded_rate, iter_points, load_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

P = ParamSpec("P")
DPI = 110
# A CDF's x axis goes logarithmic when its 99th percentile is this many times its 1st.
LOG_SPREAD = 20.0
FONT_SIZES = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 10,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
}


@dataclass(frozen=True)
class Image:
    """A written plot and the caption the reports show under it."""

    caption: str
    path: Path


@dataclass(frozen=True)
class LatencySamples:
    """Per-request latencies (ms) of the successful requests of one point; ITL pooled."""

    ttft_ms: tuple[float, ...]
    tpot_ms: tuple[float, ...]
    itl_ms: tuple[float, ...]
    e2el_ms: tuple[float, ...]


def _num(x: object) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


def latency_samples(requests: Sequence[Mapping[str, Any]]) -> LatencySamples:
    """The per-request latencies of `requests` (a point's `requests` array)."""
    ttft: list[float] = []
    tpot: list[float] = []
    itl: list[float] = []
    e2el: list[float] = []
    for r in requests:
        if r.get("error") is not None:
            continue
        t, e, n = _num(r.get("ttft_s")), _num(r.get("e2el_s")), _num(r.get("output_tokens"))
        if t is not None:
            ttft.append(1e3 * t)
        if e is not None:
            e2el.append(1e3 * e)
        if t is not None and e is not None and n is not None and n > 1 and e >= t:
            tpot.append(1e3 * (e - t) / (n - 1))
        itl.extend(1e3 * g for g in (_num(x) for x in r.get("itl_s") or ()) if g is not None)
    return LatencySamples(tuple(ttft), tuple(tpot), tuple(itl), tuple(e2el))


def _new_figure(width_in: float, height_in: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")


def _styled(draw: Callable[P, Path]) -> Callable[P, Path]:
    """Run `draw` with the report's font sizes, leaving matplotlib's global rcParams alone."""

    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Path:
        import matplotlib

        with matplotlib.rc_context(cast(Any, FONT_SIZES)):
            return draw(*args, **kwargs)

    return wrapper


def _colors(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _is_wide(values: Sequence[float]) -> bool:
    positive = [v for v in values if v > 0]
    if len(positive) < 2 or len(positive) < len(values):
        return False
    lo, hi = np.percentile(positive, [1, 99])
    return bool(lo > 0 and hi / lo > LOG_SPREAD)


def _log_axis(ax: Axes, which: str, values: Sequence[float]) -> None:
    """Log scale with plain-number tick labels (100, 200, 500), not powers of ten; only
    powers of ten when the values span more than three decades (labels would collide)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    if which == "x":
        ax.set_xscale("log")
    else:
        ax.set_yscale("log")
    axis = ax.xaxis if which == "x" else ax.yaxis
    positive = [v for v in values if v > 0]
    num_decades = math.log10(max(positive) / min(positive)) if positive else 0.0
    subs = (1.0, 2.0, 5.0) if num_decades <= 3 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(lambda _v, _pos: ""))


# A CDF drawn from more samples than this is drawn from this many order statistics
# (evenly spaced ranks, first and last kept): the same curve at screen resolution, and a
# pooled ITL of millions of gaps stays fast to draw.
MAX_CDF_POINTS = 4000


def cdf_points(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The empirical CDF of `values` as (sorted x, percent of values <= x)."""
    xs = np.sort(np.asarray(values, dtype=float))
    ys = 100.0 * np.arange(1, len(xs) + 1) / len(xs)
    if len(xs) > MAX_CDF_POINTS:
        ranks = np.unique(np.linspace(0, len(xs) - 1, MAX_CDF_POINTS).round().astype(int))
        xs, ys = xs[ranks], ys[ranks]
    return xs, ys


def _cdf_axis(ax: Axes, name: str, series: Sequence[tuple[str, Sequence[float]]]) -> None:
    colors = _colors(len(series))
    pooled = [v for _, values in series for v in values]
    for (_, values), color in zip(series, colors, strict=True):
        if not values:
            continue
        xs, ys = cdf_points(values)
        ax.step(xs, ys, where="post", color=color, linewidth=1.8)
        # The median marked on the curve, so arms can be read off without a legend.
        ax.plot([float(np.percentile(xs, 50))], [50.0], marker="o", color=color, markersize=6)
    ax.set_title(name)
    ax.set_xlabel(f"{name} (ms{', log scale' if _is_wide(pooled) else ''})")
    ax.set_ylabel("requests at or below (%)" if name != "ITL" else "gaps at or below (%)")
    ax.set_ylim(0, 101)
    ax.set_yticks([0, 25, 50, 75, 90, 100])
    ax.grid(True, alpha=0.3, which="both")
    if not pooled:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    elif _is_wide(pooled):
        _log_axis(ax, "x", pooled)


@_styled
def plot_latency_cdfs(series: Sequence[tuple[str, LatencySamples]], title: str, path: Path) -> Path:
    """TTFT, TPOT, ITL and E2E CDFs in a 2x2 grid, one line per series (arm or file),
    medians marked with a dot; one legend for the figure, below the panels."""
    from matplotlib.lines import Line2D

    fig = _new_figure(12, 9)
    axes = fig.subplots(2, 2)
    panels = (
        ("TTFT", "ttft_ms"),
        ("TPOT", "tpot_ms"),
        ("ITL", "itl_ms"),
        ("E2E latency", "e2el_ms"),
    )
    for ax, (name, attr) in zip(axes.flat, panels, strict=True):
        _cdf_axis(ax, name, [(label, getattr(s, attr)) for label, s in series])
    handles = [
        Line2D(
            [],
            [],
            color=color,
            linewidth=2.5,
            marker="o",
            label=f"{label} ({len(s.ttft_ms):,} requests)",
        )
        for (label, s), color in zip(series, _colors(len(series)), strict=True)
    ]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=min(len(handles), 3),
        title="dot: median",
        frameon=False,
    )
    fig.suptitle(title, fontsize=14)
    fig.savefig(path)
    return path


@dataclass(frozen=True)
class _SweepPoint:
    x: float
    point: Mapping[str, Any]


def sweep_axis(results: Mapping[str, Any]) -> tuple[str, str]:
    """The load variable of a sweep: ("max_concurrency", label) when every point has an
    unbounded rate and a concurrency cap, else ("request_rate", label)."""
    loads = [p.get("load") or {} for _, p in iter_points(results)]
    if loads and all(
        is_unbounded_rate(ld.get("request_rate")) and ld.get("max_concurrency") is not None
        for ld in loads
    ):
        return "max_concurrency", "concurrency (requests in flight)"
    return "request_rate", "arrival rate (sessions/s)"


def _sweep_points(results: Mapping[str, Any], key: str) -> list[tuple[str, list[_SweepPoint]]]:
    out = []
    for arm in results.get("arms", []):
        pts = []
        for p in arm.get("points", []):
            x = _num((p.get("load") or {}).get(key))
            if x is not None:
                pts.append(_SweepPoint(x, p))
        out.append((str(arm.get("label", "?")), sorted(pts, key=lambda s: s.x)))
    return out


def _summary_value(point: Mapping[str, Any], key: str) -> float | None:
    summary = point.get("summary")
    return _num(summary.get(key)) if isinstance(summary, Mapping) else None


@_styled
def plot_sweep_latency(results: Mapping[str, Any], path: Path) -> Path:
    """TTFT and TPOT (p50 solid, p90 dashed) against the load, one color per arm."""
    key, x_label = sweep_axis(results)
    arms = _sweep_points(results, key)
    has_attainment = any(
        _summary_value(s.point, "slo_attainment") is not None for _, pts in arms for s in pts
    )
    num_panels = 3 if has_attainment else 2
    fig = _new_figure(6 * num_panels, 5.5)
    axes = fig.subplots(1, num_panels)
    colors = _colors(len(arms))
    for ax, metric, name in zip(axes, ("ttft", "tpot"), ("TTFT", "TPOT"), strict=False):
        values: list[float] = []
        for (label, pts), color in zip(arms, colors, strict=True):
            for pct, style, marker in (("median", "-", "o"), ("p90", "--", "s")):
                xy = [(s.x, _summary_value(s.point, f"{pct}_{metric}_ms")) for s in pts]
                xy_ok = [(x, y) for x, y in xy if y is not None]
                if not xy_ok:
                    continue
                values.extend(y for _, y in xy_ok)
                ax.plot(
                    *zip(*xy_ok, strict=True),
                    linestyle=style,
                    marker=marker,
                    color=color,
                    label=f"{label} {'p50' if pct == 'median' else pct}",
                )
        ax.set_title(f"{name} against load")
        _load_axis(ax, x_label, [s.x for _, pts in arms for s in pts])
        ax.set_ylabel(f"{name} (ms{', log scale' if _is_wide(values) else ''})")
        if _is_wide(values):
            _log_axis(ax, "y", values)
        ax.grid(True, alpha=0.3, which="both")
        if values:
            ax.legend(framealpha=0.9)
    if has_attainment:
        ax = axes[2]
        for (label, pts), color in zip(arms, colors, strict=True):
            xy = [(s.x, _summary_value(s.point, "slo_attainment")) for s in pts]
            xy_ok = [(x, 100 * y) for x, y in xy if y is not None]
            if xy_ok:
                ax.plot(*zip(*xy_ok, strict=True), marker="o", color=color, label=label)
        ax.set_title("SLO attainment against load")
        _load_axis(ax, x_label, [s.x for _, pts in arms for s in pts])
        ax.set_ylabel("requests meeting every SLO (%)")
        ax.set_ylim(0, 102)
        ax.grid(True, alpha=0.3)
        ax.legend(framealpha=0.9)
    fig.suptitle(f"Latency against load ({results.get('kind', 'sweep')})", fontsize=14)
    fig.savefig(path)
    return path


# Load levels spanning at least this ratio (1, 4, 16, 64) go on a log2 axis.
LOG_LOAD_RATIO = 8.0


def _load_axis(ax: Axes, label: str, loads: Sequence[float]) -> None:
    """The load axis of a sweep plot: log2 with a tick at each level when the levels are
    spread geometrically (1, 2, 4, ... 64), else linear."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xlabel(label)
    levels = sorted({x for x in loads if x > 0})
    if len(levels) >= 3 and levels[-1] / levels[0] >= LOG_LOAD_RATIO:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(levels))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel(f"{label}, log scale")


def pareto_front(xy: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (higher is better on both), by x."""
    front: list[tuple[float, float]] = []
    best_y = -math.inf
    for x, y in sorted(xy, key=lambda p: (-p[0], -p[1])):
        if y > best_y:
            front.append((x, y))
            best_y = y
    return sorted(front)


def _short_load(load: Mapping[str, Any] | None) -> str:
    load = load or {}
    if not is_unbounded_rate(load.get("request_rate")):
        return f"{float(load['request_rate']):g}/s"
    if load.get("max_concurrency") is not None:
        return f"c={load['max_concurrency']}"
    return "max"


def pareto_y_label(gpu_count: float | None) -> str:
    """The Pareto plot's y label: per GPU when the GPU count is known, else says why not."""
    if gpu_count is not None:
        return f"output tokens/s per GPU ({gpu_count:g} GPU{'' if gpu_count == 1 else 's'})"
    return "output tokens/s, whole target (gpu_count not recorded)"


@_styled
def plot_pareto(results: Mapping[str, Any], path: Path) -> Path:
    """Output tokens/s per GPU against tokens/s per user (1 / TPOT p50), one point per
    load level, the Pareto front of each arm drawn as a line."""
    meta = results.get("metadata") or {}
    gpu_count = _num(meta.get("gpu_count"))
    per_gpu = gpu_count is not None and gpu_count > 0
    fig = _new_figure(9, 6.5)
    ax = fig.subplots()
    arms = results.get("arms", [])
    all_xy: list[tuple[float, float]] = []
    for arm, color in zip(arms, _colors(len(arms)), strict=True):
        xy, names = [], []
        for p in arm.get("points", []):
            tpot = _summary_value(p, "median_tpot_ms")
            out = _summary_value(p, "output_throughput")
            if tpot is None or tpot <= 0 or out is None:
                continue
            xy.append((1e3 / tpot, out / gpu_count if per_gpu and gpu_count else out))
            names.append(_short_load(p.get("load")))
        if not xy:
            continue
        all_xy.extend(xy)
        label = str(arm.get("label", "?"))
        ax.scatter([x for x, _ in xy], [y for _, y in xy], color=color, s=36, zorder=3, alpha=0.6)
        front = pareto_front(xy)
        ax.plot(
            *zip(*front, strict=True),
            color=color,
            marker="o",
            linewidth=2,
            label=f"{label} (Pareto front)",
        )
        for (x, y), name in zip(xy, names, strict=True):
            ax.annotate(
                name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8, color=color
            )
    ax.set_xlabel("tokens/s per user (1 / TPOT p50)")
    ax.set_ylabel(pareto_y_label(gpu_count if per_gpu else None))
    ax.set_title("Throughput against interactivity: up and to the right is better")
    ax.grid(True, alpha=0.3)
    if all_xy:  # room for the load annotations; throughput from 0
        xs = [x for x, _ in all_xy]
        span = (max(xs) - min(xs)) or 0.2 * max(xs)
        ax.set_xlim(max(0.0, min(xs) - 0.1 * span), max(xs) + 0.15 * span)
        ax.set_ylim(0, 1.15 * max(y for _, y in all_xy))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(framealpha=0.9)
    else:
        ax.text(0.5, 0.5, "no point with a TPOT", ha="center", va="center", transform=ax.transAxes)
    fig.savefig(path)
    return path


def _is_sweep(results: Mapping[str, Any]) -> bool:
    return any(len(arm.get("points", [])) > 1 for arm in results.get("arms", []))


def write_plots(results: Mapping[str, Any], out_dir: Path) -> list[Image]:
    """Every plot that fits `results` as PNGs in `out_dir`: a CDF figure per load level
    (arms overlaid), and for sweeps latency against load; the Pareto plot always."""
    images: list[Image] = []
    groups: dict[str, list[tuple[str, Mapping[str, Any]]]] = {}
    for arm, point in iter_points(results):
        groups.setdefault(load_label(point.get("load")), []).append(
            (str(arm.get("label", "?")), point)
        )
    num_groups = len(groups)
    for i, (load, members) in enumerate(groups.items(), 1):
        name = "latency_cdf.png" if num_groups == 1 else f"latency_cdf_{i:02d}.png"
        series = [(label, latency_samples(p.get("requests") or ())) for label, p in members]
        title = f"Latency CDFs at {load}"
        plot_latency_cdfs(series, title, out_dir / name)
        images.append(Image(title, out_dir / name))
    if _is_sweep(results):
        path = plot_sweep_latency(results, out_dir / "latency_vs_load.png")
        images.append(Image("TTFT and TPOT against load", path))
    if groups:
        path = plot_pareto(results, out_dir / "pareto.png")
        images.append(Image("Output throughput against tokens/s per user", path))
    return images
