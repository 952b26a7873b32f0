"""Gateway config validation: every error names its field; the documented example
loads; `headway serve` rejects bad flags with exit status 2 and a message."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import serve_command

from headway.cli import main
from headway.gateway.config import (
    EngineKind,
    GatewayConfigError,
    config_from_mapping,
    load_config,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
EP = "http://127.0.0.1:9000"


def cfg(**pool_fields: Any) -> dict[str, Any]:
    return {"pools": [{"model": "m", "endpoints": [EP], **pool_fields}]}


ERRORS = {
    "not-a-mapping": ([1], "", "must be a mapping"),
    "unknown-top-level": ({"pools": [{"model": "m"}], "nope": 1}, "nope", "unknown field"),
    "pools-missing": ({}, "pools", "field required"),
    "pools-empty": ({"pools": []}, "pools", "non-empty list"),
    "pool-not-mapping": ({"pools": ["m"]}, "pools[0]", "must be a mapping"),
    "model-missing": ({"pools": [{"endpoints": [EP]}]}, "pools[0].model", "field required"),
    "model-empty": (cfg(model=""), "pools[0].model", "non-empty string"),
    "endpoints-not-list": (cfg(endpoints=EP), "pools[0].endpoints", "list of URLs"),
    "endpoint-bad-scheme": (
        cfg(endpoints=[EP, "ftp://x"]),
        "pools[0].endpoints[1]",
        "http:// or https://",
    ),
    "endpoint-bad-port": (
        cfg(endpoints=["http://h:99999"]),
        "pools[0].endpoints[0]",
        "invalid port",
    ),
    "endpoint-duplicate": (cfg(endpoints=[EP, EP + "/"]), "pools[0].endpoints[1]", "duplicate"),
    "engine-unknown": (cfg(engine="tgi"), "pools[0].engine", "must be one of"),
    "routing-unknown-preset": (cfg(routing="fastest"), "pools[0].routing", "preset"),
    "routing-bad-type": (cfg(routing=3), "pools[0].routing", "preset name or a routing config"),
    "routing-bad-plugin": (
        cfg(routing={"profiles": {"p": {"scorers": [{"type": "least-request", "weight": -1}]}}}),
        "pools[0].routing.profiles.p.scorers[0].weight",
        ">= 0",
    ),
    "aliases-not-list": (cfg(aliases="x"), "pools[0].aliases", "list of strings"),
    "alias-taken": (
        {"pools": [{"model": "a"}, {"model": "b", "aliases": ["c", "a"]}]},
        "pools[1].aliases[1]",
        "already served by pools[0]",
    ),
    "fallback-unknown": (cfg(fallback="zzz"), "pools[0].fallback", "no pool"),
    "fallback-self": (cfg(fallback="m"), "pools[0].fallback", "itself"),
    "unknown-pool-field": (cfg(weight=1), "pools[0].weight", "unknown field"),
    "listen-port": ({**cfg(), "listen": {"port": 70000}}, "listen.port", "[0, 65535]"),
    "max-body-bytes": ({**cfg(), "limits": {"max_body_bytes": 0}}, "limits.max_body_bytes", ">= 1"),
    "timeout-negative": ({**cfg(), "timeouts": {"ttft_s": -1}}, "timeouts.ttft_s", "> 0"),
    "timeout-not-number": ({**cfg(), "timeouts": {"total_s": "1m"}}, "timeouts.total_s", "seconds"),
    "drain-null": ({**cfg(), "timeouts": {"drain_s": None}}, "timeouts.drain_s", "seconds"),
}


@pytest.mark.parametrize(("raw", "path", "message"), ERRORS.values(), ids=ERRORS.keys())
def test_config_errors_name_the_field(raw: Any, path: str, message: str) -> None:
    with pytest.raises(GatewayConfigError) as info:
        config_from_mapping(raw)
    assert info.value.path == path
    assert message in info.value.message
    assert str(info.value).startswith(f"{path}: " if path else message)


def test_defaults() -> None:
    config = config_from_mapping({"pools": [{"model": "m", "endpoints": [EP + "/"]}]})
    (p,) = config.pools
    assert p.endpoints == (EP,)
    assert p.engine is EngineKind.VLLM and p.routing == "round-robin" and p.fallback is None
    assert config.listen.port == 8080 and config.listen.host == "127.0.0.1"
    assert config.timeouts.ttft_s == 60.0
    assert config.limits.max_body_bytes == 16 * 1024 * 1024


def test_null_timeout_disables_it() -> None:
    config = config_from_mapping({**cfg(), "timeouts": {"idle_s": None}})
    assert config.timeouts.idle_s is None


def test_documented_example_loads(tmp_path: Path) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.S)
    assert blocks, "docs/configuration.md has no yaml example"
    path = tmp_path / "gateway.yaml"
    path.write_text(blocks[0])
    config = load_config(path)
    assert len(config.pools) >= 2
    assert {p.engine for p in config.pools} >= {EngineKind.VLLM}


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(GatewayConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: [\n")
    with pytest.raises(GatewayConfigError, match="not valid YAML"):
        load_config(bad)


BAD_FLAGS = {
    "port-range": (["--port", "70000"], "--port"),
    "endpoint-scheme": (["--endpoints", "ftp://x", "--model", "m"], "--endpoints[0]"),
    "endpoints-empty": (["--endpoints", " ", "--model", "m"], "--endpoints"),
    "profile-unknown": (["--endpoints", EP, "--model", "m", "--profile", "fastest"], "--profile"),
    "config-and-endpoints": (["--config", "x.yaml", "--endpoints", EP], "--endpoints"),
    "config-missing": (["--config", "/nonexistent/gw.yaml"], "--config"),
    "max-body-bytes": (
        ["--endpoints", EP, "--model", "m", "--max-body-bytes", "0"],
        "--max-body-bytes",
    ),
    "engine-choice": (["--engine", "tgi"], "--engine"),
    "unknown-flag": (["--bogus"], "--bogus"),
}


@pytest.mark.parametrize(("argv", "flag"), BAD_FLAGS.values(), ids=BAD_FLAGS.keys())
def test_serve_bad_flags_exit_2(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        rc = main(["serve", *argv])
    except SystemExit as exc:  # argparse's own errors
        rc = int(exc.code or 0)
    assert rc == 2
    err = capsys.readouterr().err
    assert flag in err and "error" in err


def test_serve_bad_flag_in_a_real_process() -> None:
    proc = subprocess.run(
        serve_command("--endpoints", "not-a-url", "--model", "m"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "headway serve: error: --endpoints[0]" in proc.stderr
    assert "Traceback" not in proc.stderr
