"""The engine state machine: batching, chunked prefill, prefix reuse, preemption, aborts,
KV events, and invariants over random workloads."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from headway.core.block_hash import BlockHasher, to_event_int
from headway.core.costmodel import CostModel, Deployment, SeqWork, StepCost
from headway.core.engine import Engine, EngineConfig, RequestError, StepCostFn, StepResult
from headway.core.kv_events import AllBlocksCleared, BlockRemoved, BlockStored
from headway.core.sampler import DeterministicSampler
from headway.core.scheduler import SchedulerConfig
from headway.core.sequence import EngineRequest, FinishReason
from headway.core.sequence import Sequence as EngineSeq
from headway.resources.catalog import builtin_catalog

EOS = 2
VOCAB = tuple(range(10, 60))


def unit_cost(work: Sequence[SeqWork]) -> StepCost:
    n = sum(w.num_new_tokens for w in work)
    return StepCost(1e-3, 1e-3, 0.0, 0.0, 0.0, n)


def sampler(seed: int = 0, mean: float = 8.0) -> DeterministicSampler:
    return DeterministicSampler(VOCAB, EOS, seed=seed, mean_output_tokens=mean)


def make_engine(
    num_blocks: int = 64,
    block_size: int = 4,
    *,
    max_num_seqs: int = 256,
    max_num_batched_tokens: int = 8192,
    chunked: bool = True,
    long_prefill: int = 0,
    caching: bool = True,
    max_model_len: int = 4096,
    seed: int = 0,
    step_cost: StepCostFn = unit_cost,
) -> Engine:
    cfg = EngineConfig(
        num_gpu_blocks=num_blocks,
        block_size=block_size,
        max_model_len=max_model_len,
        enable_prefix_caching=caching,
        scheduler=SchedulerConfig(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            enable_chunked_prefill=chunked,
            long_prefill_token_threshold=long_prefill,
        ),
    )
    return Engine(cfg, step_cost, sampler(seed))


def req(
    rid: str,
    prompt: Sequence[int],
    max_tokens: int = 4,
    *,
    ignore_eos: bool = True,
    stop: frozenset[int] = frozenset(),
) -> EngineRequest:
    return EngineRequest(rid, tuple(prompt), max_tokens, ignore_eos=ignore_eos, stop_token_ids=stop)


def prompt(tag: int, n: int) -> list[int]:
    return [1000 * tag + i for i in range(n)]


@dataclass
class Run:
    steps: list[StepResult] = field(default_factory=list)
    tokens: dict[str, list[int]] = field(default_factory=dict)
    reasons: dict[str, FinishReason] = field(default_factory=dict)
    cached: dict[str, int] = field(default_factory=dict)

    def record(self, result: StepResult) -> None:
        self.steps.append(result)
        for o in result.outputs:
            self.tokens.setdefault(o.request_id, []).extend(o.new_token_ids)
            self.cached[o.request_id] = o.num_cached_tokens
            if o.finish_reason is not None:
                self.reasons[o.request_id] = o.finish_reason


def run(engine: Engine, max_steps: int = 10_000, into: Run | None = None) -> Run:
    out = into or Run()
    for _ in range(max_steps):
        if not engine.has_work:
            return out
        out.record(engine.step())
        engine.pool.check_invariants()
    raise AssertionError(f"engine still busy after {max_steps} steps")


def expected_tokens(s: DeterministicSampler, r: EngineRequest) -> list[int]:
    """What the deterministic model says, independent of batching and preemption."""
    key = s.key_for(r.prompt_token_ids)
    natural = None if r.ignore_eos else s.natural_length(key)
    out: list[int] = []
    while len(out) < r.max_tokens:
        pos = len(out)
        tok = EOS if natural is not None and pos + 1 >= natural else s.token_at(key, pos)
        out.append(tok)
        if tok in r.stop_token_ids or (not r.ignore_eos and tok == EOS):
            break
    return out


# -- one request -----------------------------------------------------------------------


def test_single_request_prefills_then_decodes() -> None:
    engine = make_engine()
    engine.add_request(req("a", prompt(1, 10), max_tokens=5))
    assert engine.num_waiting == 1
    r = run(engine)
    first, *rest = r.steps
    assert (first.num_prefill_tokens, first.num_decode_tokens) == (10, 0)
    assert first.cost.num_tokens == 10
    assert [o.num_output_tokens for o in first.outputs] == [1]
    assert len(rest) == 4
    for i, s in enumerate(rest, start=2):
        assert (s.num_prefill_tokens, s.num_decode_tokens) == (0, 1)
        assert s.outputs[0].num_output_tokens == i
        assert s.duration_s == pytest.approx(1e-3)
    assert r.reasons == {"a": FinishReason.LENGTH}
    assert [o.finish_reason for s in r.steps for o in s.outputs][:-1] == [None] * 4
    assert engine.pool.num_free == engine.pool.num_blocks
    assert engine.counters.num_generation_tokens == 5
    assert engine.counters.num_prompt_tokens == 10
    assert engine.counters.num_finished == 1
    assert engine.sequence("a") is None


S = sampler()
P = tuple(prompt(7, 9))
KEY = S.key_for(P)
NATURAL = S.natural_length(KEY)
FREE_RUN = [S.token_at(KEY, i) for i in range(64)]
STOP_TOKEN = FREE_RUN[3]
STOP_AT = FREE_RUN.index(STOP_TOKEN) + 1  # the first time the model says it


@pytest.mark.parametrize(
    ("request_", "expected_len", "expected_reason"),
    [
        (req("r", P, max_tokens=7), 7, FinishReason.LENGTH),
        (req("r", P, max_tokens=1), 1, FinishReason.LENGTH),
        (req("r", P, max_tokens=NATURAL + 20, ignore_eos=False), NATURAL, FinishReason.STOP),
        (req("r", P, max_tokens=NATURAL - 1, ignore_eos=False), NATURAL - 1, FinishReason.LENGTH),
        (req("r", P, max_tokens=50, stop=frozenset({STOP_TOKEN})), STOP_AT, FinishReason.STOP),
        (
            req("r", P, max_tokens=STOP_AT, stop=frozenset({STOP_TOKEN})),
            STOP_AT,
            FinishReason.STOP,
        ),
    ],
    ids=[
        "ignore-eos-max-tokens",
        "one-token",
        "natural-eos",
        "max-tokens-before-eos",
        "stop-token-id",
        "stop-token-on-last-allowed",
    ],
)
def test_finish_reasons(
    request_: EngineRequest, expected_len: int, expected_reason: FinishReason
) -> None:
    assert S.min_output_tokens <= NATURAL
    engine = make_engine(num_blocks=64)
    engine.add_request(request_)
    r = run(engine)
    assert len(r.tokens["r"]) == expected_len
    assert r.tokens["r"] == expected_tokens(S, request_)
    assert r.reasons["r"] == expected_reason
    if expected_reason == FinishReason.STOP and not request_.ignore_eos:
        assert r.tokens["r"][-1] == EOS


def test_max_model_len_caps_output() -> None:
    engine = make_engine(max_model_len=12)
    engine.add_request(req("a", prompt(1, 8), max_tokens=4))
    r = run(engine)
    assert len(r.tokens["a"]) == 4
    assert r.reasons["a"] == FinishReason.LENGTH


# -- batching limits -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt_lens", "budget", "long_prefill", "expected_first_steps"),
    [
        ([40], 16, 0, [16, 16, 8]),
        ([40], 64, 0, [40]),
        ([40], 64, 12, [12, 12, 12, 4]),
        ([10, 10], 16, 0, [16, 4 + 1]),
        ([5, 30], 16, 0, [16, 1 + 15, 1 + 4]),
    ],
    ids=["one-long-prompt", "fits-budget", "long-prefill-threshold", "two-share-budget", "mix"],
)
def test_chunked_prefill_respects_budget(
    prompt_lens: list[int], budget: int, long_prefill: int, expected_first_steps: list[int]
) -> None:
    engine = make_engine(num_blocks=128, max_num_batched_tokens=budget, long_prefill=long_prefill)
    for i, n in enumerate(prompt_lens):
        engine.add_request(req(f"r{i}", prompt(i, n), max_tokens=3))
    r = run(engine)
    got = [s.cost.num_tokens for s in r.steps]
    assert got[: len(expected_first_steps)] == expected_first_steps
    assert all(n <= budget for n in got)
    assert set(r.reasons) == {f"r{i}" for i in range(len(prompt_lens))}


def test_no_output_until_prompt_fully_prefilled() -> None:
    engine = make_engine(max_num_batched_tokens=8)
    engine.add_request(req("a", prompt(1, 20), max_tokens=2))
    steps = [engine.step() for _ in range(3)]
    assert [len(s.outputs) for s in steps] == [0, 0, 1]
    assert [s.num_prefill_tokens for s in steps] == [8, 8, 4]


def test_chunking_disabled_waits_for_a_whole_prompt() -> None:
    engine = make_engine(max_num_batched_tokens=16, chunked=False)
    engine.add_request(req("a", prompt(1, 10), max_tokens=3))
    engine.add_request(req("b", prompt(2, 10), max_tokens=3))
    first = engine.step()
    assert first.cost.num_tokens == 10  # b does not fit the remaining 6 tokens
    assert engine.num_waiting == 1
    run(engine)


@pytest.mark.parametrize("max_num_seqs", [1, 2, 3], ids=["seqs1", "seqs2", "seqs3"])
def test_max_num_seqs(max_num_seqs: int) -> None:
    engine = make_engine(max_num_seqs=max_num_seqs)
    for i in range(5):
        engine.add_request(req(f"r{i}", prompt(i, 6), max_tokens=3))
    r = Run()
    while engine.has_work:
        result = engine.step()
        r.record(result)
        assert engine.num_running <= max_num_seqs
        assert len(result.outputs) <= max_num_seqs
    assert len(r.reasons) == 5
    assert max(len(s.outputs) for s in r.steps) == max_num_seqs


# -- prefix caching --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "block_size"),
    [(1, 4), (3, 4), (4, 4), (5, 4), (7, 4), (8, 4), (9, 4), (16, 4), (17, 4), (32, 16), (33, 16)],
    ids=lambda v: str(v),
)
def test_prefix_reuse_on_repeated_prompt(n: int, block_size: int) -> None:
    engine = make_engine(block_size=block_size)
    p = prompt(3, n)
    engine.add_request(req("first", p, max_tokens=2))
    first = run(engine)
    assert first.cached["first"] == 0
    engine.add_request(req("again", p, max_tokens=2))
    again = run(engine)
    expected = (n - 1) // block_size * block_size
    assert again.cached["again"] == expected
    assert expected < n  # the last prompt token is always computed
    admit = again.steps[0]
    assert admit.num_prefix_hit_tokens == expected
    assert admit.num_prefix_query_tokens == n
    assert admit.num_prefill_tokens == n - expected
    assert again.tokens["again"] == first.tokens["first"]
    assert engine.counters.num_prefix_hit_tokens == expected
    assert engine.counters.num_prefix_query_tokens == 2 * n


@pytest.mark.parametrize(
    ("budget", "first_step_hit_tokens"),
    [(8192, 8), (11, 0)],
    ids=["same-step", "next-step"],
)
def test_requests_admitted_in_one_step_share_its_blocks(
    budget: int, first_step_hit_tokens: int
) -> None:
    """Blocks are cached when the step that computes them is scheduled (vLLM's
    `allocate_slots`): a request admitted after another in the same step reuses the
    blocks that step fills (computed once, stored once). With a budget the first
    prompt uses up, the second is admitted a step later and hits the same blocks."""
    engine = make_engine(block_size=4, max_num_batched_tokens=budget)
    shared = prompt(1, 8)
    engine.add_request(req("a", [*shared, 5, 6, 7], max_tokens=1))
    engine.add_request(req("b", [*shared, 9, 9, 9], max_tokens=1))
    first = engine.step()
    assert first.num_prefix_hit_tokens == first_step_hit_tokens
    r = Run()
    r.record(first)
    run(engine, into=r)
    assert r.reasons.keys() == {"a", "b"}
    assert r.cached == {"a": 0, "b": 8}
    stored = [h for step in r.steps for e in step.events if isinstance(e, BlockStored)
              for h in e.block_hashes]  # fmt: skip
    assert len(stored) == len(set(stored))  # every block stored once


def test_shared_prefix_partial_hit() -> None:
    engine = make_engine(block_size=4)
    engine.add_request(req("a", [*prompt(1, 8), 5, 6, 7], max_tokens=1))
    run(engine)
    engine.add_request(req("b", [*prompt(1, 8), 9, 9, 9, 9, 9], max_tokens=1))
    r = run(engine)
    assert r.cached["b"] == 8


def test_generated_tokens_are_cached_too() -> None:
    engine = make_engine(block_size=4)
    a = req("a", prompt(1, 6), max_tokens=7)
    engine.add_request(a)
    ra = run(engine)
    # A follow-up turn whose prompt is the first turn's prompt + answer reuses both.
    follow = [*a.prompt_token_ids, *ra.tokens["a"], 99]
    engine.add_request(req("b", follow, max_tokens=1))
    rb = run(engine)
    # 6 prompt + 6 computed outputs (the last output is never computed) = 12 = 3 blocks.
    assert rb.cached["b"] == 12


def test_prefix_caching_disabled_never_hits() -> None:
    engine = make_engine(caching=False)
    for rid in ("a", "b"):
        engine.add_request(req(rid, prompt(1, 12), max_tokens=2))
        r = run(engine)
        assert r.cached[rid] == 0
        assert all(not s.events for s in r.steps)


# -- preemption ------------------------------------------------------------------------


def _workload() -> list[EngineRequest]:
    return [req(f"r{i}", prompt(i, 6 + i), max_tokens=10 + i) for i in range(4)]


def test_preemption_under_tiny_pool_keeps_outputs() -> None:
    roomy = make_engine(num_blocks=256)
    tiny = make_engine(num_blocks=7)
    for r in _workload():
        roomy.add_request(r)
        tiny.add_request(r)
    reference = run(roomy)
    squeezed = run(tiny)
    assert roomy.counters.num_preemptions == 0
    assert tiny.counters.num_preemptions > 0
    assert any(s.preempted_ids for s in squeezed.steps)
    assert squeezed.tokens == reference.tokens
    assert squeezed.reasons == reference.reasons
    for r in _workload():
        assert squeezed.tokens[r.request_id] == expected_tokens(S, r)
    assert tiny.pool.num_free == tiny.pool.num_blocks


def test_preempted_request_goes_back_to_the_front_of_the_queue() -> None:
    engine = make_engine(num_blocks=4, block_size=4, max_num_batched_tokens=64)
    engine.add_request(req("old", prompt(1, 7), max_tokens=9))
    engine.add_request(req("new", prompt(2, 7), max_tokens=9))
    engine.add_request(req("later", prompt(3, 3), max_tokens=1))
    preempted: list[str] = []
    while engine.has_work and not preempted:
        preempted = list(engine.step().preempted_ids)
    assert preempted == ["new"]
    assert engine.scheduler.waiting[0].request_id == "new"
    assert engine.sequence("new").num_preemptions == 1
    assert engine.sequence("new").num_computed_tokens == 0
    run(engine)


# -- abort -----------------------------------------------------------------------------


def test_abort_frees_blocks_at_once() -> None:
    engine = make_engine(num_blocks=16, block_size=4)
    engine.add_request(req("a", prompt(1, 10), max_tokens=20))
    engine.step()
    engine.step()
    held = len(engine.sequence("a").block_ids)
    assert held == 3
    result = engine.abort_request("a")
    assert result.found
    assert result.num_freed_blocks == held
    assert engine.pool.num_free == engine.pool.num_blocks
    assert not engine.has_work
    assert engine.counters.num_aborted == 1
    assert engine.counters.num_aborted_freed_blocks == held


@pytest.mark.parametrize(
    ("steps_before", "expected_freed"),
    [(0, 0), (1, 2), (4, 2), (5, 3)],
    ids=["waiting", "after-prefill", "two-blocks-full", "third-block"],
)
def test_abort_waiting_or_running(steps_before: int, expected_freed: int) -> None:
    engine = make_engine(block_size=4)
    engine.add_request(req("a", prompt(1, 5), max_tokens=10))
    for _ in range(steps_before):
        engine.step()
    result = engine.abort_request("a")
    assert (result.found, result.num_freed_blocks) == (True, expected_freed)
    assert engine.num_waiting == engine.num_running == 0
    assert engine.pool.num_free == engine.pool.num_blocks
    assert engine.step().is_idle


def test_abort_unknown_or_twice() -> None:
    engine = make_engine()
    assert engine.abort_request("nope").found is False
    engine.add_request(req("a", prompt(1, 5)))
    assert engine.abort_request("a").found
    again = engine.abort_request("a")
    assert (again.found, again.num_freed_blocks) == (False, 0)


def test_abort_counts_only_blocks_that_become_free() -> None:
    engine = make_engine(num_blocks=16, block_size=4)
    shared = prompt(1, 9)
    engine.add_request(req("a", shared, max_tokens=20))
    engine.step()
    engine.add_request(req("b", shared, max_tokens=20))
    engine.step()  # b reuses a's two full blocks
    assert engine.sequence("b").num_cached_tokens == 8
    freed = engine.abort_request("b").num_freed_blocks
    assert freed == 1  # only b's own tail block; the shared two are still held by a
    engine.abort_request("a")
    assert engine.pool.num_free == engine.pool.num_blocks


def test_finish_request_from_outside() -> None:
    engine = make_engine()
    engine.add_request(req("a", prompt(1, 5), max_tokens=10))
    engine.step()
    assert engine.finish_request("a", FinishReason.STOP)
    assert not engine.finish_request("a", FinishReason.STOP)
    assert engine.pool.num_free == engine.pool.num_blocks
    assert engine.counters.num_finished == 1


# -- validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine_kwargs", "request_", "match"),
    [
        ({}, req("dup", [1, 2, 3]), "already in the engine"),
        ({}, req("x", []), "at least one token"),
        ({}, req("x", [1], max_tokens=0), "max_tokens"),
        ({"max_model_len": 16}, req("x", prompt(1, 16), max_tokens=1), "context length"),
        ({"max_model_len": 16}, req("x", prompt(1, 10), max_tokens=7), "context length"),
        ({"num_blocks": 4}, req("x", prompt(1, 16), max_tokens=1), "KV blocks"),
        ({"num_blocks": 4}, req("x", prompt(1, 8), max_tokens=9), "KV blocks"),
        (
            {"max_num_batched_tokens": 8, "chunked": False},
            req("x", prompt(1, 9), max_tokens=1),
            "max_num_batched_tokens",
        ),
        (
            {"max_num_batched_tokens": 8, "chunked": False},
            req("x", prompt(1, 4), max_tokens=6),
            "max_num_batched_tokens",
        ),
    ],
    ids=[
        "duplicate-id",
        "empty-prompt",
        "zero-max-tokens",
        "prompt-fills-context",
        "prompt-plus-output-too-long",
        "prompt-needs-more-blocks",
        "output-needs-more-blocks",
        "no-chunking-prompt-over-budget",
        "no-chunking-recompute-over-budget",
    ],
)
def test_add_request_rejects(engine_kwargs: dict, request_: EngineRequest, match: str) -> None:
    engine = make_engine(**engine_kwargs)
    engine.add_request(req("dup", [9]))
    with pytest.raises(RequestError, match=match):
        engine.add_request(request_)
    assert engine.num_waiting == 1  # nothing half-added


@pytest.mark.parametrize(
    ("num_blocks", "n", "max_tokens"),
    [(4, 15, 1), (4, 8, 8), (2, 1, 7)],
    ids=["prompt-fills-pool", "prompt-and-output-fill-pool", "tiny"],
)
def test_add_request_accepts_what_fits_exactly(num_blocks: int, n: int, max_tokens: int) -> None:
    engine = make_engine(num_blocks=num_blocks, block_size=4)
    r = req("x", prompt(1, n), max_tokens=max_tokens)
    engine.add_request(r)
    assert run(engine).tokens["x"] == expected_tokens(S, r)


# -- KV events -------------------------------------------------------------------------


def test_kv_events_chain_and_eviction() -> None:
    bs = 4
    engine = make_engine(num_blocks=6, block_size=bs)
    a = req("a", prompt(1, 12), max_tokens=6)
    engine.add_request(a)
    ra = run(engine)
    stored = [e for s in ra.steps for e in s.events if isinstance(e, BlockStored)]
    assert stored and not any(isinstance(e, BlockRemoved) for s in ra.steps for e in s.events)
    # The chain over prompt + computed outputs (the last output has no KV).
    tokens = [*a.prompt_token_ids, *ra.tokens["a"][:-1]]
    chain = [to_event_int(d) for d in BlockHasher(bs).hash_all(tokens)]
    assert [h for e in stored for h in e.block_hashes] == chain
    assert stored[0].parent_block_hash is None
    for prev, ev in itertools.pairwise(stored):
        assert ev.parent_block_hash == prev.block_hashes[-1]
    assert all(len(e.token_ids) == bs * len(e.block_hashes) for e in stored)
    assert [t for e in stored for t in e.token_ids] == tokens[: len(chain) * bs]
    assert all(e.block_size == bs and e.medium == "GPU" for e in stored)
    # A different prompt in a small pool evicts a's blocks, tail first.
    engine.add_request(req("b", prompt(2, 20), max_tokens=1))
    rb = run(engine)
    removed = [
        h for s in rb.steps for e in s.events if isinstance(e, BlockRemoved) for h in e.block_hashes
    ]
    assert removed
    assert removed == list(reversed(chain))[: len(removed)]


def test_reset_prefix_cache_through_engine() -> None:
    engine = make_engine()
    engine.add_request(req("a", prompt(1, 9), max_tokens=2))
    engine.step()
    assert engine.reset_prefix_cache() is False
    run(engine)
    assert engine.reset_prefix_cache() is True
    assert engine.drain_events() == [AllBlocksCleared()]
    engine.add_request(req("b", prompt(1, 9), max_tokens=2))
    assert run(engine).cached["b"] == 0


# -- determinism -----------------------------------------------------------------------


def test_same_seed_same_outputs_and_other_seed_differs() -> None:
    def outputs(seed: int) -> dict[str, list[int]]:
        engine = make_engine(seed=seed)
        for i in range(3):
            engine.add_request(req(f"r{i}", prompt(i, 5 + i), max_tokens=12, ignore_eos=False))
        return run(engine).tokens

    assert outputs(0) == outputs(0)
    assert outputs(0) != outputs(1)


def test_real_cost_model_drives_the_engine() -> None:
    catalog = builtin_catalog()
    cm = CostModel(Deployment(catalog.model("llama-3.1-8b"), catalog.gpu("h100")))
    engine = Engine(EngineConfig(num_gpu_blocks=64, block_size=16), cm.step_cost, sampler())
    engine.add_request(req("a", prompt(1, 100), max_tokens=3))
    r = run(engine)
    prefill, *decodes = (s.duration_s for s in r.steps)
    assert all(d > 0 for d in decodes)
    assert prefill > max(decodes)
    assert r.steps[0].cost.num_tokens == 100


# -- Hypothesis: random workloads ------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    num_blocks: int
    block_size: int
    max_num_seqs: int
    max_num_batched_tokens: int
    chunked: bool
    caching: bool
    ops: tuple[tuple, ...]


@st.composite
def workloads(draw: st.DrawFn) -> Workload:
    block_size = draw(st.sampled_from([1, 2, 4]))
    num_blocks = draw(st.integers(2, 8))
    chunked = draw(st.booleans())
    budget = draw(st.integers(1 if chunked else 8, 24))
    # Prompts fit the pool (and the step budget without chunking); prompt + max_tokens
    # sometimes does not, and must then be rejected up front rather than livelock.
    cap = num_blocks * block_size if chunked else min(num_blocks * block_size, budget + 1)

    # (shared prefix id, its length, private suffix length, max_tokens, ignore_eos); one
    # request in ten keeps a max_tokens that may not fit.
    def shape(t: tuple[int, int, int, int, bool, int]) -> tuple[int, int, int, int, bool]:
        pid, plen, slen, max_tokens, ignore_eos, oversize = t
        plen = min(plen, cap - 1)
        slen = min(slen, cap - 1 - plen)
        if oversize:
            max_tokens = min(max_tokens, max(1, cap - max(1, plen + slen)))
        return pid, plen, slen, max_tokens, ignore_eos

    request_spec = st.tuples(
        st.integers(0, 1),
        st.integers(0, 8),
        st.integers(0, 4),
        st.integers(1, 16),
        st.booleans(),
        st.integers(0, 9),
    ).map(shape)
    add = st.tuples(st.just("add"), request_spec)
    op = st.one_of(
        add,
        add,
        st.tuples(st.just("step"), st.integers(1, 3)),
        st.tuples(st.just("abort"), st.integers(0, 30)),
    )
    return Workload(
        num_blocks=num_blocks,
        block_size=block_size,
        max_num_seqs=draw(st.integers(1, 4)),
        max_num_batched_tokens=budget,
        chunked=chunked,
        caching=draw(st.booleans()),
        ops=tuple(draw(st.lists(op, min_size=2, max_size=25))),
    )


def _checked_step(
    engine: Engine, w: Workload, r: Run, stored: Counter[int], seen: list[list[SeqWork]]
) -> None:
    seen.clear()
    result = engine.step()
    r.record(result)
    (work,) = seen  # exactly what the scheduler put in this step
    assert result.cost.num_tokens <= w.max_num_batched_tokens
    assert len(work) <= w.max_num_seqs
    assert all(x.num_new_tokens >= 1 for x in work)
    assert engine.num_running <= w.max_num_seqs
    assert engine.pool.num_in_use <= engine.pool.num_blocks
    engine.pool.check_invariants()
    for ev in result.events:
        if isinstance(ev, BlockStored):
            stored.update(ev.block_hashes)
        elif isinstance(ev, BlockRemoved):
            for h in ev.block_hashes:
                assert stored[h] > 0, "removed a hash that was never stored"
                stored[h] -= 1
    # Replaying the event stream gives exactly the pool's cached hashes.
    assert {h for h, c in stored.items() if c > 0} == {
        to_event_int(d) for d in engine.pool.cached_hashes()
    }


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(w=workloads())
def test_random_workloads_keep_invariants_and_finish(w: Workload) -> None:
    seen: list[list[SeqWork]] = []

    def recording_cost(work: Sequence[SeqWork]) -> StepCost:
        seen.append(list(work))
        return unit_cost(work)

    engine = make_engine(
        step_cost=recording_cost,
        num_blocks=w.num_blocks,
        block_size=w.block_size,
        max_num_seqs=w.max_num_seqs,
        max_num_batched_tokens=w.max_num_batched_tokens,
        chunked=w.chunked,
        caching=w.caching,
    )
    s = engine.sampler
    r = Run()
    stored: Counter[int] = Counter()
    admitted: dict[str, EngineRequest] = {}
    aborted: set[str] = set()
    for o in w.ops:
        if o[0] == "add":
            pid, plen, slen, max_tokens, ignore_eos = o[1]
            rid = f"r{len(admitted) + len(aborted)}-{len(r.steps)}"
            body = [500 * pid + i for i in range(plen)] + [
                9000 + len(admitted) * 7 + i for i in range(slen)
            ]
            er = req(rid, body or [1], max_tokens, ignore_eos=ignore_eos)
            try:
                engine.add_request(er)
            except RequestError as exc:
                event(f"rejected: {str(exc).split('(')[0]}")
                continue
            admitted[rid] = er
        elif o[0] == "step":
            for _ in range(o[1]):
                _checked_step(engine, w, r, stored, seen)
        else:
            live = sorted(rid for rid in admitted if engine.sequence(rid) is not None)
            if live:
                rid = live[o[1] % len(live)]
                before = engine.pool.num_free
                res = engine.abort_request(rid)
                assert res.found
                assert engine.pool.num_free == before + res.num_freed_blocks
                aborted.add(rid)
            engine.pool.check_invariants()
    for _ in range(3000):
        if not engine.has_work:
            break
        _checked_step(engine, w, r, stored, seen)
    assert not engine.has_work, "requests left unfinished (livelock?)"
    event(f"admitted={min(len(admitted), 5)}")
    event(f"adds={min(sum(o[0] == 'add' for o in w.ops), 3)}")
    event(f"preempted={engine.counters.num_preemptions > 0}")
    event(f"aborted={bool(aborted)}")
    event(f"prefix-hits={engine.counters.num_prefix_hit_tokens > 0}")
    assert engine.pool.num_free == engine.pool.num_blocks
    assert engine.num_running == engine.num_waiting == 0
    for rid, er in admitted.items():
        if rid in aborted:
            assert rid not in r.reasons
            continue
        assert rid in r.reasons, f"{rid} neither finished nor aborted"
        assert r.tokens[rid] == expected_tokens(s, er)
        assert len(r.tokens[rid]) <= er.max_tokens


@pytest.mark.parametrize(
    ("start", "end"),
    [(0, 3), (1, 5), (5, 7), (2, 2), (0, 7)],
    ids=["prompt", "across", "output", "empty", "all"],
)
def test_tokens_between_matches_slicing_the_whole_sequence(start: int, end: int) -> None:
    seq = EngineSeq(EngineRequest("r", (10, 11, 12, 13, 14), max_tokens=4), 0)
    seq.append_output(20)
    seq.append_output(21)
    assert seq.tokens_between(start, end) == seq.token_ids()[start:end]
