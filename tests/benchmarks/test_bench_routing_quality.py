"""benchmarks/routing_quality.py: its SLO accounting, staircase stream and workload
(pure, table-driven) and a smoke run of the script against `headway sim`."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from headway.core.serving_metrics import RequestRecord

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "routing_quality.py"


@pytest.fixture(scope="module")
def rq() -> ModuleType:
    spec = importlib.util.spec_from_file_location("routing_quality_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _record(
    sent_at: float,
    ttft: float | None,
    error: str | None = None,
    status: int | None = None,
    num_tokens: int = 3,
) -> RequestRecord:
    first = None if ttft is None else sent_at + ttft
    chunks = () if first is None else tuple(first + 0.01 * i for i in range(num_tokens))
    return RequestRecord(
        call_id=f"c{sent_at}",
        session_id="s",
        sent_at=sent_at,
        first_choice_at=first,
        first_content_at=first,
        chunk_times=chunks,
        chunk_tokens=None,
        last_token_at=chunks[-1] if chunks else None,
        prompt_tokens=100 if error is None else None,
        output_tokens=num_tokens if error is None else None,
        cached_tokens=40 if error is None else None,
        error=error,
        status=status,
    )


# Times in wall seconds; to_model = 0.5 (time scale), so the 1 s model SLO is 2 s wall.
@pytest.mark.parametrize(
    ("records", "attainment", "rejected", "errors"),
    [
        ([_record(1.0, 1.9), _record(2.0, 2.1)], 0.5, 0.0, 0.0),
        ([_record(1.0, 0.1), _record(1.5, None, "http_429", 429)], 0.5, 0.5, 0.5),
        ([_record(1.0, 0.1), _record(1.5, None, "cancelled")], 0.5, 0.0, 0.0),
        ([_record(1.0, 0.5, "cancelled"), _record(1.5, 0.2)], 1.0, 0.0, 0.0),
        ([_record(0.5, 0.1), _record(1.0, 3.0), _record(9.0, 0.1)], 0.0, 0.0, 0.0),
    ],
    ids=["slo-edge", "rejection-is-a-miss", "no-first-token-is-a-miss",
         "cancelled-after-first-token-keeps-ttft", "outside-window-ignored"],
)  # fmt: skip
def test_window_metrics_slo_accounting(
    rq: ModuleType,
    records: list[RequestRecord],
    attainment: float,
    rejected: float,
    errors: float,
) -> None:
    m = rq.window_metrics(records, 1.0, 5.0, 0.5)
    assert m["slo_attainment"] == pytest.approx(attainment)
    assert m["rejected_share"] == pytest.approx(rejected)
    assert m["error_share"] == pytest.approx(errors)


def test_window_metrics_figures_in_model_time(rq: ModuleType) -> None:
    records = [_record(1.0 + 0.1 * i, 0.4 + 0.01 * i) for i in range(10)]
    m = rq.window_metrics(records, 1.0, 3.0, 0.5)
    assert m["num_measured"] == 10
    assert m["ttft_p50_ms"] == pytest.approx(1000 * 0.5 * 0.445, rel=1e-6)
    assert m["tpot_p50_ms"] == pytest.approx(1000 * 0.5 * 0.01, rel=1e-6)
    # 30 chunks inside a 2 s wall (1 s model) window.
    assert m["output_tokens_per_s"] == pytest.approx(30.0)
    assert m["client_cached_share"] == pytest.approx(0.4)
    missed = [
        *records[:8],
        _record(1.9, None, "http_503", 503),
        _record(1.95, None, "http_503", 503),
    ]
    assert rq.window_metrics(missed, 1.0, 3.0, 0.5)["ttft_p90_all_ms"] is None


@pytest.mark.parametrize(
    ("num_met", "num_missed", "num_unfinished", "verdict"),
    [(9, 1, 0, True), (9, 0, 1, True), (8, 2, 0, False), (8, 1, 1, None), (0, 0, 0, None)],
    ids=["met", "met-before-stragglers", "missed", "undecided", "nothing-sent"],
)
def test_judge(
    rq: ModuleType, num_met: int, num_missed: int, num_unfinished: int, verdict: bool | None
) -> None:
    records = [_record(1.0, 0.1) for _ in range(num_met)]
    records += [_record(1.0, 5.0) for _ in range(num_missed)]
    sent = [1.0] * (num_met + num_missed + num_unfinished)
    assert rq.judge(records, sent, 0.0, 2.0, 1.0) is verdict


def test_staircase_stream_is_shared_and_scales(rq: ModuleType) -> None:
    from headway.core.workloads.text import text_factory
    from headway.resources.tokenizer import default_tokenizer

    sc = rq.SCENARIOS["tiny"]
    factory = text_factory(default_tokenizer())
    model = rq.staircase_plan(sc.workload(factory, 1.0), sc.rungs([4.0, 8.0]), 0, 1.0)
    wall = rq.staircase_plan(sc.workload(factory, 4.0), sc.rungs([4.0, 8.0]), 0, 4.0)
    first = rq.staircase_plan(sc.workload(factory, 1.0), sc.rungs([4.0]), 0, 1.0)
    assert len(model) == len(wall) > len(first) > 0
    for a, b in zip(model, wall, strict=True):
        assert b.offset_s == pytest.approx(4.0 * a.offset_s)
        assert a.session.calls == b.session.calls  # same messages, tokens and headers
        delays = [s.delay_s for s in a.session.stages]
        assert [s.delay_s for s in b.session.stages] == pytest.approx([4 * d for d in delays])
    assert [s.offset_s for s in first] == [s.offset_s for s in model[: len(first)]]


def test_workload_shares_system_prompt_per_customer(rq: ModuleType) -> None:
    from headway.core.workloads.text import text_factory
    from headway.resources.tokenizer import default_tokenizer

    sc = rq.SCENARIOS["tiny"]
    wl = sc.workload(text_factory(default_tokenizer()), 1.0)
    sessions = list(wl.sessions(2 * sc.num_customers * sc.users_per_customer, 0))
    by_customer: dict[str, set[str]] = {}
    for s in sessions:
        customer = s.session_id.split("u")[0]
        by_customer.setdefault(customer, set()).add(s.calls[0].messages[0].content)
        turns = [c.prompt_tokens for c in s.calls]
        assert len(turns) == sc.num_turns and turns == sorted(turns)
    assert len(by_customer) == sc.num_customers
    assert all(len(prompts) == 1 for prompts in by_customer.values())
    full = rq.SCENARIOS["full"]
    capacity = full.num_gpu_blocks * full.block_size * full.num_replicas
    assert full.num_customers * full.system_prompt_tokens / capacity == pytest.approx(
        full.cache_demand_ratio, rel=1e-3
    )


def _arms(rq: ModuleType) -> list[Any]:
    return [
        rq.Arm("round-robin", "headway", "round-robin"),
        rq.Arm("prefix-approx", "headway", "prefix-approx"),
        rq.Arm("kv-aware", "headway", "kv-aware"),
        rq.Arm("sglang-router cache_aware", "sglang-router", "cache_aware"),
    ]


@pytest.mark.parametrize(
    ("kv", "peer", "kv_p90", "peer_p90", "above", "fifth", "below"),
    [
        ((4.0, 5.0), (3.0, 4.0), 20.0, 30.0, True, True, True),
        ((4.0, 5.0), (5.0, None), 20.0, 15.0, False, True, False),
        ((8.0, None), (8.0, None), 200.0, 30.0, None, False, False),
    ],
    ids=["kv-aware-ahead", "peer-ahead", "tie-at-the-top"],
)
def test_evaluate_targets(
    rq: ModuleType,
    kv: tuple[float, float | None],
    peer: tuple[float, float | None],
    kv_p90: float,
    peer_p90: float,
    above: bool | None,
    fifth: bool,
    below: bool,
) -> None:
    """Knees (last met, first missed) and the 1x table rows -> the issue's targets."""

    def knee(k: tuple[float, float | None]) -> dict[str, Any]:
        return {"knee_multiple": k[0], "first_miss_multiple": k[1]}

    def row(p90: float) -> dict[str, Any]:
        return {"1x": {"ttft_p90_all_ms": p90}, "1.5x": {"ttft_p90_all_ms": p90}}

    knees = {
        "round-robin": knee((1.0, 1.5)),
        "prefix-approx": knee((2.0, 3.0)),
        "kv-aware": knee(kv),
        "sglang-router cache_aware": knee(peer),
    }
    table = {
        "round-robin": row(500.0),
        "prefix-approx": row(300.0),
        "kv-aware": row(kv_p90),
        "sglang-router cache_aware": row(peer_p90),
    }
    t = rq.evaluate_targets(_arms(rq), knees, table)
    assert t["kv_aware_knee_ge_2x_round_robin"]["met"] is True
    assert t["kv_aware_knee_above_every_peer"]["met"] is above
    assert t["kv_aware_ttft_p90_at_1x_le_fifth_of_round_robin"]["kv_aware_ms"] == kv_p90
    assert t["kv_aware_ttft_p90_at_1x_le_fifth_of_round_robin"]["met"] is fifth
    assert t["kv_aware_ttft_p90_at_1x_below_every_peer"]["met"] is below
    assert t["kv_aware_beats_prefix_approx"]["met"] is True


