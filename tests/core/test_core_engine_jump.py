"""Decode jumps: taking m planned decode steps at once leaves the engine exactly as m
single steps do (tokens, timings, block ids and hashes, cached blocks, KV events,
counters), and the plan only covers steps whose effects nobody could see early."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from headway.core.costmodel import SeqWork, StepCost
from headway.core.engine import Engine, EngineConfig, RequestError, StepResult
from headway.core.kv_events import BlockRemoved, KvEvent
from headway.core.sampler import DeterministicSampler
from headway.core.scheduler import SchedulerConfig
from headway.core.sequence import EngineRequest

EOS = 2
VOCAB = tuple(range(10, 60))


def growing_cost(work: Sequence[SeqWork]) -> StepCost:
    """A step cost that grows with the KV read, so each jumped step's cost differs."""
    n = sum(w.num_new_tokens for w in work)
    ctx = sum(w.num_context_tokens for w in work)
    d = 1e-3 + 1e-6 * ctx + 1e-5 * n
    return StepCost(d, d, 0.0, 0.0, 0.0, n)


def make_engine(
    num_blocks: int,
    block_size: int,
    *,
    max_num_seqs: int = 8,
    budget: int = 64,
    caching: bool = True,
    max_model_len: int = 4096,
) -> Engine:
    cfg = EngineConfig(
        num_gpu_blocks=num_blocks,
        block_size=block_size,
        max_model_len=max_model_len,
        enable_prefix_caching=caching,
        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget),
    )
    sampler = DeterministicSampler(VOCAB, EOS, seed=3, mean_output_tokens=10.0)
    return Engine(cfg, growing_cost, sampler)


def engine_state(e: Engine) -> dict[str, Any]:
    """Everything a step can change, in comparable form."""
    pool = e.pool
    seqs = {
        rid: (
            tuple(s.output_token_ids),
            s.num_computed_tokens,
            tuple(s.block_ids),
            tuple(s.block_hashes),
            s.num_cached_blocks,
            s.num_cached_tokens,
            s.status,
        )
        for rid, s in ((rid, e.sequence(rid)) for rid in sorted(e._seqs))
        if s is not None
    }
    return {
        "seqs": seqs,
        "running": [s.request_id for s in e.scheduler.running],
        "waiting": [s.request_id for s in e.scheduler.waiting],
        "free": list(pool._free),
        "ref": list(pool._ref_cnt),
        "hash": list(pool._hash),
        "cached": {h: list(b) for h, b in pool._cached.items()},
        "counters": e.counters,
    }


@dataclass
class Flat:
    """Step results flattened to per-step facts."""

    durations_s: list[float]
    tokens: dict[str, list[int]]
    finishes: dict[str, str]
    events: list[KvEvent]


def flatten(results: Sequence[StepResult]) -> Flat:
    out = Flat([], {}, {}, [])
    for r in results:
        out.durations_s.extend(r.step_durations_s or (r.duration_s,))
        for o in r.outputs:
            out.tokens.setdefault(o.request_id, []).extend(o.new_token_ids)
            if o.finish_reason is not None:
                out.finishes[o.request_id] = o.finish_reason
        out.events.extend(r.events)
    return out


def drive(single: Engine, jumping: Engine, ops: Sequence[tuple[str, Any]], max_jump: int) -> int:
    """Apply `ops` to both engines; `single` only ever steps, `jumping` takes a planned
    decode jump whenever it can (of the length the op asks, capped by the plan).
    Returns how many multi-step jumps were taken."""
    num_jumps = 0

    def advance(want: int) -> None:
        nonlocal num_jumps
        plan = jumping.plan_decode_jump(max_jump)
        if not plan:
            a, b = single.step(), jumping.step()
            assert flatten([a]) == flatten([b])
            assert a.num_decode_tokens == b.num_decode_tokens
            return
        m = max(1, min(want, len(plan)))
        res = jumping.decode_jump(m)
        num_jumps += m > 1
        singles = [single.step() for _ in range(m)]
        # Every step but the last is invisible from outside.
        for s in singles[:-1]:
            assert s.is_silent and not s.admitted_ids
        assert flatten(singles) == flatten([res])
        assert list(res.step_durations_s) == [p.duration_s for p in plan[:m]]
        assert res.num_decode_tokens == sum(s.num_decode_tokens for s in singles)
        assert all(len(o.new_token_ids) == m for o in res.outputs)

    for op, arg in ops:
        if op == "add":
            errors = []
            for e in (single, jumping):
                try:
                    e.add_request(arg)
                except RequestError as exc:
                    errors.append(str(exc))
            assert len(errors) in (0, 2)
        elif op == "abort":
            live = sorted(single._seqs)
            if live:
                rid = live[arg % len(live)]
                assert single.abort_request(rid) == jumping.abort_request(rid)
        else:
            advance(arg)
        assert engine_state(single) == engine_state(jumping)
    for _ in range(2000):
        if not single.has_work:
            break
        advance(max_jump)
        assert engine_state(single) == engine_state(jumping)
    assert not single.has_work and not jumping.has_work
    return num_jumps


