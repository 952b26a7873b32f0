"""The engine's decode fast path (`Engine._decode_step`, taken by `step()` when every
running sequence decodes one token and nothing waits) against the general path: on
seeded random scenarios (tiny pools that preempt and evict, chunked prefills, shared
prefixes, stop tokens, aborts, outside finishes, LoRA and salted hashes, external KV),
an engine with the fast path and one without give equal step results and equal state
after every operation. The fast one also takes some requests prepared ahead
(`Engine.prepare_request`), which must change nothing either."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import pytest

from headway.core.costmodel import SeqWork, StepCost
from headway.core.engine import Engine, EngineConfig, RequestError, StepResult
from headway.core.sampler import DeterministicSampler, _mix64
from headway.core.scheduler import SchedulerConfig
from headway.core.sequence import EngineRequest, FinishReason

EOS = 2
VOCAB = tuple(range(10, 40))


def context_cost(work: Sequence[SeqWork]) -> StepCost:
    """A step cost that depends on every sequence's context, so a wrong one shows."""
    n = sum(w.num_new_tokens for w in work)
    ctx = sum(w.num_context_tokens * (i + 1) for i, w in enumerate(work))
    d = 1e-3 + 1e-7 * ctx + 1e-5 * n
    return StepCost(d, d, 0.0, 0.0, 0.0, n)


def make_engine(cfg: dict[str, Any], fast: bool) -> Engine:
    engine = Engine(
        EngineConfig(
            num_gpu_blocks=cfg["num_blocks"],
            block_size=cfg["block_size"],
            max_model_len=cfg["max_model_len"],
            enable_prefix_caching=cfg["caching"],
            hash_seed=cfg["hash_seed"],
            scheduler=SchedulerConfig(
                max_num_seqs=cfg["max_num_seqs"],
                max_num_batched_tokens=cfg["budget"],
                enable_chunked_prefill=cfg["chunked"],
            ),
        ),
        context_cost,
        DeterministicSampler(VOCAB, EOS, seed=cfg["seed"], mean_output_tokens=12.0),
    )
    engine.use_decode_fast_path = fast
    return engine


def engine_state(e: Engine) -> dict[str, Any]:
    """Everything a step can change, in comparable form."""
    pool = e.pool
    return {
        "seqs": {
            rid: (
                tuple(s.output_token_ids),
                s.num_tokens,
                s.num_computed_tokens,
                tuple(s.block_ids),
                tuple(s.block_hashes),
                s.num_cached_blocks,
                s.num_cached_tokens,
                s.num_preemptions,
                s.status,
            )
            for rid, s in sorted(e._seqs.items())
        },
        "natural_len": dict(e._natural_len),
        "running": [s.request_id for s in e.scheduler.running],
        "waiting": [s.request_id for s in e.scheduler.waiting],
        "free": list(pool._free),
        "ref": list(pool._ref_cnt),
        "hash": list(pool._hash),
        "cached": {h: list(b) for h, b in pool._cached.items()},
        "evicted": pool.num_evicted_blocks,
        "counters": e.counters,
    }


def random_config(rng: random.Random) -> dict[str, Any]:
    return {
        "block_size": rng.choice([2, 4, 16]),
        "num_blocks": rng.randint(6, 60),
        "max_model_len": rng.choice([40, 4096]),
        "caching": rng.random() < 0.8,
        "hash_seed": rng.choice([None, "7"]),
        "max_num_seqs": rng.randint(1, 8),
        "budget": rng.randint(2, 64),
        "chunked": rng.random() < 0.8,
        "seed": rng.randint(0, 3),
    }


def random_request(rng: random.Random, i: int) -> EngineRequest:
    prefix = [100 * rng.randint(0, 2) + t for t in range(rng.randint(0, 24))]
    own = [1000 + 17 * i + t for t in range(rng.randint(0, 8))]
    salt = rng.random() < 0.1
    lora = rng.random() < 0.1
    return EngineRequest(
        f"r{i}",
        tuple(prefix + own or [1]),
        rng.randint(1, 40),
        ignore_eos=rng.random() < 0.5,
        stop_token_ids=frozenset(rng.sample(VOCAB, rng.randint(0, 2))),
        lora_name="ad" if lora else None,
        lora_id=1 if lora else None,
        cache_salt="s" if salt else None,
        num_external_computed_tokens=rng.choice([0, 0, 0, 8]),
    )