def test_routing_quality_tiny(tmp_path: Path) -> None:
    out = tmp_path / "rq.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--no-peers", "--arms",
         "round-robin,kv-aware,kv-aware --workers 2", "--rr-knee", "6", "--seed", "3",
         "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "routing_quality"
    assert doc["peer_routers"]["note"] == "--no-peers"
    labels = ["round-robin", "kv-aware", "kv-aware --workers 2"]
    assert [a["label"] for a in doc["arms"]] == labels
    assert doc["round_robin_knee"]["sessions_per_s"] == 6
    assert doc["scenario"]["seed"] == 3
    assert set(doc["cluster_crosscheck"]) == {"round-robin", "kv-aware"}  # one gateway there
    for label in labels:
        steps = doc["staircases"][label]
        assert len(steps) >= 2  # the fixed rungs always run
        for step in steps:
            assert step["is_cache_reset"] is True
            assert step["num_measured"] > 0
            assert step["error_share"] == 0.0
            assert 0.0 <= step["engine_hit_rate"] <= 1.0
            # The engines' own TTFT is part of the client's: the front end's share is
            # what is left, a fraction of the whole.
            assert 0.0 < step["engine_ttft_mean_ms"] <= step["ttft_mean_ms"] * 1.05
            assert step["front_end_ttft_mean_ms"] < step["ttft_mean_ms"]
        assert set(doc["table"][label]) == {"1x", "1.5x"}
        if label in doc["cluster_crosscheck"]:
            assert set(doc["cluster_crosscheck"][label]["rungs"]) == {"1x", "1.5x", "2x", "3x"}
    # Precise prefix routing reuses the customers' system prompts that round-robin scatters.
    hit = {label: doc["table"][label]["1x"]["engine_hit_rate"] for label in doc["table"]}
    assert hit["kv-aware"] > hit["round-robin"]
    assert set(doc["targets"]) >= {
        "kv_aware_knee_ge_2x_round_robin",
        "kv_aware_beats_prefix_approx",
    }
    assert "target kv_aware_knee_ge_2x_round_robin" in proc.stdout


