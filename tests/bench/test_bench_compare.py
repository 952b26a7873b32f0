"""`headway bench compare`: the table of several results.json with relative changes, its
files, and its errors on bad input (exit 2, one line naming the file and the key)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from test_bench_report import PNG_MAGIC, make_results, rate_load

from headway.bench.compare import columns_of, compare_cells, run_compare


def _console() -> Console:
    return Console(file=io.StringIO(), width=250, force_terminal=False, color_system=None)


def _out(console: Console) -> str:
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(text, str)
    return text


def _write(tmp_path: Path, name: str, results: Any) -> Path:
    path = tmp_path / name / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results) if not isinstance(results, str) else results)
    return path


def test_compare_two_runs_relative_change(tmp_path: Path) -> None:
    a = make_results(labels=("rr",))
    b = make_results(labels=("rr",))
    b["arms"][0]["points"][0]["summary"]["median_ttft_ms"] = (
        a["arms"][0]["points"][0]["summary"]["median_ttft_ms"] * 0.5
    )
    b["arms"][0]["points"][0]["summary"]["output_throughput"] = (
        a["arms"][0]["points"][0]["summary"]["output_throughput"] * 1.25
    )
    paths = [_write(tmp_path, "before", a), _write(tmp_path, "after", b)]
    console = _console()
    assert run_compare(paths, tmp_path / "cmp", console) == 0
    out = _out(console)
    assert "before: rr" in out and "after: rr" in out
    assert "(-50.0%)" in out and "(+25.0%)" in out
    md = (tmp_path / "cmp" / "compare.md").read_text()
    ttft_row = next(line for line in md.splitlines() if line.startswith("| TTFT p50 (ms)"))
    assert ttft_row.endswith("(-50.0%) |")
    html = (tmp_path / "cmp" / "report.html").read_text()
    assert "data:image/png;base64," in html and "<th>after: rr</th>" in html
    assert (tmp_path / "cmp" / "compare_cdf.png").read_bytes()[:8] == PNG_MAGIC


def test_compare_without_out_dir_writes_nothing(tmp_path: Path) -> None:
    paths = [_write(tmp_path, "a", make_results()), _write(tmp_path, "b", make_results())]
    before = sorted(tmp_path.rglob("*"))
    assert run_compare(paths, None, _console()) == 0
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    ("metric_label", "factor", "is_better"),
    [
        ("TTFT p50 (ms)", 0.5, True),
        ("TTFT p50 (ms)", 2.0, False),
        ("Output throughput (tok/s)", 2.0, True),
        ("Output throughput (tok/s)", 0.5, False),
    ],
    ids=["latency-down", "latency-up", "tput-up", "tput-down"],
)
def test_direction_of_better(
    tmp_path: Path, metric_label: str, factor: float, is_better: bool
) -> None:
    a, b = make_results(labels=("x",)), make_results(labels=("x",))
    key = {"TTFT p50 (ms)": "median_ttft_ms", "Output throughput (tok/s)": "output_throughput"}
    summary = b["arms"][0]["points"][0]["summary"]
    summary[key[metric_label]] *= factor
    columns = columns_of([(Path("a.json"), a), (Path("b.json"), b)])
    cells = dict((m.label, c) for m, c in compare_cells(columns))[metric_label]
    assert cells[1].is_better is is_better
    assert cells[1].change_pct == pytest.approx(100 * (factor - 1))


def test_sweep_columns_name_the_load(tmp_path: Path) -> None:
    sweep = make_results(labels=("rr",), loads=[rate_load(1.0), rate_load(2.0)], num_requests=5)
    columns = columns_of([(Path("s/results.json"), sweep), (Path("t.json"), make_results())])
    assert [c.label for c in columns] == [
        "s: rr @ 1 sessions/s",
        "s: rr @ 2 sessions/s",
        "t: round-robin",
        "t: kv-aware",
    ]


def test_same_folder_names_are_made_distinct(tmp_path: Path) -> None:
    r = make_results(labels=("x",), num_requests=4)
    columns = columns_of([(Path("a/run/results.json"), r), (Path("b/run/results.json"), r)])
    assert [c.label for c in columns] == ["run#1: x", "run#2: x"]


def _broken(mutate: str) -> Any:
    r = make_results(labels=("x",), num_requests=4)
    if mutate == "schema":
        r["schema"] = "vllm/1"
    elif mutate == "no-arms":
        del r["arms"]
    elif mutate == "empty-arms":
        r["arms"] = []
    elif mutate == "no-summary":
        del r["arms"][0]["points"][0]["summary"]
    elif mutate == "label-type":
        r["arms"][0]["label"] = 3
    elif mutate == "kind":
        r["kind"] = "bench"
    elif mutate == "not-object":
        return [1, 2]
    elif mutate == "not-json":
        return "{not json"
    return r


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        ("schema", "'schema' is 'vllm/1', expected 'headway.bench/1'"),
        ("no-arms", "missing key 'arms'"),
        ("empty-arms", "'arms' is empty"),
        ("no-summary", "missing key arms[0].points[0].'summary'"),
        ("label-type", "arms[0].'label' must be str, got int"),
        ("kind", "'kind' is 'bench'"),
        ("not-object", "expected a JSON object, got list"),
        ("not-json", "not valid JSON"),
    ],
    ids=[
        "schema",
        "no-arms",
        "empty-arms",
        "no-summary",
        "label-type",
        "kind",
        "not-object",
        "not-json",
    ],
)
def test_bad_input_exit_2_names_file_and_key(tmp_path: Path, mutate: str, message: str) -> None:
    good = _write(tmp_path, "good", make_results(num_requests=4))
    bad = _write(tmp_path, "bad", _broken(mutate))
    console = _console()
    assert run_compare([good, bad], tmp_path / "out", console) == 2
    out = _out(console)
    assert "Traceback" not in out
    assert re.search(re.escape(f"{bad}: ") + r".*" + re.escape(message), out), out
    assert not (tmp_path / "out").exists()


def test_missing_file_and_no_files(tmp_path: Path) -> None:
    console = _console()
    assert run_compare([tmp_path / "nope.json"], None, console) == 2
    assert f"{tmp_path / 'nope.json'}: cannot read" in _out(console)
    console = _console()
    assert run_compare([], None, console) == 2
    assert "no results files" in _out(console)


def test_directories_stand_for_their_results_json(tmp_path: Path) -> None:
    a = _write(tmp_path, "a", make_results(labels=("x",), num_requests=4))
    b = _write(tmp_path, "b", make_results(labels=("x",), num_requests=4))
    console = _console()
    assert run_compare([a.parent, b.parent], None, console) == 0
    assert "a: x" in _out(console) and "b: x" in _out(console)
    console = _console()
    assert run_compare([a.parent, tmp_path / "missing"], None, console) == 2


def test_shares_change_in_percentage_points() -> None:
    a, b = make_results(labels=("x",)), make_results(labels=("x",))
    a["arms"][0]["points"][0]["summary"]["cached_token_share"] = 0.4
    b["arms"][0]["points"][0]["summary"]["cached_token_share"] = 0.65
    columns = columns_of([(Path("a.json"), a), (Path("b.json"), b)])
    cells = dict((m.label, c) for m, c in compare_cells(columns))["Cached-token share"]
    assert cells[1].plain() == "65.0% (+25.0 pp)"
    assert cells[1].is_better is True


@pytest.mark.parametrize(
    ("change", "is_warned"),
    [(None, False), ("seed", True), ("params", True)],
    ids=["same", "other-seed", "other-params"],
)
def test_warns_when_files_ran_different_workloads(
    tmp_path: Path, change: str | None, is_warned: bool
) -> None:
    a, b = make_results(labels=("x",), num_requests=4), make_results(labels=("x",), num_requests=4)
    if change == "seed":
        b["metadata"]["seed"] = 1
    elif change == "params":
        b["metadata"]["workload"]["params"]["num_subagents"] = 4
    paths = [_write(tmp_path, "a", a), _write(tmp_path, "b", b)]
    console = _console()
    assert run_compare(paths, tmp_path / "out", console) == 0
    warning = f"WARNING: {paths[1]} ran another workload"
    assert (warning in " ".join(_out(console).split())) is is_warned
    assert (warning in (tmp_path / "out" / "compare.md").read_text()) is is_warned
