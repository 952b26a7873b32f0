"""Admission control in the cluster: per-replica in-flight caps, a bounded FIFO queue
with a maximum wait, and 429 rejections recorded as `headway bench` records them;
conservation (every call sent is finished or rejected, tokens add up)."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from headway.cluster.results import point
from headway.cluster.simulation import (
    AdmissionLimits,
    ClusterConfig,
    ClusterConfigError,
    ClusterRun,
    ClusterSimulation,
    ReplicaGroup,
)
from headway.core.engine_factory import EngineSpec
from headway.core.workloads import Call, ChatMessage, Session, Stage
from headway.resources.catalog import load_catalog
from headway.resources.tokenizer import HfTokenizer, default_tokenizer

SPEC = EngineSpec(model="llama-3.1-8b", gpu="h100", num_gpu_blocks_override=4000)


@pytest.fixture(scope="module")
def tokenizer() -> HfTokenizer:
    return default_tokenizer()


def _run(
    tokenizer: HfTokenizer,
    arrivals: list[tuple[float, Session]],
    admission: AdmissionLimits | None,
    replicas: int = 2,
    preset: str = "least-request",
) -> ClusterRun:
    cfg = ClusterConfig(
        groups=(ReplicaGroup(SPEC, replicas),), routing={"preset": preset}, admission=admission
    )
    sim = ClusterSimulation(cfg, load_catalog(), tokenizer, tokenizer.word_token_ids())
    return sim.run(arrivals)


def _session(i: int, max_tokens: int = 40, num_stages: int = 1) -> Session:
    text = f"Request {i}: list the steps to drain a replica safely. " * 4
    stages = tuple(
        Stage(0.0, (Call(f"c{i}-{k}", (ChatMessage("user", text),), max_tokens, 0, ()),))
        for k in range(num_stages)
    )
    return Session(f"s{i}", stages)


def _burst(n: int, gap_s: float, num_stages: int = 1) -> list[tuple[float, Session]]:
    return [(gap_s * i, _session(i, num_stages=num_stages)) for i in range(n)]


@pytest.mark.parametrize(
    ("limits", "expected_reasons"),
    [
        (AdmissionLimits(max_in_flight_per_endpoint=1, max_queue=2, max_wait_s=10.0), {"queue_full"}),
        (AdmissionLimits(max_in_flight_per_endpoint=1, max_queue=100, max_wait_s=0.2), {"wait_timeout"}),
        (AdmissionLimits(max_in_flight_per_endpoint=2, max_queue=3, max_wait_s=0.05), {"queue_full", "wait_timeout"}),
        (AdmissionLimits(max_in_flight_per_endpoint=2, max_queue=0, max_wait_s=5.0), {"queue_full"}),
    ],
    ids=["queue-full", "wait-timeout", "both", "no-queue"],
)  # fmt: skip
def test_every_call_finishes_or_is_rejected_and_tokens_add_up(
    tokenizer: HfTokenizer, limits: AdmissionLimits, expected_reasons: set[str]
) -> None:
    arrivals = _burst(30, 0.002, num_stages=2)
    run = _run(tokenizer, arrivals, limits)
    sent = {c.call_id for _, s in arrivals for st in s.stages for c in st.calls}
    # Closed loop: a rejected stage still lets the session go on, so every call is sent.
    assert sorted(r.call_id for r in run.records) == sorted(sent)
    kinds = Counter(r.error for r in run.records)
    assert set(kinds) <= {None, "http_429"}
    assert kinds[None] + kinds["http_429"] == len(sent)
    assert set(run.rejections) == expected_reasons
    assert sum(run.rejections.values()) == kinds["http_429"]
    assert all(r.status == 429 for r in run.records if r.error is not None)
    finished = [r for r in run.records if r.error is None]
    assert sum(r.output_tokens or 0 for r in finished) == sum(
        s.num_generation_tokens for s in run.replicas
    )
    assert all(r.output_tokens == 40 for r in finished)
    assert max(s.max_in_flight_requests for s in run.replicas) <= limits.max_in_flight_per_endpoint
    assert run.max_queue_depth <= limits.max_queue
    summary = point(run, {"rate": 1.0})["summary"]
    assert summary["failed"] == kinds["http_429"]
    assert summary["completed"] == len(finished)


def test_queued_calls_are_served_in_order_and_wait_in_their_ttft(tokenizer: HfTokenizer) -> None:
    limits = AdmissionLimits(max_in_flight_per_endpoint=1, max_queue=100, max_wait_s=60.0)
    run = _run(tokenizer, _burst(8, 0.001), limits, replicas=1)
    recs = sorted(run.records, key=lambda r: r.sent_at)
    assert all(r.error is None for r in recs) and not run.rejections
    # One at a time, first come first served: each starts after the one before ends.
    for before, after in itertools.pairwise(recs):
        assert after.first_choice_at is not None and before.last_token_at is not None
        assert after.first_choice_at > before.last_token_at
    assert run.max_queue_depth == 7
    assert run.replicas[0].max_in_flight_requests == 1


def test_loose_limits_change_nothing(tokenizer: HfTokenizer) -> None:
    arrivals = _burst(20, 0.003, num_stages=2)
    free = _run(tokenizer, arrivals, None, preset="kv-aware")
    loose = _run(tokenizer, arrivals, AdmissionLimits(), preset="kv-aware")
    assert point(free, {})["summary"] == point(loose, {})["summary"]
    assert free.records == loose.records


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_in_flight_per_endpoint": 0}, "max_in_flight_per_endpoint"),
        ({"max_queue": -1}, "max_queue"),
        ({"max_wait_s": float("nan")}, "max_wait_s"),
    ],
    ids=["cap", "queue", "wait"],
)
def test_bad_limits_name_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ClusterConfigError, match=rf"admission\.{field}"):
        AdmissionLimits(**kwargs)  # type: ignore[arg-type]
