"""Fixtures for the simulator's integration tests: real `headway sim` processes on
127.0.0.1 with ephemeral ports. Fleets that tests do not disturb are session-scoped;
tests that change a fleet's state (faults, cache resets) get their own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from openai import OpenAI
from sim_harness import Fleet, FleetFactory, openai_client, start_fleets

# Shared fleet: two replicas, KV events (map encoding), cached-token reporting,
# a small context and body limit so the limit errors are cheap to provoke.
MAIN_ARGS = (
    "--replicas", "2",
    "--time-scale", "20",
    "--kv-events-port", "0",
    "--enable-prompt-tokens-details",
    "--max-model-len", "4096",
    "--max-body-bytes", "65536",
)  # fmt: skip
# Second shared fleet: the older array encoding, no cached-token reporting.
ARRAY_ARGS = (
    "--replicas", "1",
    "--time-scale", "20",
    "--kv-events-port", "0",
    "--kv-events-encoding", "array",
    "--kv-events-topic", "arr",
)  # fmt: skip


@pytest.fixture(scope="session")
def _session_fleets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Fleet]]:
    started: list[Fleet] = []
    yield started
    for f in started:
        f.stop()


@pytest.fixture(scope="session")
def main_fleet(tmp_path_factory: pytest.TempPathFactory, _session_fleets: list[Fleet]) -> Fleet:
    (fleet,) = start_fleets(tmp_path_factory.mktemp("main"), MAIN_ARGS)
    _session_fleets.append(fleet)
    return fleet


@pytest.fixture(scope="session")
def array_fleet(tmp_path_factory: pytest.TempPathFactory, _session_fleets: list[Fleet]) -> Fleet:
    (fleet,) = start_fleets(tmp_path_factory.mktemp("array"), ARRAY_ARGS)
    _session_fleets.append(fleet)
    return fleet


@pytest.fixture
def start_fleet(tmp_path: Path) -> Iterator[FleetFactory]:
    """Factory: start_fleet(*args) starts a fleet owned by the test, stopped after it."""
    started: list[Fleet] = []
    counter = iter(range(1000))

    def factory(*args: str) -> Fleet:
        (fleet,) = start_fleets(tmp_path / f"f{next(counter)}", tuple(args))
        started.append(fleet)
        return fleet

    yield factory
    for f in started:
        f.stop()


@pytest.fixture(scope="module")
def module_fleets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., list[Fleet]]]:
    """Factory for module-scoped fleets: module_fleets(args1, args2, ...) starts them in
    parallel; all are stopped when the module ends."""
    started: list[Fleet] = []

    def factory(*arg_lists: tuple[str, ...]) -> list[Fleet]:
        fleets = start_fleets(tmp_path_factory.mktemp("mod"), *arg_lists)
        started.extend(fleets)
        return fleets

    yield factory
    for f in started:
        f.stop()


@pytest.fixture(scope="session")
def client(main_fleet: Fleet) -> OpenAI:
    return openai_client(main_fleet.url)
