"""Fixtures for the gateway's integration tests: real `headway sim` processes on
127.0.0.1 with ephemeral ports, started once per session and in parallel."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from gateway_harness import InProcessGateway, pool
from sim_harness import Fleet, start_fleets

MODEL = "llama-3.1-8b"
_COMMON = ("--time-scale", "20", "--max-model-len", "8192")
MAIN_ARGS = ("--replicas", "2", *_COMMON)
DROP_ARGS = ("--served-model-name", "drop-model", "--fault-drop-stream-after", "5", *_COMMON)
ERROR_ARGS = ("--served-model-name", "error-model", "--fault-error-rate", "1", *_COMMON)
HANG_ARGS = ("--served-model-name", "hang-model", "--fault-hang", *_COMMON)


@dataclass
class Fleets:
    main: Fleet  # two healthy replicas
    drop: Fleet  # drops every stream after 5 tokens
    error: Fleet  # answers every completion with 500
    hang: Fleet  # accepts completions, never answers


@pytest.fixture(scope="session")
def fleets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleets]:
    started = start_fleets(
        tmp_path_factory.mktemp("gw-fleets"), MAIN_ARGS, DROP_ARGS, ERROR_ARGS, HANG_ARGS
    )
    try:
        yield Fleets(*started)
    finally:
        for f in started:
            f.stop()


@pytest.fixture(scope="module")
def rr_gateway(fleets: Fleets) -> Iterator[InProcessGateway]:
    """Round-robin over the two healthy replicas."""
    gw = InProcessGateway(
        {"pools": [pool(MODEL, fleets.main.urls, aliases=["llama"], routing="round-robin")]}
    ).start()
    yield gw
    gw.stop()


KV_ARGS = ("--replicas", "2", "--kv-events-port", "0", "--enable-prompt-tokens-details", *_COMMON)
KV_ARRAY_ARGS = (
    "--served-model-name", "array-model", "--kv-events-port", "0",
    "--kv-events-encoding", "array", *_COMMON,
)  # fmt: skip


@dataclass
class KvFleets:
    map: Fleet  # two replicas publishing KV events in vLLM 0.32's encoding (with replay)
    array: Fleet  # one replica publishing the older array encoding (with replay)


@pytest.fixture(scope="session")
def kv_fleets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KvFleets]:
    started = start_fleets(tmp_path_factory.mktemp("gw-kv-fleets"), KV_ARGS, KV_ARRAY_ARGS)
    try:
        yield KvFleets(*started)
    finally:
        for f in started:
            f.stop()
