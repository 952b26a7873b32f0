"""`headway plan whatif`: speculative decoding, P/D disaggregation, quantization and
routing, checked against hand-computed values and on named cases."""

from __future__ import annotations

import json
from typing import Any

import pytest

from headway.cli import main


def _json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    assert main(["plan", "whatif", *args, "--json"]) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


SPEC = ["spec-decode", "--model", "llama-3.1-8b", "--gpu", "h100"]


def test_spec_decode_hand_computed(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(
        capsys, *SPEC, "--acceptance-prob", "0.8", "--k", "4", "--draft-cost", "0.1",
        "--context", "128", "--max-batch", "1024",
    )  # fmt: skip
    # E = (1 - 0.8^5) / 0.2 = 3.3616; ideal speed-up 3.3616 / (4 x 0.1 + 1).
    assert out["expected_tokens_per_step"] == pytest.approx(3.3616)
    assert out["ideal_speedup"] == pytest.approx(3.3616 / 1.4)
    rows = out["by_batch"]
    assert [r["num_seqs"] for r in rows] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    # Named case (8B BF16, H100, 128-token contexts): pays at batch 1, not at 1024.
    assert rows[0]["speedup"] > 2.0 and rows[-1]["speedup"] < 1.0
    b = out["break_even_batch"]
    assert b is not None and 1 < b < 1024
    speedups = [r["speedup"] for r in rows]
    assert speedups == sorted(speedups, reverse=True)


def test_spec_decode_from_measured_acceptance_length(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, *SPEC, "--acceptance-length", "2.5", "--k", "3", "--draft-cost", "0")
    assert out["expected_tokens_per_step"] == 2.5
    a = out["acceptance_prob"]
    assert (1 - a**4) / (1 - a) == pytest.approx(2.5, rel=1e-9)
    assert out["ideal_speedup"] == pytest.approx(2.5)


PD = ["pd", "--gpu", "h100", "--link-gb-s", "50"]


@pytest.mark.parametrize(
    ("args", "is_prefill_heavy"),
    [
        # 4,000-token prompts, 300-token answers on 70B FP8 TP4: prefill dominates.
        (["--model", "llama-3.1-70b", "--precision", "fp8", "--tp", "4", "--isl", "4000",
          "--osl", "300", "--rate", "10", "--tpot-ms", "40"], True),
        # 1,000 / 1,000 on 8B BF16: decode dominates.
        (["--model", "llama-3.1-8b", "--isl", "1000", "--osl", "1000", "--rate", "20"], False),
    ],
    ids=["70b-long-prompts", "8b-long-answers"],
)  # fmt: skip
def test_pd_pools_cover_the_rate_and_the_ratio_follows_the_workload(
    capsys: pytest.CaptureFixture[str], args: list[str], is_prefill_heavy: bool
) -> None:
    out = _json(capsys, *PD, *args)
    rate = float(args[args.index("--rate") + 1])
    assert out["num_prefill_replicas"] * out["prefill_requests_per_s"] >= rate
    assert out["num_decode_replicas"] * out["decode_requests_per_s"] >= rate
    assert (out["num_prefill_replicas"] - 1) * out["prefill_requests_per_s"] < rate
    assert out["num_aggregated_replicas"] * out["aggregated_requests_per_s"] >= rate
    p, d = out["best_ratio"]
    assert (p > d) is is_prefill_heavy


def test_pd_kv_transfer_hand_computed(capsys: pytest.CaptureFixture[str]) -> None:
    # Llama-3.1-8B BF16: 128 KiB of KV per token; 1,000 tokens over 50 GB/s = 2.62144 ms.
    out = _json(
        capsys, *PD, "--model", "llama-3.1-8b", "--isl", "1000", "--osl", "100", "--rate", "1"
    )
    assert out["kv_transfer_s"] == pytest.approx(1000 * 131072 / 50e9)


def test_pd_tpot_target_caps_the_decode_batch(capsys: pytest.CaptureFixture[str]) -> None:
    base = [*PD, "--model", "llama-3.1-8b", "--isl", "1000", "--osl", "1000", "--rate", "20"]
    free = _json(capsys, *base)
    capped = _json(capsys, *base, "--tpot-ms", "15")
    assert 0 < capped["decode_batch"] < free["decode_batch"]
    assert capped["num_decode_replicas"] >= free["num_decode_replicas"]


def test_quant_named_cases(capsys: pytest.CaptureFixture[str]) -> None:
    # 70B on one H100: BF16 weights do not fit, FP8 ones do.
    one = _json(
        capsys, "quant", "--model", "llama-3.1-70b", "--gpu", "h100", "--precisions", "bf16,fp8"
    )
    by = {r["precision"]: r for r in one["precisions"]}
    assert not by["bf16"]["fits"] and by["fp8"]["fits"]
    # 70B on two H100s: FP8 KV doubles the tokens that fit next to the same FP8 weights,
    # and FP8 beats BF16 on saturated throughput.
    two = _json(
        capsys, "quant", "--model", "llama-3.1-70b", "--gpu", "h100", "--tp", "2",
        "--precisions", "bf16,fp8-kvbf16,fp8",
    )  # fmt: skip
    by = {r["precision"]: r for r in two["precisions"]}
    assert by["fp8"]["kv_capacity_tokens"] == pytest.approx(
        2 * by["fp8-kvbf16"]["kv_capacity_tokens"], abs=2
    )
    assert by["fp8"]["weight_gib_per_gpu"] == pytest.approx(by["bf16"]["weight_gib_per_gpu"] / 2)
    assert (
        by["fp8"]["saturated_output_tokens_per_s_per_gpu"]
        > by["bf16"]["saturated_output_tokens_per_s_per_gpu"]
    )


def test_router_cache_aware_saves_gpus_on_shared_prefixes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Named case: 16 system prompts of 4,000 tokens at 40 sessions/s on H100s."""
    out = _json(
        capsys, "router", "--model", "llama-3.1-8b", "--gpu", "h100", "--workload",
        "shared-prefix", "--workload-param", "num_groups=16", "--workload-param",
        "system_prompt_tokens=4000", "--workload-param", "output_tokens=32",
        "--workload-param", "question_tokens=64", "--rate", "40", "--num-requests", "100",
        "--slo", "ttft_p90:300,tpot_p90:30", "--gpu-hourly-usd", "h100=2",
    )  # fmt: skip
    rr, kv = out["profiles"]
    assert (rr["profile"], kv["profile"]) == ("round-robin", "kv-aware")
    assert kv["prefix_hit_rate"] > rr["prefix_hit_rate"]
    assert kv["gpus_saved"] >= 1
    assert kv["usd_per_month_saved"] == pytest.approx(kv["gpus_saved"] * 2.0 * 730)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*SPEC, "--acceptance-prob", "1.5"], "--acceptance-prob"),
        ([*SPEC, "--acceptance-length", "9", "--k", "4"], "--acceptance-length"),
        ([*SPEC, "--acceptance-prob", "0.5", "--k", "0"], "--k"),
        (["pd", "--model", "llama-3.1-8b", "--isl", "10", "--osl", "10", "--rate", "0"], "--rate"),
        (
            ["pd", "--model", "llama-3.1-70b", "--isl", "10", "--osl", "10", "--rate", "1"],
            "does not fit",
        ),
        (["quant", "--model", "llama-3.1-8b", "--precisions", "fp3"], "--precisions"),
        (["quant", "--model", "nope"], "--model"),
    ],
    ids=["a>1", "length>k+1", "k0", "rate0", "70b-bf16-h100", "precision", "model"],
)
def test_whatif_bad_input_is_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["plan", "whatif", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
