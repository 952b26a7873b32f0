"""Prefill/decode pools in the cluster: the KV hand-off's timing against the cost model
and the link, conservation, jumps on/off agreement, and config errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from headway.cluster.results import document, point
from headway.cluster.simulation import (
    AdmissionLimits,
    ClusterConfig,
    ClusterConfigError,
    ClusterRun,
    ClusterSimulation,
    ReplicaGroup,
    ReplicaRole,
)
from headway.core.costmodel import SeqWork
from headway.core.engine_factory import EngineSpec
from headway.core.workloads import Call, ChatMessage, Session, Stage, build_workload
from headway.resources.catalog import load_catalog
from headway.resources.tokenizer import HfTokenizer, default_tokenizer

SPEC = EngineSpec(model="llama-3.1-8b", gpu="h100", num_gpu_blocks_override=4000)


@pytest.fixture(scope="module")
def tokenizer() -> HfTokenizer:
    return default_tokenizer()


def _sim(tokenizer: HfTokenizer, p: int, d: int, **kw: Any) -> ClusterSimulation:
    cfg = ClusterConfig(
        groups=(
            ReplicaGroup(SPEC, p, ReplicaRole.PREFILL),
            ReplicaGroup(SPEC, d, ReplicaRole.DECODE),
        ),
        **kw,
    )
    return ClusterSimulation(cfg, load_catalog(), tokenizer, tokenizer.word_token_ids())


def _lone(text: str, max_tokens: int) -> Session:
    call = Call("c0", (ChatMessage("user", text),), max_tokens, 0, ())
    return Session("s0", (Stage(0.0, (call,)),))


@pytest.mark.parametrize(
    ("link_bytes_per_s", "latency_s"), [(50e9, 0.0), (5e9, 0.002)], ids=["fast", "slow"]
)
def test_lone_request_ttft_is_prefill_transfer_and_first_decode_step(
    tokenizer: HfTokenizer, link_bytes_per_s: float, latency_s: float
) -> None:
    sim = _sim(tokenizer, 1, 1, kv_link_bytes_per_s=link_bytes_per_s, kv_link_latency_s=latency_s)
    run = sim.run([(0.5, _lone("tell me about paged attention " * 40, 4))])
    (rec,) = run.records
    n = rec.prompt_tokens
    assert n is not None and rec.first_choice_at is not None and rec.last_token_at is not None
    cm = sim._replicas[0].resolved.cost_model
    d = cm.deployment
    transfer_s = n * d.model.kv_bytes_per_token(d.precision.kv_cache) / link_bytes_per_s
    loaded = (n - 1) // 16 * 16  # whole blocks arrive; the rest is computed on decode
    expected = (
        cm.step_time_s([SeqWork(n, 0)])
        + transfer_s
        + latency_s
        + cm.step_time_s([SeqWork(n - loaded, loaded)])
    )
    assert rec.first_choice_at - rec.sent_at == pytest.approx(expected, rel=1e-9)
    assert rec.output_tokens == 4  # all from the decode replica
    assert run.num_kv_transfers == 1
    assert run.mean_kv_transfer_s == pytest.approx(transfer_s + latency_s, rel=1e-9)
    prefill, decode = run.replicas
    assert prefill.num_generation_tokens == 1 and decode.num_generation_tokens == 4
    assert decode.num_prompt_tokens == n


def _shared_prefix(tokenizer: HfTokenizer, num: int) -> list[tuple[float, Session]]:
    w = build_workload(
        "shared-prefix",
        {
            "num_groups": 4,
            "prompts_per_group": 6,
            "system_prompt_tokens": 512,
            "question_tokens": 32,
            "output_tokens": 48,
        },
        tokenizer,
    )
    return [(0.003 * i, s) for i, s in enumerate(w.sessions(num, 3))]


def test_every_call_finishes_and_jumps_do_not_change_pd_results(tokenizer: HfTokenizer) -> None:
    arrivals = _shared_prefix(tokenizer, 40)
    runs: list[ClusterRun] = []
    for max_jump in (1, 64):
        sim = _sim(tokenizer, 1, 2, routing={"preset": "kv-aware"}, max_decode_jump_steps=max_jump)
        runs.append(sim.run(arrivals))
    off, on = runs
    assert sorted(r.call_id for r in on.records) == sorted(
        c.call_id for _, s in arrivals for st in s.stages for c in st.calls
    )
    assert all(r.error is None and r.output_tokens == 48 for r in on.records)
    prefill = on.replicas[0]
    assert prefill.num_generation_tokens == 40  # one per call, never the client's
    assert sum(r.output_tokens or 0 for r in on.records) == sum(
        s.num_generation_tokens for s in on.replicas[1:]
    )
    assert on.num_kv_transfers == 40

    def js(run: ClusterRun) -> str:
        return json.dumps(document({}, [("pd", [point(run, {})])]), sort_keys=True)

    assert js(on) == js(off)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"groups": (ReplicaGroup(SPEC, 1, ReplicaRole.PREFILL),)}, r"groups\[\]\.role"),
        (
            {
                "groups": (
                    ReplicaGroup(SPEC, 1, ReplicaRole.MIXED),
                    ReplicaGroup(SPEC, 1, ReplicaRole.DECODE),
                )
            },
            r"groups\[\]\.role",
        ),
        (
            {
                "groups": (
                    ReplicaGroup(SPEC, 1, ReplicaRole.PREFILL),
                    ReplicaGroup(SPEC, 1, ReplicaRole.DECODE),
                ),
                "admission": AdmissionLimits(),
            },
            "admission",
        ),
        ({"groups": (ReplicaGroup(SPEC),), "kv_link_bytes_per_s": 0.0}, "kv_link_bytes_per_s"),
        ({"groups": (ReplicaGroup(SPEC),), "kv_link_latency_s": -1.0}, "kv_link_latency_s"),
    ],
    ids=["prefill-only", "mixed-and-decode", "admission", "bandwidth", "latency"],
)
def test_pd_config_errors_name_the_field(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ClusterConfigError, match=match):
        ClusterConfig(**kwargs)


def test_unknown_role_names_the_field() -> None:
    with pytest.raises(ClusterConfigError, match="role"):
        ReplicaGroup(SPEC, 1, "prefil")  # type: ignore[arg-type]
