"""`headway plan whatif pd --simulate N`: every P:D split of N replicas and N aggregated
ones in the cluster simulation, and the best split chosen from the simulated figures."""

from __future__ import annotations

import json
from typing import Any

import pytest

from headway.cli import main

BASE = [
    "plan", "whatif", "pd", "--model", "llama-3.1-8b", "--gpu", "h100", "--isl", "1000",
    "--osl", "40", "--rate", "8", "--sim-requests", "40",
]  # fmt: skip


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main([*BASE, *args, "--json"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_every_split_is_simulated_and_the_best_meets_the_target(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = _json(capsys, "--simulate", "3", "--tpot-ms", "50")
    sim = out["simulated"]
    layouts = [r["layout"] for r in sim["rows"]]
    assert layouts == ["1:2", "2:1", "3 aggregated"]
    for r in sim["rows"]:
        assert r["failed"] == 0 and r["output_tokens_per_s"] > 0
    # An idle link moves 1,000 tokens x 128 KiB at 50 GB/s in 2.62 ms (more if queued).
    split = sim["rows"][0]
    assert split["mean_kv_transfer_ms"] >= 1000 * 131072 / 50e9 * 1e3 - 1e-9
    assert sim["rows"][-1]["mean_kv_transfer_ms"] == 0.0  # aggregated: no hand-off
    best = next(r for r in sim["rows"] if r["layout"] == sim["best_layout"])
    assert best["tpot_p90_ms"] <= 50
    ok = [r for r in sim["rows"][:-1] if r["tpot_p90_ms"] <= 50]
    assert best["ttft_p90_ms"] == min(r["ttft_p90_ms"] for r in ok)
    assert sim["best_ratio"] == [best["num_prefill"], best["num_decode"]]


def test_slower_link_raises_simulated_ttft(capsys: pytest.CaptureFixture[str]) -> None:
    fast = _json(capsys, "--simulate", "2", "--link-gb-s", "50")["simulated"]["rows"][0]
    slow = _json(capsys, "--simulate", "2", "--link-gb-s", "1")["simulated"]["rows"][0]
    # 1,000 tokens x 128 KiB over 1 GB/s: 131 ms per transfer.
    assert slow["mean_kv_transfer_ms"] >= 131.0
    assert slow["ttft_p90_ms"] > fast["ttft_p90_ms"] + 100


@pytest.mark.parametrize(
    ("args", "field"),
    [(["--simulate", "1"], "--simulate"), (["--simulate", "2", "--sim-requests", "0"], "--sim-requests")],
    ids=["one-replica", "no-requests"],
)  # fmt: skip
def test_bad_simulation_input_is_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], field: str
) -> None:
    assert main([*BASE, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert field in err and "\n" not in err
