"""The front-end overhead: virtual time between a call's send and its routing, part of
its TTFT, and validated at config time."""

from __future__ import annotations

import pytest

from headway.cluster.simulation import (
    ClusterConfig,
    ClusterConfigError,
    ClusterRun,
    ClusterSimulation,
    ReplicaGroup,
)
from headway.core.costmodel import SeqWork
from headway.core.engine_factory import EngineSpec
from headway.core.workloads import Call, ChatMessage, Session, Stage
from headway.resources.catalog import load_catalog
from headway.resources.tokenizer import HfTokenizer, default_tokenizer

SPEC = EngineSpec(model="llama-3.1-8b", gpu="h100", num_gpu_blocks_override=2000)


@pytest.fixture(scope="module")
def tokenizer() -> HfTokenizer:
    return default_tokenizer()


def _sim(tokenizer: HfTokenizer, overhead_s: float, replicas: int = 1) -> ClusterSimulation:
    cfg = ClusterConfig(groups=(ReplicaGroup(SPEC, replicas),), frontend_overhead_s=overhead_s)
    return ClusterSimulation(cfg, load_catalog(), tokenizer, tokenizer.word_token_ids())


def _session(i: int, text: str, max_tokens: int = 3, num_stages: int = 1) -> Session:
    stages = tuple(
        Stage(0.0, (Call(f"c{i}-{k}", (ChatMessage("user", text),), max_tokens, 0, ()),))
        for k in range(num_stages)
    )
    return Session(f"s{i}", stages)


@pytest.mark.parametrize("overhead_s", [0.0, 0.004, 0.015], ids=["none", "4ms", "15ms"])
def test_lone_request_ttft_is_overhead_plus_prefill(
    tokenizer: HfTokenizer, overhead_s: float
) -> None:
    sim = _sim(tokenizer, overhead_s)
    run = sim.run([(1.0, _session(0, "hello there " * 50))])
    (rec,) = run.records
    assert rec.sent_at == 1.0 and rec.first_choice_at is not None
    n = rec.prompt_tokens
    assert n is not None
    prefill_s = sim._replicas[0].resolved.cost_model.step_time_s([SeqWork(n, 0)])
    assert rec.first_choice_at - rec.sent_at == pytest.approx(overhead_s + prefill_s, rel=1e-9)


def test_each_stage_pays_the_overhead_again(tokenizer: HfTokenizer) -> None:
    def span(run: ClusterRun) -> float:
        recs = sorted(run.records, key=lambda r: r.sent_at)
        assert recs[-1].last_token_at is not None
        return recs[-1].last_token_at - recs[0].sent_at

    session = _session(0, "plan the work " * 30, num_stages=3)
    base = span(_sim(tokenizer, 0.0).run([(0.0, session)]))
    slow = span(_sim(tokenizer, 0.01).run([(0.0, session)]))
    assert slow - base == pytest.approx(3 * 0.01, rel=1e-6)


@pytest.mark.parametrize("bad", [-0.001, float("nan"), float("inf")], ids=["neg", "nan", "inf"])
def test_bad_overhead_names_the_field(bad: float) -> None:
    with pytest.raises(ClusterConfigError, match="frontend_overhead_s"):
        ClusterConfig(groups=(ReplicaGroup(SPEC),), frontend_overhead_s=bad)