def _simulate(tmp_path: Path, flag: str, variants: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Run the script's simulation-only mode (`flag` = --sim-weights | --sim-profiles)
    on the tiny scenario at two rungs; (its JSON, its stdout)."""
    out = tmp_path / "sim.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--rr-knee", "6", "--ladder", "1,1.5",
         flag, json.dumps(variants), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert set(doc["weights"]) == set(variants)
    for name in variants:
        rungs = doc["weights"][name]["rungs"]
        assert [r["rate_sessions_per_s"] for r in rungs] == [6.0, 9.0]
        assert all(r["num_measured"] > 0 for r in rungs)
    return doc, proc.stdout


def test_routing_quality_sim_weights(tmp_path: Path) -> None:
    weights = {"2:1:1": [["precise-prefix", 2], ["token-load", 1], ["least-request", 1]]}
    doc, _ = _simulate(tmp_path, "--sim-weights", weights)
    assert [s["type"] for s in doc["weights"]["2:1:1"]["profile"]["scorers"]] == [
        "precise-prefix",
        "token-load",
        "least-request",
    ]


def test_routing_quality_sim_profiles(tmp_path: Path) -> None:
    profiles = {
        "preset": "kv-aware",
        "no-affinity": {
            "filters": ["healthy", "serves-model", "saturation"],
            "scorers": [
                {"type": "precise-prefix", "weight": 2},
                {"type": "token-load", "weight": 1},
            ],
        },
    }
    doc, stdout = _simulate(tmp_path, "--sim-profiles", profiles)
    assert doc["weights"]["preset"]["profile"] == "kv-aware"
    assert "no-affinity: knee" in stdout


def test_targets_without_the_other_arm_are_not_judged(rq: ModuleType) -> None:
    """A run of kv-aware and one peer (a higher ladder) judges the peer targets only."""
    knees = {
        "kv-aware": {"knee_multiple": 12.0, "first_miss_multiple": 14.0},
        "sglang-router cache_aware": {"knee_multiple": 10.0, "first_miss_multiple": 12.0},
    }
    table = {
        "kv-aware": {"1x": {"ttft_p90_all_ms": 15.1}, "1.5x": {"ttft_p90_all_ms": 16.0}},
        "sglang-router cache_aware": {"1x": {"ttft_p90_all_ms": 14.9}},
    }
    t = rq.evaluate_targets([a for a in _arms(rq) if a.label in knees], knees, table)
    assert t["kv_aware_knee_above_every_peer"]["met"] is True
    assert t["kv_aware_ttft_p90_at_1x_below_every_peer"]["met"] is False
    for name in ("kv_aware_ttft_p90_at_1x_le_fifth_of_round_robin", "kv_aware_beats_prefix_approx"):
        assert t[name]["met"] is None and "not judged" in t[name]["note"]
