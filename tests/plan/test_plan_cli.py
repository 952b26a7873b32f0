"""`headway plan throughput`: in-process through `headway.cli.main` and as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from headway.cli import main

BASE = ["plan", "throughput", "--model", "llama-3.1-8b", "--gpu", "h100", "--precision", "fp8"]


def _run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `headway ARGV`, whether argparse exits or run returns."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = int(exc.code) if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run_main([*BASE, "--isl", "1000", "--osl", "1000"], capsys)
    assert code == 0, err
    for needle in (
        "output tokens/s per GPU",
        "batch size",
        "bound:",
        "step time",
        "TPOT",
        "total tokens/s",
    ):
        assert needle in out


@pytest.mark.parametrize(
    ("extra", "bound"),
    [
        (["--isl", "20000", "--osl", "2000"], "kv_capacity"),
        (["--isl", "128", "--osl", "128", "--max-num-seqs", "32"], "max_num_seqs"),
        (
            ["--isl", "4096", "--osl", "64", "--max-num-batched-tokens", "2048"],
            "max_num_batched_tokens",
        ),
    ],
    ids=["kv", "seqs", "budget"],
)
def test_json_output(capsys: pytest.CaptureFixture[str], extra: list[str], bound: str) -> None:
    code, out, err = _run_main([*BASE, *extra, "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    est = doc["estimate"]
    assert est["bound"] == bound
    assert est["output_tokens_per_s_per_gpu"] > 0
    assert est["num_seqs"] >= 1
    assert est["tpot_s"] == est["step_time_s"] > 0
    assert doc["inputs"]["model"] == "llama-3.1-8b"
    assert doc["inputs"]["gpu"] == "h100-sxm"
    assert doc["inputs"]["precision"] == "fp8"


def test_tp2_json_reports_per_gpu(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "throughput", "--model", "llama-3.3-70b", "--gpu", "h100", "--tp", "2"]
    code, out, err = _run_main(
        [*argv, "--precision", "fp8", "--isl", "1000", "--osl", "1000", "--json"], capsys
    )
    assert code == 0, err
    est = json.loads(out)["estimate"]
    assert est["num_gpus"] == 2
    assert est["output_tokens_per_s_per_gpu"] == pytest.approx(est["output_tokens_per_s"] / 2)


def test_extra_catalog_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "extra.yaml"
    path.write_text(
        "gpus:\n  h100-half-bw:\n    hbm_gib: 79.6\n    hbm_bandwidth_tb_s: 1.675\n"
        "    tflops: {bf16: 989, fp8: 1979}\n    interconnect_gb_s: 450\n    board_power_w: 700\n"
    )
    args = ["--isl", "128", "--osl", "2048", "--json"]
    _, fast, _ = _run_main([*BASE, *args], capsys)
    argv = [
        "plan",
        "throughput",
        "--model",
        "llama-3.1-8b",
        "--gpu",
        "h100-half-bw",
        "--precision",
        "fp8",
    ]
    code, slow, err = _run_main([*argv, *args, "--catalog", str(path)], capsys)
    assert code == 0, err
    fast_rate = json.loads(fast)["estimate"]["output_tokens_per_s_per_gpu"]
    slow_rate = json.loads(slow)["estimate"]["output_tokens_per_s_per_gpu"]
    assert slow_rate < fast_rate


BAD_INPUTS = [
    (["--model", "no-such-model"], "--model"),
    (["--gpu", "no-such-gpu"], "--gpu"),
    (["--precision", "fp3"], "--precision"),
    (["--tp", "0"], "--tp"),
    (["--isl", "0"], "--isl"),
    (["--osl", "-5"], "--osl"),
    (["--isl", "abc"], "--isl"),
    (["--max-num-seqs", "0"], "--max-num-seqs"),
    (["--max-num-batched-tokens", "0"], "--max-num-batched-tokens"),
    (["--model", "llama-3.1-405b", "--precision", "bf16"], "--tp"),
    (["--isl", "200000"], "--isl"),
    (["--catalog", "/nonexistent/catalog.yaml"], "--catalog"),
]
BAD_IDS = [
    "unknown-model",
    "unknown-gpu",
    "unknown-precision",
    "tp0",
    "isl0",
    "osl-negative",
    "isl-not-int",
    "seqs0",
    "budget0",
    "model-does-not-fit",
    "longer-than-context",
    "missing-catalog",
]


def _bad_argv(override: list[str]) -> list[str]:
    """BASE with --isl/--osl defaults, the override's flags replacing BASE's."""
    opts = dict(zip(BASE[2::2], BASE[3::2], strict=True))
    opts.update({"--isl": "1000", "--osl": "1000"})
    opts.update(dict(zip(override[::2], override[1::2], strict=True)))
    return ["plan", "throughput", *[x for kv in opts.items() for x in kv]]


@pytest.mark.parametrize(("override", "flag"), BAD_INPUTS, ids=BAD_IDS)
def test_bad_input_in_process(
    capsys: pytest.CaptureFixture[str], override: list[str], flag: str
) -> None:
    code, out, err = _run_main(_bad_argv(override), capsys)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert flag in lines[0]
    assert "Traceback" not in err


def test_missing_required_flag_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run_main(
        ["plan", "throughput", "--gpu", "h100", "--isl", "1", "--osl", "1"], capsys
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "--model" in err


def _subprocess(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headway.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_subprocess_json() -> None:
    proc = _subprocess([*BASE, "--isl", "1000", "--osl", "1000", "--json"])
    assert proc.returncode == 0, proc.stderr
    est = json.loads(proc.stdout)["estimate"]
    assert est["output_tokens_per_s_per_gpu"] > 0
    assert est["bound"] in {
        "kv_capacity",
        "max_num_seqs",
        "max_num_batched_tokens",
        "throughput_peak",
    }


@pytest.mark.parametrize(
    ("override", "flag"),
    [BAD_INPUTS[0], BAD_INPUTS[3], BAD_INPUTS[6], BAD_INPUTS[9]],
    ids=["unknown-model", "tp0", "isl-not-int", "model-does-not-fit"],
)
def test_subprocess_bad_input(override: list[str], flag: str) -> None:
    proc = _subprocess(_bad_argv(override))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert flag in lines[0]