def run_scenario(seed: int) -> tuple[int, int, int]:
    """Drive a fast-path engine and a general-path one through the same random
    operations; returns (steps, steps the fast path took, those that allocated)."""
    rng = random.Random(seed)
    cfg = random_config(rng)
    fast, general = make_engine(cfg, True), make_engine(cfg, False)
    num_fast = num_fast_allocs = 0
    decode_step = fast._decode_step

    def counted() -> StepResult | None:
        nonlocal num_fast, num_fast_allocs
        bs = fast.config.block_size
        allocates = any(
            s.num_computed_tokens >= len(s.block_ids) * bs for s in fast.scheduler.running
        )
        result = decode_step()
        num_fast += result is not None
        num_fast_allocs += result is not None and allocates
        return result

    fast._decode_step = counted  # type: ignore[method-assign]
    num_steps = 0
    num_requests = 0
    for _ in range(rng.randint(20, 120)):
        op = rng.random()
        if op < 0.12:
            r = random_request(rng, num_requests)
            num_requests += 1
            # The fast engine sometimes gets it prepared ahead (hashed outside a step).
            prepared = fast.prepare_request(r) if rng.random() < 0.5 else None
            errors = []
            for e, ahead in ((fast, prepared), (general, None)):
                try:
                    e.add_request(r, ahead)
                except RequestError as exc:
                    errors.append(str(exc))
            assert len(errors) in (0, 2)
        elif op < 0.15 and general._seqs:
            rid = rng.choice(sorted(general._seqs))
            assert fast.abort_request(rid) == general.abort_request(rid)
        elif op < 0.17 and general._seqs:
            rid = rng.choice(sorted(general._seqs))
            assert fast.finish_request(rid, FinishReason.STOP) == general.finish_request(
                rid, FinishReason.STOP
            )
        else:
            assert fast.step() == general.step()
            num_steps += 1
        assert engine_state(fast) == engine_state(general)
    while general.has_work:
        assert fast.step() == general.step()
        num_steps += 1
        assert engine_state(fast) == engine_state(general)
    assert not fast.has_work
    fast.pool.check_invariants()
    return num_steps, num_fast, num_fast_allocs


@pytest.mark.parametrize("seed", range(60), ids=lambda s: f"seed{s}")
def test_decode_fast_path_equals_general_path(seed: int) -> None:
    run_scenario(seed)


def test_the_scenarios_take_the_fast_path_and_leave_it() -> None:
    """The comparison above means something: many steps take the fast path (some of
    them allocating a block), others (admissions, prefills, preemptions) do not."""
    totals = [run_scenario(seed) for seed in range(60)]
    num_steps = sum(t[0] for t in totals)
    num_fast = sum(t[1] for t in totals)
    assert 0.2 * num_steps < num_fast < num_steps
    assert sum(t[2] for t in totals) > 20


@pytest.mark.parametrize(
    ("setup", "expected_fast"),
    [
        ("decoding", True),
        ("waiting", False),  # an admission is due
        ("prefilling", False),  # a chunk of more than one token left
        ("no-free-block", False),  # two sequences need a block and one is free
    ],
    ids=["decoding", "waiting", "prefilling", "no-free-block"],
)
def test_when_the_fast_path_applies(setup: str, expected_fast: bool) -> None:
    cfg = {
        "block_size": 4,
        "num_blocks": 4 if setup == "no-free-block" else 64,
        "max_model_len": 4096,
        "caching": True,
        "hash_seed": None,
        "max_num_seqs": 8,
        "budget": 4 if setup == "prefilling" else 64,
        "chunked": True,
        "seed": 0,
    }
    e = make_engine(cfg, True)
    prompt = tuple(range(100, 110)) if setup == "prefilling" else (1, 2, 3)
    e.add_request(EngineRequest("a", prompt, 5, ignore_eos=True))
    if setup == "no-free-block":
        e.add_request(EngineRequest("b", (5, 6, 7, 8, 9, 10, 11), 5, ignore_eos=True))
        e.step()  # a: 1 block, 4 tokens; b: 2 blocks, 8 tokens; 1 free
        assert e._decode_step() is not None  # both still fit their last block
        assert e.pool.num_free == 1
    else:
        e.step()
    if setup == "waiting":
        e.add_request(EngineRequest("b", (5, 6, 7), 5, ignore_eos=True))
    assert (e._decode_step() is not None) == expected_fast


@pytest.mark.parametrize(
    ("key", "position"),
    [(0, 0), (2**64 - 1, 3), (12345678901234567, 1000), (7, 2**64)],
    ids=["zero", "wraps", "far", "position-wraps"],
)
def test_sampler_token_at_is_the_mix_of_key_and_position(key: int, position: int) -> None:
    s = DeterministicSampler(VOCAB, EOS, seed=1)
    assert s.token_at(key, position) == VOCAB[_mix64(key + position) % len(VOCAB)]
