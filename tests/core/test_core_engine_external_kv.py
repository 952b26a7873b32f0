"""KV computed by another engine (P/D disaggregation): loaded whole blocks need blocks
but no step tokens; the last token is always computed; a recompute starts from 0."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from headway.core.costmodel import SeqWork, StepCost
from headway.core.engine import Engine, EngineConfig
from headway.core.kv_events import BlockStored
from headway.core.sampler import DeterministicSampler
from headway.core.scheduler import SchedulerConfig
from headway.core.sequence import EngineRequest


def _engine(
    num_blocks: int = 64, seen: list[list[SeqWork]] | None = None, caching: bool = True
) -> Engine:
    def cost(work: Sequence[SeqWork]) -> StepCost:
        if seen is not None:
            seen.append(list(work))
        n = sum(w.num_new_tokens for w in work)
        return StepCost(1e-3, 1e-3, 0.0, 0.0, 0.0, n)

    cfg = EngineConfig(
        num_gpu_blocks=num_blocks,
        block_size=4,
        enable_prefix_caching=caching,
        scheduler=SchedulerConfig(),
    )
    return Engine(cfg, cost, DeterministicSampler(tuple(range(10, 60)), 2, seed=1))


@pytest.mark.parametrize(
    ("prompt_len", "external", "loaded"),
    [(10, 10, 8), (8, 8, 4), (10, 5, 4), (3, 3, 0), (10, 0, 0)],
    ids=["partial-tail", "whole-blocks", "fewer-given", "under-a-block", "none"],
)
def test_loaded_blocks_are_not_computed(prompt_len: int, external: int, loaded: int) -> None:
    seen: list[list[SeqWork]] = []
    e = _engine(seen=seen)
    prompt = tuple(range(100, 100 + prompt_len))
    e.add_request(
        EngineRequest("a", prompt, 3, ignore_eos=True, num_external_computed_tokens=external)
    )
    first = e.step()
    assert seen[0] == [SeqWork(prompt_len - loaded, loaded)]
    assert len(first.outputs) == 1  # the first token at once
    seq = e.sequence("a")
    assert seq is not None and len(seq.block_ids) == -(-prompt_len // 4)
    stored = [h for ev in first.events if isinstance(ev, BlockStored) for h in ev.block_hashes]
    assert len(stored) == prompt_len // 4  # loaded blocks are cached like computed ones
    assert first.num_prefix_hit_tokens == 0
    while e.has_work:
        e.step()
    assert e.pool.num_free == e.pool.num_blocks


def test_preempted_request_recomputes_everything() -> None:
    seen: list[list[SeqWork]] = []
    e = _engine(num_blocks=5, seen=seen, caching=False)  # no cache hit on the recompute
    # b then a (9 tokens, 8 loaded) fill the pool; when both need a block, the one
    # admitted last, a, is preempted.
    e.add_request(EngineRequest("b", tuple(range(50, 55)), 6, ignore_eos=True))
    e.add_request(
        EngineRequest("a", tuple(range(9)), 6, ignore_eos=True, num_external_computed_tokens=9)
    )
    while e.has_work:
        e.step()
    assert e.counters.num_preemptions > 0
    # After its preemption a's prompt is computed from token 0 (nothing to load again).
    assert seen[0] == [SeqWork(5, 0), SeqWork(1, 8)]
    assert [SeqWork(13, 0)] in seen  # its 9 prompt + 4 output tokens, from 0
