"""Cluster simulation: event order, conservation, reproducibility, closed-loop sessions,
timing against the cost model, and named routing cases."""

from __future__ import annotations

import pytest

from headway.cluster.events import EventKind, EventQueue
from headway.cluster.simulation import (
    ClusterConfig,
    ClusterConfigError,
    ClusterRun,
    ClusterSimulation,
    ReplicaGroup,
)
from headway.core.catalog import Catalog
from headway.core.costmodel import SeqWork
from headway.core.engine_factory import EngineSpec
from headway.core.workloads import Call, ChatMessage, Session, Stage
from headway.resources.catalog import load_catalog
from headway.resources.tokenizer import HfTokenizer, default_tokenizer


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


@pytest.fixture(scope="module")
def tokenizer() -> HfTokenizer:
    return default_tokenizer()


def _engine(blocks: int = 2000) -> EngineSpec:
    return EngineSpec(model="llama-3.1-8b", gpu="h100", num_gpu_blocks_override=blocks)


def _sim(
    catalog: Catalog,
    tokenizer: HfTokenizer,
    replicas: int = 2,
    preset: str = "round-robin",
    seed: int = 0,
    blocks: int = 2000,
) -> ClusterSimulation:
    cfg = ClusterConfig(
        groups=(ReplicaGroup(_engine(blocks), replicas),), routing={"preset": preset}, seed=seed
    )
    return ClusterSimulation(cfg, catalog, tokenizer, tokenizer.word_token_ids())


def _call(call_id: str, text: str, max_tokens: int = 8, session: str = "s") -> Call:
    return Call(
        call_id=call_id,
        messages=(ChatMessage("user", text),),
        max_tokens=max_tokens,
        prompt_tokens=0,  # unused by the cluster: it tokenizes the messages itself
        headers=(("x-session-id", session),),
    )


def _single(i: int, text: str, max_tokens: int = 8) -> Session:
    return Session(f"s{i}", (Stage(0.0, (_call(f"c{i}", text, max_tokens, f"s{i}"),)),))


SYSTEM = "You are a careful assistant for a team that runs model servers. " * 40


def _shared_prefix(num_groups: int, per_group: int) -> list[tuple[float, Session]]:
    out = []
    for k in range(per_group):
        for g in range(num_groups):
            i = k * num_groups + g
            text = f"[tenant {g}] " + SYSTEM + f" Question {i}: how do I size my fleet?"
            out.append((0.05 * i, _single(i, text, 16)))
    return out


# -- event order ------------------------------------------------------------------
def test_events_at_one_instant_run_in_kind_order_then_fifo() -> None:
    q = EventQueue()
    q.push(1.0, EventKind.ARRIVAL, "a1")
    q.push(1.0, EventKind.STEP_END, "s1")
    q.push(0.5, EventKind.STAGE, "early")
    q.push(1.0, EventKind.SCRAPE, "scrape")
    q.push(1.0, EventKind.STEP_END, "s2")
    q.push(1.0, EventKind.KV_EVENTS, "kv")
    got = [q.pop().payload for _ in range(len(q))]
    assert got == ["early", "s1", "s2", "kv", "scrape", "a1"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 0.5], ids=["nan", "inf", "past"])
def test_event_times_must_be_finite_and_not_in_the_past(bad: float) -> None:
    q = EventQueue()
    q.push(1.0, EventKind.ARRIVAL)
    q.pop()
    with pytest.raises(ValueError, match="time_s"):
        q.push(bad, EventKind.ARRIVAL)


# -- configuration errors ------------------------------------------------------------
def test_config_errors_name_the_field(catalog: Catalog, tokenizer: HfTokenizer) -> None:
    with pytest.raises(ClusterConfigError, match="groups"):
        ClusterConfig(groups=())
    with pytest.raises(ClusterConfigError, match=r"groups\[1\]\.engine\.block_size"):
        ClusterConfig(
            groups=(
                ReplicaGroup(_engine()),
                ReplicaGroup(EngineSpec(model="llama-3.1-8b", gpu="h100", block_size=32)),
            )
        )
    with pytest.raises(ClusterConfigError, match="scrape_interval_s"):
        ClusterConfig(groups=(ReplicaGroup(_engine()),), scrape_interval_s=0)
    bad_gpu = ClusterConfig(groups=(ReplicaGroup(EngineSpec(model="llama-3.1-8b", gpu="x")),))
    with pytest.raises(ClusterConfigError, match=r"groups\[0\]\.engine\.gpu"):
        ClusterSimulation(bad_gpu, catalog, tokenizer, tokenizer.word_token_ids())
    bad_routing = ClusterConfig(groups=(ReplicaGroup(_engine()),), routing={"preset": "nope"})
    with pytest.raises(ClusterConfigError, match="routing"):
        ClusterSimulation(bad_routing, catalog, tokenizer, tokenizer.word_token_ids())


