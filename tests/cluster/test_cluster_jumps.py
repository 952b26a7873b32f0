"""Decode jumps change the cluster simulation's speed, never its results: the same
workload with jumps on and off gives byte-identical bench JSON (named workloads that
exercise KV events and kv-aware routing, preemption under a small pool, closed-loop
stages, and steps of several replicas ending at the same instant)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from headway.cluster.events import EventKind, EventQueue
from headway.cluster.results import document, point
from headway.cluster.simulation import (
    AdmissionLimits,
    ClusterConfig,
    ClusterRun,
    ClusterSimulation,
    ReplicaGroup,
)
from headway.core.engine_factory import EngineSpec
from headway.core.workloads import Call, ChatMessage, Session, Stage, build_workload
from headway.resources.catalog import load_catalog
from headway.resources.tokenizer import HfTokenizer, default_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> HfTokenizer:
    return default_tokenizer()


def _run(
    tokenizer: HfTokenizer,
    arrivals: Sequence[tuple[float, Session]],
    *,
    routing: Mapping[str, Any],
    replicas: int,
    blocks: int,
    max_jump: int,
    overhead_s: float = 0.0,
    admission: AdmissionLimits | None = None,
) -> ClusterRun:
    spec = EngineSpec(model="llama-3.1-8b", gpu="h100", num_gpu_blocks_override=blocks)
    cfg = ClusterConfig(
        groups=(ReplicaGroup(spec, replicas),),
        routing=routing,
        seed=5,
        max_decode_jump_steps=max_jump,
        # Scrapes every few steps: a scrape inside a jump must see the engine as
        # single steps leave it.
        scrape_interval_s=0.003,
        frontend_overhead_s=overhead_s,
        admission=admission,
    )
    sim = ClusterSimulation(cfg, load_catalog(), tokenizer, tokenizer.word_token_ids())
    return sim.run(arrivals)


def _bench_json(run: ClusterRun) -> str:
    doc = document({"workload": "test"}, [("arm", [point(run, {"rate": 1.0})])])
    return json.dumps(doc, sort_keys=True)


def _workload(name: str, tokenizer: HfTokenizer) -> list[tuple[float, Session]]:
    if name == "shared-prefix":
        w = build_workload(
            "shared-prefix",
            {
                "num_groups": 4,
                "prompts_per_group": 6,
                "system_prompt_tokens": 256,
                "question_tokens": 32,
                "output_tokens": 40,
            },
            tokenizer,
        )
        return [(0.004 * i, s) for i, s in enumerate(w.sessions(48, 1))]
    if name == "agentic":
        w = build_workload(
            "agentic",
            {
                "system_prompt_tokens": 128,
                "task_tokens": 32,
                "plan_output_tokens": 20,
                "num_tool_rounds": 2,
                "tool_call_output_tokens": 12,
                "tool_result_tokens": 48,
                "tool_latency_s": 0.01,
                "num_subagents": 2,
                "subagent_task_tokens": 16,
                "subagent_output_tokens": 24,
                "final_output_tokens": 30,
            },
            tokenizer,
        )
        return [(0.02 * i, s) for i, s in enumerate(w.sessions(8, 2))]
    # Identical sessions at identical instants: steps of different replicas end at the
    # same virtual time, and their order decides the next stage's routing.
    text = "Summarise the state of the fleet in one line. " * 6
    sessions = []
    for i in range(6):
        stages = tuple(
            Stage(0.0, (Call(f"c{i}-{k}", (ChatMessage("user", text),), 17 + 3 * k, 0, ()),))
            for k in range(3)
        )
        sessions.append((0.0 if i < 4 else 0.5, Session(f"s{i}", stages)))
    return sessions


# Routing on what scrapes read (running and waiting requests, KV usage).
SCRAPED_LOAD = {
    "profiles": {
        "scraped": {
            "filters": ["healthy", "serves-model"],
            "scorers": [
                {"type": "kv-usage", "weight": 1.0},
                {"type": "running-requests", "weight": 1.0},
                {"type": "queue-depth", "weight": 1.0},
            ],
        }
    },
    "profile": "scraped",
}


@pytest.mark.parametrize(
    ("workload", "routing", "replicas", "blocks", "overhead_s"),
    [
        ("shared-prefix", {"preset": "kv-aware"}, 3, 4000, 0.0),
        ("shared-prefix", SCRAPED_LOAD, 3, 400, 0.0),
        ("shared-prefix", {"preset": "least-request"}, 2, 120, 0.0),  # preemption, eviction
        ("agentic", {"preset": "power-of-two"}, 3, 4000, 0.0),
        ("agentic", {"preset": "kv-aware"}, 3, 4000, 0.002),  # routed after the front end
        ("ties", {"preset": "least-request"}, 4, 4000, 0.0),
    ],
    ids=["kv-aware", "scraped-load", "small-pool", "agentic", "front-end", "tied-step-ends"],
)
def test_jumps_on_and_off_give_identical_bench_json(
    tokenizer: HfTokenizer,
    workload: str,
    routing: Mapping[str, Any],
    replicas: int,
    blocks: int,
    overhead_s: float,
) -> None:
    arrivals = _workload(workload, tokenizer)
    kw: dict[str, Any] = {
        "routing": routing,
        "replicas": replicas,
        "blocks": blocks,
        "overhead_s": overhead_s,
    }
    off = _run(tokenizer, arrivals, max_jump=1, **kw)
    on = _run(tokenizer, arrivals, max_jump=64, **kw)
    assert _bench_json(on) == _bench_json(off)
    assert on.replicas == off.replicas  # steps, tokens, busy time (float-exact)
    assert on.num_events < off.num_events  # the jumps did happen
    if blocks < 200:
        assert sum(r.num_preemptions for r in off.replicas) > 0


def test_jumps_on_and_off_agree_under_admission_control(tokenizer: HfTokenizer) -> None:
    # Queued calls are routed when a call finishes (a jump's last step), and rejected
    # at their wait's end, which may fall inside another replica's jump.
    arrivals = _workload("shared-prefix", tokenizer)
    limits = AdmissionLimits(max_in_flight_per_endpoint=3, max_queue=6, max_wait_s=0.05)
    kw: dict[str, Any] = {
        "routing": {"preset": "kv-aware"},
        "replicas": 2,
        "blocks": 4000,
        "admission": limits,
    }
    off = _run(tokenizer, arrivals, max_jump=1, **kw)
    on = _run(tokenizer, arrivals, max_jump=64, **kw)
    assert _bench_json(on) == _bench_json(off)
    assert set(on.rejections) == {"queue_full", "wait_timeout"}
    assert on.num_events < off.num_events


def test_step_ends_at_one_instant_run_in_replica_order_whenever_scheduled() -> None:
    # A jump schedules its end steps ahead, a single step one step ahead: the order of
    # step ends at one instant must not depend on when they were pushed.
    q = EventQueue()
    q.push(1.0, EventKind.STEP_END, "replica 2", tiebreak=2)
    q.push(1.0, EventKind.STAGE, "stage")
    q.push(1.0, EventKind.STEP_END, "replica 0", tiebreak=0)
    q.push(1.0, EventKind.STEP_END, "replica 1", tiebreak=1)
    assert [q.pop().payload for _ in range(4)] == ["replica 0", "replica 1", "replica 2", "stage"]
