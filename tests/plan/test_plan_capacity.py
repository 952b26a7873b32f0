"""`headway plan capacity`: the replica search on named cases, SLO parsing, economics,
and the command's output for a small search.

The regression checks are NAMED cases (a workload, a rate, a configuration): none of
them holds for every workload, so each pins one scenario where it should.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from headway.bench.workload_source import build_from_source
from headway.cli import main
from headway.core.catalog import Catalog
from headway.plan.capacity import Prices, figures, rank
from headway.plan.search import (
    Candidate,
    EngineLimits,
    Scenario,
    Slo,
    SloTarget,
    build_scenario,
    engine_spec,
    parse_slo,
    probe_of,
    search,
    simulate,
)
from headway.resources.catalog import load_catalog

MODEL = "llama-3.1-8b"
# 1024-token prompts, 64-token answers, 60 sessions/s: 3,840 output tokens/s offered.
SLO = "ttft_p90:150,tpot_p90:25"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog([])


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    workload, tokenizer = build_from_source(
        "synthetic", {"input_len": 1024, "output_len": 64}, None
    )
    return build_scenario(
        workload, tokenizer, tokenizer.output_vocab(), num_sessions=120, request_rate=60.0,
        burstiness=1.0, seed=0,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "targets"),
    [
        ("ttft_p90:500,tpot_p90:50", [("ttft", "p90", 500.0), ("tpot", "p90", 50.0)]),
        ("e2el_p99:2000", [("e2el", "p99", 2000.0)]),
        ("tpot_p50:20, itl_mean:10", [("tpot", "median", 20.0), ("itl", "mean", 10.0)]),
    ],
    ids=["ttft-tpot", "e2el", "median-mean"],
)
def test_parse_slo(text: str, targets: list[tuple[str, str, float]]) -> None:
    assert parse_slo(text) == Slo(tuple(SloTarget(*t) for t in targets))


@pytest.mark.parametrize(
    "text", ["ttft:500", "ttft_p42:5", "foo_p90:5", "ttft_p90:abc", "ttft_p90:0", ""],
    ids=["no-stat", "bad-stat", "bad-metric", "not-a-number", "zero", "empty"],
)  # fmt: skip
def test_parse_slo_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_slo(text)


def test_slo_misses_and_goodput_limits() -> None:
    slo = parse_slo("ttft_p90:100,ttft_p99:300,tpot_p90:20")
    summary = {"p90_ttft_ms": 120.0, "p99_ttft_ms": 250.0, "p90_tpot_ms": 20.0}
    assert slo.misses(summary) == ["ttft_p90 120.0 ms > 100 ms"]
    # Per-request goodput uses each metric's tightest limit.
    g = slo.goodput()
    assert (g.ttft_ms, g.tpot_ms, g.e2el_ms) == (100.0, 20.0, None)


def test_more_replicas_raise_goodput_on_synthetic_1024_64(
    scenario: Scenario, catalog: Catalog
) -> None:
    """Named case: H100 BF16 at 60 sessions/s misses TPOT on one replica."""
    slo = parse_slo(SLO)
    spec = Candidate("h100", "bf16", 1, "round-robin")
    es = engine_spec(MODEL, spec, EngineLimits())
    one = probe_of(simulate(scenario, catalog, es, "round-robin", 1, EngineLimits(), 0), 1, slo)
    three = probe_of(simulate(scenario, catalog, es, "round-robin", 3, EngineLimits(), 0), 3, slo)
    assert not one.is_feasible and three.is_feasible
    assert three.summary["total_useful_output_tokens"] > one.summary["total_useful_output_tokens"]
    assert three.summary["p90_tpot_ms"] < one.summary["p90_tpot_ms"]


def test_faster_gpu_raises_throughput_on_one_overloaded_replica(
    scenario: Scenario, catalog: Catalog
) -> None:
    """Named case: one BF16 replica at 60 sessions/s is saturated; H200's HBM is faster."""
    slo = parse_slo(SLO)
    limits = EngineLimits()
    out = {}
    for gpu in ("h100", "h200"):
        es = engine_spec(MODEL, Candidate(gpu, "bf16", 1, "round-robin"), limits)
        out[gpu] = probe_of(simulate(scenario, catalog, es, "round-robin", 1, limits, 0), 1, slo)
    assert out["h200"].summary["output_throughput"] > out["h100"].summary["output_throughput"]
    assert out["h200"].summary["p90_tpot_ms"] < out["h100"].summary["p90_tpot_ms"]


