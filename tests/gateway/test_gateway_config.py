"""Gateway config validation: every error names its field; the documented example
loads; `headway serve` rejects bad flags with exit status 2 and a message."""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from gateway_harness import serve_command

from headway.cli import main
from headway.gateway.cli import CliError, add_arguments, config_from_args
from headway.gateway.config import (
    EngineKind,
    GatewayConfigError,
    KvEventSource,
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
    "lora-adapter-taken": (
        {"pools": [{"model": "a"}, {"model": "b", "lora_adapters": ["a"]}]},
        "pools[1].lora_adapters[0]",
        "already served by pools[0]",
    ),
    "lora-adapters-not-list": (cfg(lora_adapters="x"), "pools[0].lora_adapters", "list of strings"),
    "fallback-unknown": (cfg(fallback="zzz"), "pools[0].fallback", "no pool"),
    "fallback-self": (cfg(fallback="m"), "pools[0].fallback", "itself"),
    "unknown-pool-field": (cfg(weight=1), "pools[0].weight", "unknown field"),
    "listen-port": ({**cfg(), "listen": {"port": 70000}}, "listen.port", "[0, 65535]"),
    "max-body-bytes": ({**cfg(), "limits": {"max_body_bytes": 0}}, "limits.max_body_bytes", ">= 1"),
    "timeout-negative": ({**cfg(), "timeouts": {"ttft_s": -1}}, "timeouts.ttft_s", "> 0"),
    "timeout-not-number": ({**cfg(), "timeouts": {"total_s": "1m"}}, "timeouts.total_s", "seconds"),
    "drain-null": ({**cfg(), "timeouts": {"drain_s": None}}, "timeouts.drain_s", "seconds"),
    "endpoint-entry-unknown-field": (
        cfg(endpoints=[{"url": EP, "kv": "tcp://a:1"}]),
        "pools[0].endpoints[0].kv",
        "unknown field",
    ),
    "endpoint-entry-no-url": (
        cfg(endpoints=[{"kv_events": "tcp://a:1"}]),
        "pools[0].endpoints[0].url",
        "field required",
    ),
    "kv-events-bad-scheme": (
        cfg(endpoints=[{"url": EP, "kv_events": "http://a:1"}]),
        "pools[0].endpoints[0].kv_events",
        "tcp://HOST:PORT",
    ),
    "kv-events-bad-port": (
        cfg(endpoints=[{"url": EP, "kv_events": "tcp://a:0"}]),
        "pools[0].endpoints[0].kv_events",
        "port in [1, 65535]",
    ),
    "kv-events-replay-bad": (
        cfg(endpoints=[{"url": EP, "kv_events": {"endpoint": "tcp://a:1", "replay_endpoint": 5}}]),
        "pools[0].endpoints[0].kv_events.replay_endpoint",
        "non-empty string",
    ),
    "kv-events-no-endpoint": (
        cfg(endpoints=[{"url": EP, "kv_events": {"topic": "x"}}]),
        "pools[0].endpoints[0].kv_events.endpoint",
        "field required",
    ),
    "precise-prefix-without-kv-events": (
        cfg(engine="llamacpp", routing="kv-aware"),
        "pools[0].routing",
        "KV-event index",
    ),
    "admin-port": ({**cfg(), "admin": {"port": 70000}}, "admin.port", "in [0, 65535]"),
    "admin-unknown": ({**cfg(), "admin": {"bind": "x"}}, "admin.bind", "unknown field"),
    "discovery-kind": ({**cfg(), "discovery": {"kind": "consul"}}, "discovery.kind", "one of"),
    "access-log-path": ({**cfg(), "access_log": {"path": ""}}, "access_log.path", "non-empty"),
    "collectors-unknown": (
        {**cfg(), "collectors": {"interval": 1}},
        "collectors.interval",
        "unknown field",
    ),
    "collectors-interval": (
        {**cfg(), "collectors": {"scrape_interval_s": 0}},
        "collectors.scrape_interval_s",
        "> 0",
    ),
    "collectors-scrape-share": (
        {**cfg(), "collectors": {"max_scrape_share": 1.5}},
        "collectors.max_scrape_share",
        "must be in [0, 1]",
    ),
    "collectors-max-interval-below-interval": (
        {**cfg(), "collectors": {"scrape_interval_s": 1, "max_scrape_interval_s": 0.5}},
        "collectors.max_scrape_interval_s",
        "must be >= scrape_interval_s (1)",
    ),
    "collectors-stale-intervals": (
        {**cfg(), "collectors": {"stale_after_intervals": 0}},
        "collectors.stale_after_intervals",
        ">= 1",
    ),
    "collectors-discover-not-bool": (
        {**cfg(), "collectors": {"discover_kv_events": "yes"}},
        "collectors.discover_kv_events",
        "true or false",
    ),
    "prompt-chunk-chars": (
        {**cfg(), "prompt": {"chunk_chars": 0}},
        "prompt.chunk_chars",
        ">= 1",
    ),
    "prompt-unknown": ({**cfg(), "prompt": {"seed": 1}}, "prompt.seed", "unknown field"),
    "observability-route-header": (
        {**cfg(), "observability": {"route_header": 1}},
        "observability.route_header",
        "true or false",
    ),
    "cap-zero": (
        cfg(max_in_flight_per_endpoint=0),
        "pools[0].max_in_flight_per_endpoint",
        ">= 1",
    ),
    "cap-not-int": (
        cfg(max_in_flight_per_endpoint=2.5),
        "pools[0].max_in_flight_per_endpoint",
        "integer",
    ),
    "admission-not-mapping": (cfg(admission=3), "pools[0].admission", "must be a mapping"),
    "admission-unknown": (cfg(admission={"size": 3}), "pools[0].admission.size", "unknown field"),
    "max-queue-negative": (
        cfg(admission={"max_queue": -1}),
        "pools[0].admission.max_queue",
        ">= 0",
    ),
    "max-wait-zero": (cfg(admission={"max_wait_s": 0}), "pools[0].admission.max_wait_s", "> 0"),
    "max-wait-null": (
        cfg(admission={"max_wait_s": None}),
        "pools[0].admission.max_wait_s",
        "seconds",
    ),
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
    # A vLLM pool may publish KV events (discovered at start): kv-aware by default.
    assert p.engine is EngineKind.VLLM and p.routing == "kv-aware" and p.fallback is None
    assert p.has_kv_events and not p.kv_events
    assert config.listen.port == 8080 and config.listen.host == "127.0.0.1"
    c = config.collectors
    assert (c.scrape_interval_s, c.stale_after_intervals, c.discover_kv_events) == (0.25, 4, True)
    assert config.prompt.chunk_chars == 256 and config.prompt.hash_seed is None
    assert not config.observability.route_header
    assert config.timeouts.ttft_s == 60.0
    assert config.limits.max_body_bytes == 16 * 1024 * 1024
    assert p.max_in_flight_per_endpoint == 256
    assert (p.admission.max_queue, p.admission.max_wait_s) == (1024, 30.0)
    assert p.admission.retry_after_s == 30


DEFAULT_ROUTING = {
    "vllm-discovery": ({}, {}, "kv-aware", True),
    "vllm-no-discovery": ({}, {"discover_kv_events": False}, "kv-aware-approx", False),
    "sglang": ({"engine": "sglang"}, {}, "kv-aware-approx", False),
    "sglang-with-sources": (
        {"engine": "sglang", "endpoints": [{"url": EP, "kv_events": "tcp://h:5557"}]},
        {},
        "kv-aware",
        True,
    ),
    "no-endpoints": ({"endpoints": []}, {}, "kv-aware-approx", False),
    "named-profile-kept": ({"routing": "least-request"}, {}, "least-request", True),
}


@pytest.mark.parametrize(
    ("fields", "collectors", "routing", "has_kv"),
    DEFAULT_ROUTING.values(),
    ids=DEFAULT_ROUTING.keys(),
)
def test_default_routing(
    fields: dict[str, Any], collectors: dict[str, Any], routing: str, has_kv: bool
) -> None:
    (p,) = config_from_mapping({**cfg(**fields), "collectors": collectors}).pools
    assert (p.routing, p.has_kv_events) == (routing, has_kv)


def test_endpoint_kv_event_sources() -> None:
    (p,) = config_from_mapping(
        cfg(
            endpoints=[
                {"url": EP, "kv_events": "tcp://*:5557"},
                {
                    "url": "http://127.0.0.1:9001",
                    "kv_events": {
                        "endpoint": "tcp://10.0.0.2:5557",
                        "replay_endpoint": "tcp://10.0.0.2:6557",
                        "topic": "kv",
                    },
                },
                "http://127.0.0.1:9002",
            ]
        )
    ).pools
    assert p.endpoints == (EP, "http://127.0.0.1:9001", "http://127.0.0.1:9002")
    assert p.kv_events[EP] == KvEventSource("tcp://*:5557")
    assert p.kv_events["http://127.0.0.1:9001"] == KvEventSource(
        "tcp://10.0.0.2:5557", "tcp://10.0.0.2:6557", "kv"
    )
    assert "http://127.0.0.1:9002" not in p.kv_events


def test_collector_prompt_and_observability_fields() -> None:
    config = config_from_mapping(
        {
            **cfg(),
            "collectors": {"scrape_interval_s": 0.5, "stale_after_intervals": 2},
            "prompt": {"hash_seed": 0, "chunk_chars": 64, "session_header": "X-Conv"},
            "observability": {"route_header": True},
        }
    )
    assert config.collectors.scrape_interval_s == 0.5
    assert (config.collectors.max_scrape_share, config.collectors.max_scrape_interval_s) == (
        0.01,
        2.0,
    )
    assert config.prompt.hash_seed == "0" and config.prompt.session_header == "x-conv"
    assert config.observability.route_header


def test_backpressure_fields() -> None:
    config = config_from_mapping(
        cfg(max_in_flight_per_endpoint=8, admission={"max_queue": 0, "max_wait_s": 0.25})
    )
    (p,) = config.pools
    assert p.max_in_flight_per_endpoint == 8
    assert (p.admission.max_queue, p.admission.max_wait_s) == (0, 0.25)
    assert p.admission.retry_after_s == 1  # whole seconds, never below 1


def test_null_timeout_disables_it() -> None:
    config = config_from_mapping({**cfg(), "timeouts": {"idle_s": None}})
    assert config.timeouts.idle_s is None


def test_documented_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-doc-example")  # the example's openai pool
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.S)
    assert blocks, "docs/configuration.md has no yaml example"
    path = tmp_path / "gateway.yaml"
    path.write_text(blocks[0])
    config = load_config(path)
    assert len(config.pools) >= 2
    assert {p.engine for p in config.pools} >= {EngineKind.VLLM, EngineKind.OPENAI}
    assert [p.api_key for p in config.pools if p.engine == EngineKind.OPENAI] == ["sk-doc-example"]


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
    "max-in-flight": (
        ["--endpoints", EP, "--model", "m", "--max-in-flight-per-endpoint", "0"],
        "--max-in-flight-per-endpoint",
    ),
    "max-queue": (["--endpoints", EP, "--model", "m", "--max-queue", "-1"], "--max-queue"),
    "max-queue-wait": (
        ["--endpoints", EP, "--model", "m", "--max-queue-wait", "0"],
        "--max-queue-wait",
    ),
    "max-queue-embedded": (["--max-queue", "-2"], "--max-queue"),
    "max-queue-with-config": (["--config", "x.yaml", "--max-queue", "3"], "--max-queue"),
    "unknown-flag": (["--bogus"], "--bogus"),
    "workers-zero": (["--endpoints", EP, "--model", "m", "--workers", "0"], "--workers"),
    "workers-embedded": (["--workers", "2"], "--workers"),
    "admin-port-range": (["--endpoints", EP, "--model", "m", "--admin-port", "-1"], "--admin-port"),
    "access-log-both": (
        ["--endpoints", EP, "--model", "m", "--access-log", "-", "--no-access-log"],
        "--no-access-log",
    ),
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


def test_serve_backpressure_flags_set_the_quick_pool() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--endpoints", EP, "--model", "m", "--max-in-flight-per-endpoint", "4",
         "--max-queue", "7", "--max-queue-wait", "2.5"]
    )  # fmt: skip
    config, embedded = config_from_args(args)
    (p,) = config.pools
    assert not embedded
    assert p.max_in_flight_per_endpoint == 4
    assert (p.admission.max_queue, p.admission.max_wait_s) == (7, 2.5)


def test_serve_hash_seed_and_tokenizer_flags_set_the_prompt_reader(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--endpoints", EP, "--model", "m", "--hash-seed", "0", "--tokenizer", "tok.json"]
    )
    config, _ = config_from_args(args)
    assert (config.prompt.hash_seed, config.prompt.tokenizer) == ("0", "tok.json")
    cfg = tmp_path / "g.yaml"
    cfg.write_text(f"pools: [{{model: m, endpoints: [{EP}]}}]\n")
    with pytest.raises(CliError, match="--hash-seed"):
        config_from_args(parser.parse_args(["--config", str(cfg), "--hash-seed", "0"]))


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
