"""Bench reports (terminal table, summary.md, PNGs, report.html) from hand-made results
dicts shaped like results.json (docs/bench.md). `make_results` is the fixture builder;
the compare tests import it too."""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from headway.bench import plots
from headway.bench.report import (
    TextTable,
    print_summary,
    summary_markdown,
    summary_tables,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _summary(
    requests: list[dict[str, Any]], duration_s: float, *, slo: bool, cost: bool
) -> dict[str, Any]:
    ok = [r for r in requests if r["error"] is None]
    out_tokens = sum(r["output_tokens"] for r in ok)
    in_tokens = sum(r["prompt_tokens"] for r in ok)
    ms = {
        "ttft": [1e3 * r["ttft_s"] for r in ok],
        "ttft_content": [1e3 * r["ttft_content_s"] for r in ok],
        "tpot": [1e3 * (r["e2el_s"] - r["ttft_s"]) / (r["output_tokens"] - 1) for r in ok],
        "ntpot": [1e3 * r["e2el_s"] / r["output_tokens"] for r in ok],
        "itl": [1e3 * g for r in ok for g in r["itl_s"]],
        "e2el": [1e3 * r["e2el_s"] for r in ok],
    }
    s: dict[str, Any] = {
        "duration": duration_s,
        "completed": len(ok),
        "failed": len(requests) - len(ok),
        "total_input_tokens": in_tokens,
        "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration_s,
        "request_goodput": None,
        "output_throughput": out_tokens / duration_s,
        "total_token_throughput": (in_tokens + out_tokens) / duration_s,
        "cached_token_share": sum(r["cached_tokens"] for r in ok) / in_tokens,
        "slo_attainment": None,
        "failures_by_kind": {"http_5xx": len(requests) - len(ok)}
        if len(ok) < len(requests)
        else {},
    }
    for name, values in ms.items():
        arr = np.asarray(values)
        s[f"mean_{name}_ms"] = float(arr.mean())
        s[f"median_{name}_ms"] = float(np.percentile(arr, 50))
        s[f"std_{name}_ms"] = float(arr.std())
        for p in (90, 95, 99):
            s[f"p{p}_{name}_ms"] = float(np.percentile(arr, p))
    if slo:
        met = sum(1e3 * r["ttft_s"] <= 200 for r in ok)
        s["slo_attainment"] = met / len(requests)
        s["request_goodput"] = met / duration_s
    if cost:
        s["cost_per_1m_input_tokens_usd"] = 0.05
        s["cost_per_1m_output_tokens_usd"] = 1.25
        s["cost_per_1m_useful_output_tokens_usd"] = 1.5
    return s


def make_point(
    load: dict[str, Any],
    *,
    num_requests: int,
    seed: int,
    speed: float,
    slo: bool = False,
    cost: bool = False,
    is_schedule_kept: bool = True,
    num_failed: int = 0,
) -> dict[str, Any]:
    """One load level: `num_requests` requests with seeded latencies; higher `speed` and
    lower load give lower latencies."""
    rng = np.random.default_rng(seed)
    rate = load.get("request_rate")
    if rate is None or math.isinf(rate):
        rate = load.get("max_concurrency") or 1.0
    pressure = 1.0 + 0.3 * float(rate)
    requests = []
    for i in range(num_requests):
        num_out = int(rng.integers(8, 64))
        ttft = float(rng.lognormal(math.log(0.05 * pressure / speed), 0.6))
        itl = [float(x) for x in rng.gamma(4.0, 0.004 * pressure / speed, size=num_out - 1)]
        requests.append(
            {
                "call_id": f"c{i}",
                "session_id": f"s{i // 2}",
                "start_s": i * 0.1,
                "ttft_s": ttft,
                "ttft_content_s": ttft + 0.001,
                "e2el_s": ttft + sum(itl),
                "itl_s": itl,
                "prompt_tokens": 500,
                "output_tokens": num_out,
                "cached_tokens": int(400 * min(1.0, speed / 2)),
                "error": "http_5xx" if i < num_failed else None,
            }
        )
    lag_p99_ms = 0.4 if is_schedule_kept else 35.0
    return {
        "load": load,
        "summary": _summary(requests, duration_s=num_requests / float(rate), slo=slo, cost=cost),
        "client": {
            "scheduling_lag_p50_ms": 0.1,
            "scheduling_lag_p99_ms": lag_p99_ms,
            "num_processes": 1,
            "is_schedule_kept": is_schedule_kept,
        },
        "requests": requests,
    }


def rate_load(rate: float | None, concurrency: int | None = None) -> dict[str, Any]:
    return {"request_rate": rate, "burstiness": 1.0, "max_concurrency": concurrency}


def make_results(
    labels: Sequence[str] = ("round-robin", "kv-aware"),
    loads: Sequence[dict[str, Any]] = (rate_load(2.0),),
    *,
    num_requests: int = 40,
    kind: str | None = None,
    slo: bool = False,
    cost: bool = False,
    gpu_count: int | None = 8,
    is_schedule_kept: bool = True,
    num_failed: int = 0,
) -> dict[str, Any]:
    """A results.json dict: one arm per label (each faster than the one before), one
    point per load."""
    return {
        "schema": "headway.bench/1",
        "kind": kind or ("run" if len(loads) == 1 else "sweep"),
        "metadata": {
            "git_sha": "0123abcd",
            "command": "headway bench --base-url http://a --base-url http://b --out x",
            "machine": {"cpu": "test cpu", "num_cpus": 2},
            "started_at": "2026-11-28T16:00:00Z",
            "headway_version": "0.1.0",
            "workload": {"name": "agentic", "params": {"num_subagents": 3}},
            "seed": 0,
            "goodput": {"ttft_ms": 200.0, "tpot_ms": None, "e2el_ms": None} if slo else None,
            "gpu_count": gpu_count,
            "gpu_hourly_usd": 2.5 if cost else None,
        },
        "arms": [
            {
                "label": label,
                "base_url": f"http://127.0.0.1:{9000 + a}",
                "target": {"versions": {"headway": "0.1.0"}},
                "points": [
                    make_point(
                        load,
                        num_requests=num_requests,
                        seed=17 * a + j,
                        speed=1.0 + a,
                        slo=slo,
                        cost=cost,
                        is_schedule_kept=is_schedule_kept,
                        num_failed=num_failed,
                    )
                    for j, load in enumerate(loads)
                ],
            }
            for a, label in enumerate(labels)
        ],
    }


def _record(results: dict[str, Any]) -> str:
    console = Console(file=io.StringIO(), width=200, force_terminal=False, color_system=None)
    print_summary(results, console)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


def _md_rows(md: str) -> dict[str, list[str]]:
    rows = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| Metric"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 10_000, (path, len(data))


@pytest.mark.parametrize(
    ("row", "key"),
    [
        ("Request throughput (req/s)", "request_throughput"),
        ("Output throughput (tok/s)", "output_throughput"),
        ("Total token throughput (tok/s)", "total_token_throughput"),
        ("TTFT mean (ms)", "mean_ttft_ms"),
        ("TTFT p99 (ms)", "p99_ttft_ms"),
        ("TTFT-content p50 (ms)", "median_ttft_content_ms"),
        ("TPOT p50 (ms)", "median_tpot_ms"),
        ("ITL p99 (ms)", "p99_itl_ms"),
        ("E2E p99 (ms)", "p99_e2el_ms"),
    ],
    ids=[
        "req-tput",
        "out-tput",
        "total-tput",
        "ttft-mean",
        "ttft-p99",
        "ttft-content",
        "tpot-p50",
        "itl-p99",
        "e2e-p99",
    ],
)
def test_markdown_values_match_input(row: str, key: str) -> None:
    results = make_results()
    cells = _md_rows(summary_markdown(results))[row]
    expected = [arm["points"][0]["summary"][key] for arm in results["arms"]]
    assert len(cells) == len(expected) == 2
    for cell, value in zip(cells, expected, strict=True):
        # Printed to 2 decimals below 10, 1 below 1000, else 0: within half a last digit.
        half_digit = 0.005 if value < 10 else 0.05 if value < 1000 else 0.5
        assert abs(float(cell.replace(",", "")) - value) <= half_digit + 1e-9


def test_markdown_counts_share_and_metadata() -> None:
    results = make_results(num_failed=3)
    md = summary_markdown(results)
    rows = _md_rows(md)
    assert rows["Requests completed"] == ["37", "37"]
    assert rows["Requests failed"] == ["3", "3"]
    share = results["arms"][1]["points"][0]["summary"]["cached_token_share"]
    assert rows["Cached-token share"][1] == f"{100 * share:.1f}%"
    assert "| Metric | round-robin | kv-aware |" in md
    assert "0123abcd" in md and "agentic (num_subagents=3)" in md
    assert "http_5xx 3" in md


@pytest.mark.parametrize(
    ("slo", "cost", "present", "absent"),
    [
        (False, False, [], ["SLO attainment", "Goodput (req/s)", "Cost per 1M output tokens"]),
        (True, False, ["SLO attainment", "Goodput (req/s)"], ["Cost per 1M output tokens"]),
        (False, True, ["Cost per 1M output tokens"], ["SLO attainment"]),
    ],
    ids=["plain", "slo", "cost"],
)
def test_optional_rows_only_when_measured(
    slo: bool, cost: bool, present: list[str], absent: list[str]
) -> None:
    rows = _md_rows(summary_markdown(make_results(slo=slo, cost=cost)))
    for name in present:
        assert name in rows
    for name in absent:
        assert name not in rows
    if cost:
        assert rows["Cost per 1M output tokens"] == ["$1.25", "$1.25"]


def test_terminal_table_and_lag_warning() -> None:
    kept = _record(make_results())
    assert "round-robin" in kept and "kv-aware" in kept and "TTFT p50 (ms)" in kept
    assert "WARNING" not in kept
    lagged = _record(make_results(is_schedule_kept=False))
    assert "WARNING: round-robin: the client did not keep its send schedule" in lagged
    assert "35.0 ms" in lagged


def test_sweep_one_table_per_load_with_load_in_title() -> None:
    loads = [rate_load(1.0), rate_load(4.0), rate_load(None, 16)]
    tables = summary_tables(make_results(loads=loads))
    assert [t.title for t in tables] == [
        "Load 1/3: 1 sessions/s",
        "Load 2/3: 4 sessions/s",
        "Load 3/3: concurrency 16",
    ]
    assert all(t.header == ("Metric", "round-robin", "kv-aware") for t in tables)


def test_arm_missing_a_load_level_is_left_out_of_that_table() -> None:
    results = make_results(loads=[rate_load(1.0), rate_load(4.0)])
    results["arms"][1]["points"].pop()  # the sweep stopped early at saturation
    tables = summary_tables(results)
    assert [t.header for t in tables] == [
        ("Metric", "round-robin", "kv-aware"),
        ("Metric", "round-robin"),
    ]


def test_write_report_run(tmp_path: Path) -> None:
    results = make_results(slo=True, cost=True)
    write_report(results, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "latency_cdf.png",
        "pareto.png",
        "report.html",
        "summary.md",
    ]
    for png in tmp_path.glob("*.png"):
        _assert_png(png)
    html = (tmp_path / "report.html").read_text()
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(uris) == 2
    assert base64.b64decode(uris[0])[:8] == PNG_MAGIC
    assert "<th>round-robin</th>" in html and "<th>kv-aware</th>" in html
    assert "SLO attainment" in html and "0123abcd" in html
    # Self-contained: every src/href is a data URI; no <script>, no <link>.
    assert re.findall(r'(?:src|href)="(?!data:)', html) == []
    assert "<script" not in html and "<link" not in html
    assert (tmp_path / "summary.md").read_text() == summary_markdown(results)


@pytest.mark.parametrize(
    "loads",
    [
        [rate_load(r) for r in (1.0, 2.0, 4.0)],
        [rate_load(None, c) for c in (1, 8, 64)],  # geometric: a log2 load axis
    ],
    ids=["rates-linear-axis", "concurrencies-log-axis"],
)
def test_write_report_sweep(tmp_path: Path, loads: list[dict[str, Any]]) -> None:
    write_report(make_results(loads=loads, slo=True, num_requests=20), tmp_path)
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == [
        "latency_cdf_01.png",
        "latency_cdf_02.png",
        "latency_cdf_03.png",
        "latency_vs_load.png",
        "pareto.png",
    ]
    for png in tmp_path.glob("*.png"):
        _assert_png(png)
    assert (tmp_path / "report.html").read_text().count("data:image/png;base64,") == 5


def test_html_escapes_labels(tmp_path: Path) -> None:
    write_report(make_results(labels=("<script>x</script>", "b&c")), tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "<script>" not in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "b&amp;c" in html


@pytest.mark.parametrize(
    ("loads", "expected"),
    [
        ([rate_load(1.0), rate_load(2.0)], ("request_rate", "arrival rate (sessions/s)")),
        (
            [rate_load(None, 4), rate_load(float("inf"), 8)],
            ("max_concurrency", "concurrency (requests in flight)"),
        ),
    ],
    ids=["rate", "concurrency"],
)
def test_sweep_axis(loads: list[dict[str, Any]], expected: tuple[str, str]) -> None:
    assert plots.sweep_axis(make_results(loads=loads, num_requests=4)) == expected


@pytest.mark.parametrize(
    ("xy", "front"),
    [
        ([(1, 5), (2, 4), (3, 1)], [(1, 5), (2, 4), (3, 1)]),
        ([(1, 5), (2, 6), (3, 1)], [(2, 6), (3, 1)]),
        ([(1, 1), (1, 2)], [(1, 2)]),
    ],
    ids=["all-on-front", "dominated", "same-x"],
)
def test_pareto_front(xy: list[tuple[float, float]], front: list[tuple[float, float]]) -> None:
    assert plots.pareto_front(xy) == front


def test_latency_samples_skip_errors_and_single_token_tpot() -> None:
    reqs = [
        {"ttft_s": 0.1, "e2el_s": 0.5, "output_tokens": 5, "itl_s": [0.1] * 4, "error": None},
        {"ttft_s": 0.2, "e2el_s": 0.2, "output_tokens": 1, "itl_s": [], "error": None},
        {"ttft_s": None, "e2el_s": None, "output_tokens": 0, "itl_s": [], "error": "timeout"},
    ]
    s = plots.latency_samples(reqs)
    assert s.ttft_ms == pytest.approx((100.0, 200.0))
    assert s.tpot_ms == pytest.approx((100.0,))
    assert s.itl_ms == pytest.approx((100.0,) * 4)
    assert s.e2el_ms == pytest.approx((500.0, 200.0))


@pytest.mark.parametrize(
    ("gpu_count", "label"),
    [
        (8, "output tokens/s per GPU (8 GPUs)"),
        (1, "output tokens/s per GPU (1 GPU)"),
        (None, "output tokens/s, whole target (gpu_count not recorded)"),
    ],
    ids=["per-gpu", "one-gpu", "no-gpu-count"],
)
def test_pareto_y_label_says_when_not_per_gpu(gpu_count: int | None, label: str) -> None:
    assert plots.pareto_y_label(gpu_count) == label


def test_pareto_without_gpu_count_still_plots(tmp_path: Path) -> None:
    path = plots.plot_pareto(make_results(gpu_count=None, num_requests=4), tmp_path / "p.png")
    _assert_png(path)


def test_slo_search_table_and_probes_sorted_by_rate() -> None:
    results = make_results(
        labels=("rr", "kv"),
        loads=[rate_load(8.0), rate_load(1.0), rate_load(4.0)],
        kind="slo-search",
        slo=True,
        num_requests=6,
    )
    results["metadata"]["slo_search"] = {"attainment": 0.9, "rate_min": 1, "rate_max": 8}
    results["arms"][0]["slo_search"] = {
        "max_request_rate": 4.0,
        "bracket": [4.0, 8.0],
        "outcome": "bracketed",
        "num_probes": 3,
    }
    results["arms"][1]["slo_search"] = {
        "max_request_rate": None,
        "bracket": None,
        "outcome": "not met at rate_min",
        "num_probes": 2,
    }
    md = summary_markdown(results)
    assert "### SLO search: largest request rate with >= 90% SLO attainment" in md
    assert "| rr | 4 sessions/s | [4, 8] | bracketed | 3 |" in md
    assert "| kv | - | - | not met at rate_min | 2 |" in md
    assert "|---|---:|---:|---|---:|" in md  # the outcome is text: left-aligned
    titles = [t.title for t in summary_tables(results)]
    assert titles == ["Load 1/3: 1 sessions/s", "Load 2/3: 4 sessions/s", "Load 3/3: 8 sessions/s"]


def test_run_notes_warnings_partial_and_early_stop(tmp_path: Path) -> None:
    results = make_results(loads=[rate_load(1.0), rate_load(2.0)], num_requests=5)
    results["metadata"]["warnings"] = ["kv: cache reset at http://x/reset_prefix_cache failed"]
    results["metadata"]["is_partial"] = True
    results["arms"][0]["sweep"] = {"stopped_early": "after rate 2/s: saturated"}
    out = _record(results)
    assert "WARNING: partial results" in out
    assert "WARNING: kv: cache reset at http://x/reset_prefix_cache failed" in out
    assert "round-robin: sweep stopped after rate 2/s: saturated" in out
    md = summary_markdown(results)
    assert "## Notes" in md and "sweep stopped after rate 2/s" in md
    write_report(results, tmp_path)
    assert 'class="warning">WARNING: partial results' in (tmp_path / "report.html").read_text()


def test_target_versions_shown_short() -> None:
    results = make_results(labels=("a",), num_requests=4)
    results["arms"][0]["target"]["versions"] = {
        "version": {"version": "0.11.0"},
        "models": {"object": "list", "data": [{"id": "llama-3.1-8b", "object": "model"}]},
        "other": {"error": "HTTP 404"},
    }
    md = summary_markdown(results)
    assert "* **arm a**: http://127.0.0.1:9000 (version 0.11.0; models llama-3.1-8b)" in md


def test_schedule_warning_shown_once() -> None:
    results = make_results(labels=("a",), is_schedule_kept=False, num_requests=4)
    results["metadata"]["warnings"] = [
        "a rate 2/s: the client fell behind its schedule (p99 scheduling lag 35 ms > 10 ms)"
    ]
    out = _record(results)
    assert out.count("schedule") == 1, out


def test_workload_params_shown_as_cli_specs() -> None:
    results = make_results(labels=("a",), num_requests=4)
    results["metadata"]["workload"] = {
        "name": "agentic",
        "params": {
            "num_tool_rounds": 3,
            "task_tokens": {"mean": 256, "kind": "constant", "spread": 0.5, "max_len": None},
            "tool_latency_s": {"mean_s": 0.5, "kind": "exponential", "spread": 0.5},
            "other": {"a": [1, 2]},
        },
    }
    md = summary_markdown(results)
    assert (
        "agentic (num_tool_rounds=3, task_tokens=256, "
        'tool_latency_s=exponential:0.5:spread=0.5, other={"a":[1,2]})'
    ) in md


def test_overview_table_one_row_per_load_level() -> None:
    results = make_results(
        labels=("rr", "kv"), loads=[rate_load(4.0), rate_load(1.0)], slo=True, num_requests=6
    )
    results["arms"][1]["points"].pop()  # kv stopped after 4 sessions/s
    md = summary_markdown(results)
    assert "### Overview: key metrics by load level" in md
    rows = _md_rows(md)
    assert len(rows["1 sessions/s"]) == len(rows["4 sessions/s"]) == 10  # 2 arms x 5 metrics
    assert rows["1 sessions/s"][5:] == ["-"] * 5
    kv_tput = results["arms"][1]["points"][0]["summary"]["output_throughput"]
    assert float(rows["4 sessions/s"][5].replace(",", "")) == pytest.approx(kv_tput, abs=0.006)
    assert "Overview" not in summary_markdown(make_results(num_requests=4))


def test_report_of_a_point_where_every_request_failed(tmp_path: Path) -> None:
    results = make_results(labels=("down",), num_requests=4)
    point = results["arms"][0]["points"][0]
    for r in point["requests"]:
        r.update(ttft_s=None, ttft_content_s=None, e2el_s=None, itl_s=[], error="connection")
    point["summary"] = {"completed": 0, "failed": 4, "failures_by_kind": {"connection": 4}}
    write_report(results, tmp_path)
    for png in tmp_path.glob("*.png"):
        _assert_png(png)
    rows = _md_rows((tmp_path / "summary.md").read_text())
    assert rows["Requests failed"] == ["4"]
    assert rows["TTFT p50 (ms)"] == ["-"]


def test_extra_tables_follow_the_bench_tables(tmp_path: Path) -> None:
    extra = TextTable("Calls per replica", ("Arm", "r0", "r1"), (("round-robin", "3", "4"),))
    write_report(make_results(num_requests=4), tmp_path, extra_tables=[extra])
    md = (tmp_path / "summary.md").read_text()
    assert md.index("### Load: 2 sessions/s") < md.index("### Calls per replica")
    assert "| round-robin | 3 | 4 |" in md
    assert "<caption>Calls per replica</caption>" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize("n", [1, 10, 100_000], ids=["one", "few", "many"])
def test_cdf_points_keep_the_extremes_and_bound_the_size(n: int) -> None:
    values = np.random.default_rng(3).lognormal(size=n)
    xs, ys = plots.cdf_points(values)
    assert len(xs) == len(ys) <= plots.MAX_CDF_POINTS
    assert xs[0] == values.min() and xs[-1] == values.max()
    assert ys[-1] == 100.0 and np.all(np.diff(xs) >= 0) and np.all(np.diff(ys) > 0)
    # Every drawn point is exact: ys is the share of values <= xs.
    mid = len(xs) // 2
    assert ys[mid] == pytest.approx(100.0 * np.mean(values <= xs[mid]))