def test_fp8_needs_no_more_gpus_than_bf16_and_search_is_minimal(
    scenario: Scenario, catalog: Catalog
) -> None:
    """Named case: on H100 FP8 meets the SLO with fewer replicas than BF16."""
    slo = parse_slo(SLO)
    bf16 = search(MODEL, Candidate("h100", "bf16", 1, "round-robin"), scenario, catalog, slo)
    fp8 = search(MODEL, Candidate("h100", "fp8", 1, "round-robin"), scenario, catalog, slo)
    assert bf16.num_gpus is not None and fp8.num_gpus is not None
    assert fp8.num_gpus <= bf16.num_gpus
    for o in (bf16, fp8):
        n = o.num_replicas
        assert n is not None
        assert o.best is not None and o.best.is_feasible
        # The count below the answer was simulated and missed (or the answer is 1).
        below = [p for p in o.probes if p.num_replicas == n - 1]
        assert n == 1 or (below and not below[0].is_feasible)
        # The analytic bound is a start, never above a passing count here.
        assert o.analytic_replicas is not None and o.analytic_replicas <= n + 1
    prices = Prices({"h100-sxm": 3.0}, {"h100-sxm": 700.0})
    ranked = rank([bf16, fp8], prices)
    assert next(o.candidate.precision for o, _ in ranked) == "fp8"
    f = figures(fp8, prices)
    assert f is not None and f.usd_per_1m_useful_tokens is not None
    assert f.joules_per_output_token == pytest.approx(
        700.0 * f.num_gpus / (f.output_tokens_per_s_per_gpu * f.num_gpus)
    )


@pytest.mark.parametrize(
    ("model", "precision", "tp", "max_replicas", "reason"),
    [
        ("llama-3.1-70b", "bf16", 1, 64, "does not fit"),
        ("llama-3.1-8b", "bf16", 1, 1, "max-replicas 1"),
    ],
    ids=["70b-bf16-on-one-h100", "replica-cap"],
)
def test_infeasible_configurations_say_why(
    scenario: Scenario,
    catalog: Catalog,
    model: str,
    precision: str,
    tp: int,
    max_replicas: int,
    reason: str,
) -> None:
    o = search(
        model,
        Candidate("h100", precision, tp, "round-robin"),
        scenario,
        catalog,
        parse_slo(SLO),
        max_replicas=max_replicas,
    )
    assert not o.is_feasible and o.reason is not None and reason in o.reason


def _headway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headway.cli", *args], capture_output=True, text=True, timeout=120
    )


CLI = [
    "plan", "capacity", "--model", MODEL, "--gpus", "h100", "--precisions", "bf16,fp8",
    "--tp", "1", "--profiles", "round-robin", "--workload", "synthetic",
    "--workload-param", "input_len=512", "--workload-param", "output_len=32",
    "--rate", "40", "--num-requests", "60", "--slo", "ttft_p90:150,tpot_p90:12",
    "--gpu-hourly-usd", "h100=2", "--max-replicas", "4",
]  # fmt: skip


def test_cli_small_search_writes_json_and_report(tmp_path: Path) -> None:
    proc = _headway(*CLI, "--json", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "headway.plan.capacity/1"
    assert doc["metadata"]["gpu_hourly_usd"]["h100-sxm"] == 2.0
    configs = doc["ranked"] + doc["infeasible"]
    assert sorted(c["precision"] for c in configs) == ["bf16", "fp8"]
    for c in doc["ranked"]:
        f = c["figures"]
        assert f["num_gpus"] == f["num_replicas"] * c["tp"]
        assert c["summary"]["failed"] == 0
        assert c["summary"]["p90_tpot_ms"] <= 12 and c["summary"]["p90_ttft_ms"] <= 150
        assert f["usd_per_1m_output_tokens"] > 0 and f["joules_per_output_token"] > 0
    for c in doc["infeasible"]:
        assert c["reason"]
    costs = [c["figures"]["usd_per_1m_useful_tokens"] for c in doc["ranked"]]
    assert costs == sorted(costs)
    for name in ("capacity.json", "pareto.png", "report.html"):
        assert (tmp_path / name).is_file()
    assert "Feasible configurations" in (tmp_path / "report.html").read_text()


def test_cli_table_output() -> None:
    proc = _headway(*CLI)
    assert proc.returncode == 0, proc.stderr
    assert "Feasible configurations" in proc.stdout
    assert "h100-sxm fp8 tp1 round-robin" in proc.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--gpus", "nope"], "--gpus"),
        (["--precisions", "fp3"], "--precisions"),
        (["--tp", "0"], "--tp"),
        (["--profiles", "nope"], "--profiles"),
        (["--slo", "ttft:5"], "--slo"),
        (["--rate", "0"], "--rate"),
        (["--gpu-hourly-usd", "h100=abc"], "--gpu-hourly-usd"),
        (["--workload", "nope"], "--workload"),
        (["--model", "nope"], "--model"),
    ],
    ids=["gpu", "precision", "tp", "profile", "slo", "rate", "price", "workload", "model"],
)
def test_cli_bad_input_is_one_line(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*CLI, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("kwh", "hourly"),
    [(None, 3.0), (0.10, 3.0 + 0.7 * 0.10)],
    ids=["price-only", "plus-energy-at-board-power"],
)
def test_hourly_price_adds_energy_only_when_asked(kwh: float | None, hourly: float) -> None:
    prices = Prices({"h100-sxm": 3.0}, {"h100-sxm": 700.0}, kwh)
    assert prices.hourly_usd("h100-sxm") == pytest.approx(hourly)
    assert prices.hourly_usd("b200") is None  # no price: no $ figures


def test_search_is_reproducible(scenario: Scenario, catalog: Catalog) -> None:
    c = Candidate("h100", "fp8", 1, "kv-aware")
    a = search(MODEL, c, scenario, catalog, parse_slo(SLO))
    b = search(MODEL, c, scenario, catalog, parse_slo(SLO))
    assert a == b
