"""`headway bench` end to end against a real `headway sim` process (two replicas on
127.0.0.1, ephemeral ports): results.json with the documented keys, side by side,
multi-process, sweep, slo-search, Ctrl-C, and argument errors without tracebacks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sim"))
from sim_harness import Fleet, poll, running_fleets, scrape

from headway.cli import main

MODEL = "llama-3.1-8b"
SIM_ARGS = ("--replicas", "2", "--time-scale", "50", "--enable-prompt-tokens-details")
SUMMARY_KEYS = {
    "duration", "completed", "failed", "total_input_tokens", "total_output_tokens",
    "request_throughput", "request_goodput", "output_throughput", "total_token_throughput",
    "cached_token_share", "slo_attainment", "failures_by_kind",
    "cost_per_1m_input_tokens_usd", "cost_per_1m_output_tokens_usd",
    "cost_per_1m_useful_output_tokens_usd", "mean_itl_per_token_ms",
} | {
    f"{stat}_{metric}_ms"
    for stat in ("mean", "median", "std", "p90", "p95", "p99")
    for metric in ("ttft", "ttft_content", "tpot", "ntpot", "itl", "e2el")
}  # fmt: skip
REQUEST_KEYS = {
    "call_id", "session_id", "start_s", "ttft_s", "ttft_content_s", "e2el_s", "itl_s",
    "prompt_tokens", "output_tokens", "cached_tokens", "error",
}  # fmt: skip
CLIENT_KEYS = {
    "scheduling_lag_p50_ms",
    "scheduling_lag_p99_ms",
    "num_processes",
    "is_schedule_kept",
}
METADATA_KEYS = {
    "git_sha", "command", "machine", "started_at", "headway_version", "workload", "seed",
    "goodput", "gpu_count", "gpu_hourly_usd",
}  # fmt: skip


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleets(tmp_path_factory.mktemp("bench-sim"), SIM_ARGS) as fleets:
        yield fleets[0]


def bench(*args: str) -> int:
    return main(["bench", *args])


def common(fleet: Fleet, out: Path, *extra: str) -> list[str]:
    return ["--base-url", fleet.url, "--model", MODEL, "--no-progress", "--no-report",
            "--out", str(out), *extra]  # fmt: skip


def load(out: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((out / "results.json").read_text())
    return doc


def test_run_side_by_side_writes_results_with_every_documented_key(
    fleet: Fleet, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    rc = bench(
        "--base-url", fleet.url, "--base-url", fleet.urls[1], "--label", "r0", "--label", "r1",
        "--model", MODEL, "--workload", "shared-prefix", "--request-rate", "40",
        "--num-requests", "12", "--goodput", "ttft:5000", "tpot:500", "--gpu-count", "1",
        "--gpu-hourly-usd", "3", "--reset-cache", "--seed", "7", "--no-progress", "--no-report",
        "--out", str(out),
    )  # fmt: skip
    assert rc == 0
    doc = load(out)
    assert doc["schema"] == "headway.bench/1" and doc["kind"] == "run"
    assert doc["metadata"].keys() >= METADATA_KEYS
    assert doc["metadata"]["workload"]["name"] == "shared-prefix"
    assert doc["metadata"]["workload"]["params"]
    assert (doc["metadata"]["gpu_count"], doc["metadata"]["seed"]) == (1, 7)
    assert doc["metadata"]["warnings"] == [] and doc["metadata"]["is_partial"] is False
    assert [a["label"] for a in doc["arms"]] == ["r0", "r1"]
    calls = []
    for arm in doc["arms"]:
        assert arm["target"]["versions"]["version"]["headway_sim"]
        [point] = arm["points"]
        assert point["load"] == {"request_rate": 40.0, "burstiness": 1.0, "max_concurrency": None}
        summary = point["summary"]
        assert summary.keys() >= SUMMARY_KEYS
        assert (summary["completed"], summary["failed"]) == (12, 0)
        assert summary["slo_attainment"] == 1.0
        assert summary["cached_token_share"] > 0  # shared prefixes hit the cache
        assert summary["mean_itl_per_token_ms"] is not None  # continuous usage seen
        assert point["client"].keys() >= CLIENT_KEYS
        assert len(point["requests"]) == 12
        for r in point["requests"]:
            assert r.keys() >= REQUEST_KEYS
            assert r["error"] is None and r["output_tokens"] > 0
            assert 0 < r["ttft_s"] <= r["e2el_s"]
        calls.append(sorted(r["call_id"] for r in point["requests"]))
    assert calls[0] == calls[1]  # the same seeded stream against each arm


def test_multi_process_client_runs_the_same_plan(fleet: Fleet, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    args = ("--workload", "multi-turn", "--workload-param", "think_time_s=0.01",
            "--request-rate", "50", "--num-requests", "10")  # fmt: skip
    assert bench(*common(fleet, one, *args)) == 0
    assert bench(*common(fleet, two, *args, "--num-client-processes", "2")) == 0
    points = [load(d)["arms"][0]["points"][0] for d in (one, two)]
    assert [p["client"]["num_processes"] for p in points] == [1, 2]
    ids = [sorted((r["session_id"], r["call_id"]) for r in p["requests"]) for p in points]
    assert ids[0] == ids[1] and len(ids[0]) == 10
    assert all(r["error"] is None for r in points[1]["requests"])


def test_multi_process_results_larger_than_a_pipe_buffer(fleet: Fleet, tmp_path: Path) -> None:
    # ~100 records of 64 chunk times each pickle to well over the 64 KiB pipe buffer.
    out = tmp_path / "big"
    args = ("--workload", "synthetic", "--workload-param", "input_len=16",
            "--workload-param", "output_len=64", "--max-concurrency", "16",
            "--num-requests", "100", "--num-client-processes", "2")  # fmt: skip
    assert bench(*common(fleet, out, *args)) == 0
    point = load(out)["arms"][0]["points"][0]
    assert point["summary"]["completed"] == 100
    assert sum(len(r["itl_s"]) for r in point["requests"]) >= 100 * 60


@pytest.mark.parametrize("kind", ["trace", "sharegpt"])
def test_workload_from_a_file_keeps_its_arrivals(fleet: Fleet, tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.json"
    if kind == "trace":
        path.write_text(
            "".join(
                json.dumps({"timestamp_s": t, "input_tokens": 40, "output_tokens": 3}) + "\n"
                for t in (0.0, 0.05, 0.1, 0.3)
            )
        )
        bound = ("--duration", "0.2")  # the 0.3 s record arrives after the bound
    else:
        convs = [
            {"id": str(i), "conversations": [{"from": "human", "value": f"please answer question number {i} now"},
                                             {"from": "gpt", "value": "here is a longer answer to it"}]}
            for i in range(5)
        ]  # fmt: skip
        path.write_text(json.dumps(convs))
        bound = ("--num-requests", "4")
    out = tmp_path / "out"
    assert bench(*common(fleet, out, "--workload", str(path), *bound)) == 0
    doc = load(out)
    [point] = doc["arms"][0]["points"]
    assert doc["metadata"]["workload"]["params"]["num_records"] in (4, 5)
    assert len(point["requests"]) == (3 if kind == "trace" else 4)
    assert all(r["error"] is None for r in point["requests"])
    if kind == "trace":
        starts = sorted(r["start_s"] for r in point["requests"])
        # Sent at the trace's offsets, within the timer's resolution (the runner's
        # schedule and the point's start are two readings of the clock).
        assert starts[1] >= 0.049 and starts[2] >= 0.099


def test_sweep_runs_each_level(fleet: Fleet, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    rc = bench("sweep", *common(fleet, out, "--workload", "synthetic", "--concurrencies",
               "1,4", "--num-requests", "6", "--no-early-stop"))  # fmt: skip
    assert rc == 0
    doc = load(out)
    assert doc["kind"] == "sweep"
    [arm] = doc["arms"]
    assert [p["load"]["max_concurrency"] for p in arm["points"]] == [1, 4]
    assert arm["sweep"]["stopped_early"] is None


def test_slo_search_brackets_a_rate(fleet: Fleet, tmp_path: Path) -> None:
    out = tmp_path / "slo"
    rc = bench("slo-search", *common(fleet, out, "--workload", "synthetic", "--num-requests",
               "6", "--goodput", "e2el:60000", "--rate-min", "20", "--rate-max", "80",
               "--tolerance", "30"))  # fmt: skip
    assert rc == 0
    doc = load(out)
    assert doc["kind"] == "slo-search"
    [arm] = doc["arms"]
    # A generous SLO is met at the upper bound: one probe, answer rate_max.
    assert arm["slo_search"]["max_request_rate"] == 80.0
    assert [p["load"]["request_rate"] for p in arm["points"]] == [80.0]
    assert arm["points"][0]["slo_search"] == {"is_met": True}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--request-rate", "-1"], "argument --request-rate: must be > 0"),
        (["--request-rate", "x"], "argument --request-rate: not a number"),
        (["--goodput", "ttfb:5"], "argument --goodput"),
        (["--gpu-count", "2"], "--gpu-count and --gpu-hourly-usd"),
        (["--label", "a", "--label", "b"], "argument --label"),
        (["--workload-param", "nonsense"], "argument --workload-param"),
        (["--workload-param", "num_turns=-3"], "--workload"),
        (["--num-requests", "0"], "argument --num-requests: must be >= 1"),
        (["--burstiness", "0.5"], "argument --burstiness: needs --request-rate"),
        (["--reset-url", "http://x:1"], "argument --reset-url"),
    ],
    ids=[
        "negative-rate",
        "rate-not-number",
        "unknown-slo",
        "gpu-count-alone",
        "labels-mismatch",
        "param-not-kv",
        "bad-workload-param",
        "zero-requests",
        "burstiness-without-rate",
        "reset-url-without-reset",
    ],
)
def test_invalid_arguments_name_the_option(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--base-url", "http://127.0.0.1:9", "--model", "m", "--workload", "multi-turn",
            "--out", str(tmp_path), "--no-progress"]  # fmt: skip
    if not any(a in ("--num-requests", "--duration") for a in args):
        base += ["--num-requests", "1"]
    with pytest.raises(SystemExit) as exc:
        bench(*base, *args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "results.json").exists()


def test_bad_timer_environment_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADWAY_BENCH_TIMER", "sundial")
    with pytest.raises(SystemExit) as exc:
        bench("--base-url", "http://127.0.0.1:9", "--model", "m", "--workload", "multi-turn",
              "--out", str(tmp_path), "--no-progress", "--num-requests", "1")  # fmt: skip
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "environment: HEADWAY_BENCH_TIMER must be one of" in err and "sundial" in err


def test_missing_required_options_without_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench("--model", "m")
    assert exc.value.code == 2
    assert "--base-url" in capsys.readouterr().err


def test_ctrl_c_saves_partial_results(fleet: Fleet, tmp_path: Path) -> None:
    out = tmp_path / "partial"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "headway.cli", "bench", *common(fleet, out, "--workload",
           "synthetic", "--request-rate", "4", "--num-requests", "400")]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        # Let a few requests through (the plan and the client must be up), then Ctrl-C.
        done_before = scrape(fleet.url)["vllm:request_success_total"]
        poll(
            lambda: scrape(fleet.url)["vllm:request_success_total"],
            lambda n: n >= done_before + 3,
            deadline_s=30,
            interval_s=0.1,
            what="three requests served",
        )
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
    assert proc.returncode == 130, err.decode()
    assert b"Traceback" not in err
    doc = load(out)
    assert doc["metadata"]["is_partial"] is True
    point = doc["arms"][0]["points"][0]
    assert 0 < len(point["requests"]) < 400