def request(i: int, shared: int, prefix_len: int, own_len: int, max_tokens: int, **kw: Any) -> Any:
    body = [500 * shared + t for t in range(prefix_len)] + [
        9000 + 13 * i + t for t in range(own_len)
    ]
    return EngineRequest(f"r{i}", tuple(body or [1]), max_tokens, **kw)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    block_size = draw(st.sampled_from([4, 8, 16]))  # smaller: every step fills a block
    num_blocks = draw(st.integers(4, 40))
    engine_kw = {
        "num_blocks": num_blocks,
        "block_size": block_size,
        "max_num_seqs": draw(st.integers(1, 6)),
        "budget": draw(st.integers(2, 64)),
        "caching": draw(st.booleans()),
        "max_model_len": draw(st.sampled_from([4096, 40])),
    }
    ops: list[tuple[str, Any]] = []
    for i in range(draw(st.integers(1, 12))):
        stop = frozenset(draw(st.sets(st.sampled_from(VOCAB), max_size=2)))
        kw = {"ignore_eos": draw(st.booleans()), "stop_token_ids": stop}
        r = request(
            i,
            draw(st.integers(0, 1)),
            draw(st.integers(0, 20)),
            draw(st.integers(0, 6)),
            draw(st.integers(1, 40)),
            **kw,
        )
        ops.append(("add", r))
        for _ in range(draw(st.integers(0, 3))):
            ops.append(draw(st.sampled_from([("step", 1), ("step", 5), ("step", 40)])))
        if draw(st.integers(0, 9)) == 0:
            ops.append(("abort", draw(st.integers(0, 20))))
    return engine_kw, ops


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), max_jump=st.sampled_from([2, 7, 64]))
def test_jumps_equal_single_steps(
    scenario: tuple[dict[str, Any], list[tuple[str, Any]]], max_jump: int
) -> None:
    engine_kw, ops = scenario
    num_jumps = drive(make_engine(**engine_kw), make_engine(**engine_kw), ops, max_jump)
    event(f"multi-step jumps={min(num_jumps, 3)}")


@pytest.mark.parametrize(
    ("block_size", "max_tokens", "ignore_eos", "expected_lengths"),
    [
        # A lone 5-token prompt in blocks of 4: 3 steps to the fill at 8, then 4 to the
        # next fill (the first of them allocates a block), ...
        (4, 12, True, [3, 4, 4]),
        (16, 30, True, [11, 16, 2]),  # the last jump ends at max_tokens
    ],
    ids=["small-blocks", "ends-at-max-tokens"],
)
def test_plan_stops_at_block_fills_and_finishes(
    block_size: int, max_tokens: int, ignore_eos: bool, expected_lengths: list[int]
) -> None:
    e = make_engine(64, block_size)
    e.add_request(EngineRequest("a", (1, 2, 3, 4, 5), max_tokens, ignore_eos=ignore_eos))
    e.step()  # prefill: first token
    lengths = []
    while e.has_work:
        plan = e.plan_decode_jump(64)
        if plan:
            lengths.append(len(plan))
            e.decode_jump(len(plan))
        else:
            e.step()
    assert lengths == expected_lengths


def test_nothing_to_plan_while_a_request_waits_and_plan_is_dropped_by_other_calls() -> None:
    e = make_engine(64, 4)
    e.add_request(EngineRequest("a", (1, 2, 3, 4, 5), 20, ignore_eos=True))
    assert e.plan_decode_jump(8) == ()  # still waiting: its prefill comes first
    e.step()
    assert len(e.plan_decode_jump(8)) == 3  # to the block fill at 8
    e.add_request(EngineRequest("b", (7, 8, 9), 20, ignore_eos=True))
    with pytest.raises(ValueError, match="num_steps"):
        e.decode_jump(1)  # the arrival dropped the plan
    assert e.plan_decode_jump(8) == ()  # b waits


@pytest.mark.parametrize(
    ("key", "start", "count"),
    [(0, 0, 20), (2**64 - 1, 3, 17), (12345678901234567, 1000, 5), (7, 4, 0)],
    ids=["zero", "wraps", "far", "none"],
)
def test_sampler_tokens_at_matches_token_at(key: int, start: int, count: int) -> None:
    s = DeterministicSampler(VOCAB, EOS, seed=1)
    assert s.tokens_at(key, start, count) == [
        s.token_at(key, p) for p in range(start, start + count)
    ]


@pytest.mark.parametrize("caching", [True, False], ids=["evicts", "no-cache"])
def test_plan_allocates_only_blocks_that_cache_nothing(caching: bool) -> None:
    e = make_engine(6, 4, caching=caching)
    e.add_request(EngineRequest("a", tuple(range(100, 120)), 1, ignore_eos=True))
    e.step()  # a: 5 blocks, freed at once (with caching: their hashes stay cached)
    e.add_request(EngineRequest("b", (1, 2, 3), 20, ignore_eos=True))
    e.step()  # b's prompt takes the one block never used; its first token fills it
    e.step()  # ... and the next token needs a block from a's
    plan = e.plan_decode_jump(8)
    if caching:
        assert plan == ()  # the first allocation would evict a's block: a single step
        assert any(isinstance(ev, BlockRemoved) for ev in e.step().events)
    else:
        assert len(plan) == 4  # nothing cached, nothing to evict: allocate and go on
