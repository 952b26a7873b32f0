"""The request path's shortcuts keep behaviour: which routing configs let the
gateway skip reading prompts, and that a prompt-blind pool routes without them."""

from __future__ import annotations

import os
from typing import Any

import pytest
from conftest import MODEL, Fleets
from gateway_harness import InProcessGateway, pool
from sim_harness import post

from headway.gateway import server
from headway.gateway.server import reads_prompts
from headway.routing import PRESETS


def _custom(*plugins: Any, picker: Any = "max-score") -> dict[str, Any]:
    return {"profiles": {"p": {"filters": ["healthy"], "scorers": list(plugins), "picker": picker}}}


@pytest.mark.parametrize(
    ("routing", "expected"),
    [
        ({"preset": "round-robin"}, False),
        ({"preset": "least-request"}, False),
        ({"preset": "power-of-two"}, False),
        ({"preset": "session-sticky"}, True),  # saturation weighs in-flight tokens
        ({"preset": "prefix-approx"}, True),
        ({"preset": "kv-aware"}, True),
        ({"preset": "kv-aware-approx"}, True),
        ({"preset": "no-such-preset"}, True),
        (_custom("round-robin"), False),
        (_custom({"type": "least-request", "weight": 2.0}), False),
        (_custom({"type": "token-load", "weight": 1.0}), True),
        (_custom("approx-prefix"), True),
        (_custom("round-robin", picker={"type": "my-own-picker"}), True),
        ({"profiles": {"p": {"filters": None, "scorers": ["round-robin"]}}}, False),
        ({"profiles": {"p": "not a mapping"}}, True),
        ({"profiles": {"p": {"scorers": "round-robin"}}}, True),
        ({}, True),
    ],
    ids=[
        "round-robin",
        "least-request",
        "power-of-two",
        "session-sticky",
        "prefix-approx",
        "kv-aware",
        "kv-aware-approx",
        "unknown-preset",
        "custom-round-robin",
        "custom-weighted-least-request",
        "custom-token-load",
        "custom-approx-prefix",
        "custom-unknown-picker",
        "custom-null-filters",
        "profile-not-mapping",
        "scorers-not-list",
        "empty",
    ],
)
def test_reads_prompts(routing: dict[str, Any], expected: bool) -> None:
    assert reads_prompts(routing) is expected


def test_every_preset_is_classified() -> None:
    """A new preset is prompt-blind only if every plugin it uses is listed as such."""
    blind = {name for name in PRESETS if not reads_prompts({"preset": name})}
    assert blind == {"round-robin", "least-request", "power-of-two"}


@pytest.mark.parametrize(
    ("routing", "is_read"),
    [("round-robin", False), ("kv-aware-approx", True)],
    ids=["round-robin", "kv-aware-approx"],
)
def test_prompts_read_only_for_routing_that_uses_them(
    fleets: Fleets, routing: str, is_read: bool
) -> None:
    gw = InProcessGateway({"pools": [pool(MODEL, fleets.main.urls, routing=routing)]}).start()
    try:
        prompts = gw.gateway.prompts
        assert prompts is not None
        num_reads = 0
        read = prompts.read

        def counting_read(*args: Any, **kwargs: Any) -> Any:
            nonlocal num_reads
            num_reads += 1
            return read(*args, **kwargs)

        prompts.read = counting_read  # type: ignore[method-assign]
        body = {"model": MODEL, "prompt": "tell me a story " * 8, "max_tokens": 2}
        for _ in range(2):
            assert post(gw.url, "/v1/completions", body).status == 200
        assert num_reads == (2 if is_read else 0)
    finally:
        gw.stop()


def test_generated_request_ids_differ_in_a_forked_worker() -> None:
    """`--workers` forks the gateway: each worker's id generator is reseeded, so two
    workers never generate the same id sequence."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        os.write(write_fd, server._request_ids.getrandbits(128).to_bytes(16, "big"))
        os._exit(0)
    os.close(write_fd)
    try:
        child_id = os.read(read_fd, 16)
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    assert len(child_id) == 16
    assert child_id != server._request_ids.getrandbits(128).to_bytes(16, "big")