# -- conservation and reproducibility --------------------------------------------------
def _summary(run: ClusterRun) -> list[tuple[object, ...]]:
    return [
        (r.call_id, r.sent_at, r.first_choice_at, r.last_token_at, r.output_tokens, r.cached_tokens)
        for r in run.records
    ]


def test_every_call_ends_in_one_record_and_tokens_add_up(
    catalog: Catalog, tokenizer: HfTokenizer
) -> None:
    arrivals = [
        (0.01 * i, _single(i, f"request number {i} " * (5 + i % 7), 4 + i % 5)) for i in range(40)
    ]
    run = _sim(catalog, tokenizer, replicas=3).run(arrivals)
    assert sorted(r.call_id for r in run.records) == sorted(f"c{i}" for i in range(40))
    assert all(r.error is None for r in run.records)
    for i, r in enumerate(sorted(run.records, key=lambda r: int(r.call_id[1:]))):
        assert r.output_tokens == 4 + i % 5  # ignore_eos: exactly max_tokens
        assert r.first_choice_at is not None and r.first_choice_at > r.sent_at
    total_out = sum(r.output_tokens or 0 for r in run.records)
    assert total_out == sum(s.num_generation_tokens for s in run.replicas)
    assert sum(run.decisions.values()) == 40


def test_same_seed_same_run_and_seed_matters(catalog: Catalog, tokenizer: HfTokenizer) -> None:
    arrivals = _shared_prefix(4, 4)
    a = _sim(catalog, tokenizer, replicas=3, preset="power-of-two", seed=7).run(arrivals)
    b = _sim(catalog, tokenizer, replicas=3, preset="power-of-two", seed=7).run(arrivals)
    c = _sim(catalog, tokenizer, replicas=3, preset="power-of-two", seed=8).run(arrivals)
    assert _summary(a) == _summary(b)
    assert a.decisions == b.decisions
    assert a.decisions != c.decisions


# -- timing --------------------------------------------------------------------------
def test_lone_request_ttft_is_its_prefill_step(catalog: Catalog, tokenizer: HfTokenizer) -> None:
    sim = _sim(catalog, tokenizer, replicas=1)
    run = sim.run([(1.0, _single(0, "hello there " * 50, max_tokens=3))])
    (rec,) = run.records
    n = rec.prompt_tokens
    assert n is not None and rec.first_choice_at is not None and rec.last_token_at is not None
    cost = sim._replicas[0].resolved.cost_model  # the replica's own cost model
    prefill_s = cost.step_time_s([SeqWork(n, 0)])
    decode_s = cost.step_time_s([SeqWork(1, n)])
    assert rec.first_choice_at - rec.sent_at == pytest.approx(prefill_s, rel=1e-9)
    # Two more tokens, one decode step each (the context grows by one token per step).
    decode2_s = cost.step_time_s([SeqWork(1, n + 1)])
    assert rec.last_token_at - rec.first_choice_at == pytest.approx(decode_s + decode2_s, rel=1e-9)
    assert run.duration_s == pytest.approx(rec.last_token_at - 1.0)


def test_stages_are_closed_loop_with_their_delay(catalog: Catalog, tokenizer: HfTokenizer) -> None:
    first = _call("plan", "plan the work " * 20, 5, "run")
    sub_a = _call("sub-a", "plan the work " * 20 + "subtask a", 5, "run")
    sub_b = _call("sub-b", "plan the work " * 20 + "subtask b", 5, "run")
    final = _call("final", "plan the work " * 20 + "summarise", 5, "run")
    session = Session(
        "run",
        (Stage(0.0, (first,)), Stage(0.5, (sub_a, sub_b)), Stage(0.25, (final,))),
    )
    run = _sim(catalog, tokenizer, replicas=2).run([(0.0, session)])
    by_id = {r.call_id: r for r in run.records}
    end_plan = by_id["plan"].last_token_at
    assert end_plan is not None
    assert by_id["sub-a"].sent_at == pytest.approx(end_plan + 0.5)
    assert by_id["sub-b"].sent_at == by_id["sub-a"].sent_at  # parallel sub-agents
    end_subs = max(by_id["sub-a"].last_token_at or 0, by_id["sub-b"].last_token_at or 0)
    assert by_id["final"].sent_at == pytest.approx(end_subs + 0.25)


# -- routing cases (named checks, not general laws) -------------------------------------
def test_shared_prefixes_hit_more_with_kv_aware_than_round_robin(
    catalog: Catalog, tokenizer: HfTokenizer
) -> None:
    # 5 groups over 4 replicas: round-robin cannot line groups up with replicas.
    arrivals = _shared_prefix(num_groups=5, per_group=5)
    rr = _sim(catalog, tokenizer, replicas=4, preset="round-robin").run(arrivals)
    kv = _sim(catalog, tokenizer, replicas=4, preset="kv-aware").run(arrivals)
    assert kv.prefix_hit_rate > rr.prefix_hit_rate + 0.1
    assert len(kv.records) == len(rr.records) == 25
