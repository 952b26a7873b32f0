"""`headway plan explain`: the named limit of one configuration at a load, on named
cases (a model, GPU, workload and rate where each limit should show)."""

from __future__ import annotations

import json

import pytest

from headway.cli import main

BASE = ["plan", "explain", "--gpu", "h100", "--workload", "synthetic", "--json"]
SHORT = ["--workload-param", "input_len=1024", "--workload-param", "output_len=64"]
LONG = ["--workload-param", "input_len=2000", "--workload-param", "output_len=200"]


@pytest.mark.parametrize(
    ("args", "limit"),
    [
        # 3,840 output tokens/s offered to one replica that saturates near 2,000.
        (["--model", "llama-3.1-8b", *SHORT, "--rate", "60", "--num-requests", "120"], "queueing"),
        # The same load over three replicas: prefill-heavy steps, math over HBM reads.
        (
            ["--model", "llama-3.1-8b", *SHORT, "--rate", "60", "--replicas", "3",
             "--num-requests", "120"],
            "compute",
        ),
        # Light load over four replicas: batches of ~1, weight reads dominate.
        (
            ["--model", "llama-3.1-8b", *SHORT, "--rate", "10", "--replicas", "4",
             "--num-requests", "60"],
            "hbm_bandwidth",
        ),
        # 70B FP8 on one H100 leaves ~12.8k tokens of KV: ~6 requests of 2k fit.
        (
            ["--model", "llama-3.1-70b", "--precision", "fp8", *LONG, "--rate", "0.6",
             "--num-requests", "60"],
            "kv_capacity",
        ),
    ],
    ids=["8b-overloaded", "8b-prefill-heavy", "8b-light", "70b-fp8-long-prompts"],
)  # fmt: skip
def test_explain_names_the_limit(
    args: list[str], limit: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*BASE, *args, "--slo", "ttft_p90:500"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["limit"] == limit
    f = out["figures"]
    assert f["p90_ttft_ms"] >= f["unloaded_ttft_ms"] * 0.99
    assert (
        out["lines"][0].split(" ")[0].lower()
        in {
            "queueing": ("queueing",),
            "compute": ("compute",),
            "hbm_bandwidth": ("hbm",),
            "kv_capacity": ("kv-cache",),
        }[limit]
    )
    assert out["is_slo_met"] is (f["p90_ttft_ms"] <= 500)


def test_explain_text_output_has_the_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "explain", "--model", "llama-3.1-8b", "--gpu", "h100", *SHORT]
    assert main([*args, "--rate", "10", "--replicas", "4", "--num-requests", "40"]) == 0
    text = capsys.readouterr().out
    assert "HBM bandwidth limits it" in text
    for phrase in ("output tokens/s", "KV cache", "TTFT p90", "TPOT p50", "Step at the mean"):
        assert phrase in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "llama-3.1-70b"], "does not fit"),
        (["--replicas", "0"], "--replicas"),
        (["--gpu", "nope"], "--gpu"),
        (["--profile", "nope"], "--profile"),
    ],
    ids=["70b-bf16-on-h100", "replicas", "gpu", "profile"],
)
def test_explain_bad_input_is_one_line(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["plan", "explain", "--model", "llama-3.1-8b", *SHORT, "--rate", "1"]
    assert main([*args, "--num-requests", "10", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
