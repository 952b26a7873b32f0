"""A replica's step takes only requests that arrived by the step's (model-time) start:
one computed late (after the previous step's writes, in a gap between other replicas'
step ends) must not take a request that arrived after it nominally began."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from headway.core.engine import Engine, RequestError
from headway.core.engine_factory import EngineSpec, resolve_engine
from headway.core.sampler import DeterministicSampler
from headway.core.sequence import EngineRequest
from headway.resources.catalog import load_catalog
from headway.sim.clock import PreciseTimer
from headway.sim.faults import FaultConfig, FaultInjector
from headway.sim.replica import Replica

VOCAB = tuple(range(100, 1100))


def _request(rid: str, num_prompt_tokens: int = 64, max_tokens: int = 8) -> EngineRequest:
    return EngineRequest(rid, tuple(range(1, num_prompt_tokens + 1)), max_tokens, ignore_eos=True)


@pytest.fixture
async def replica() -> AsyncIterator[Replica]:
    resolved = resolve_engine(EngineSpec(model="llama-3.1-8b", gpu="h100"), load_catalog())
    sampler = DeterministicSampler(VOCAB, eos_token_id=2, seed=0, mean_output_tokens=10.0)
    engine = Engine(resolved.config, resolved.cost_model.step_cost, sampler)
    timer = PreciseTimer(asyncio.get_running_loop())
    # time-scale 0.2: a decode step of ~8 model ms takes ~40 real ms
    r = Replica(0, engine, 0.2, FaultInjector(FaultConfig(), 0), timer)
    try:
        yield r
    finally:
        await r.stop()
        timer.close()


async def test_pending_requests_join_only_steps_that_start_after_them(replica: Replica) -> None:
    handle = replica.submit(_request("b"))
    assert not replica.engine.has_work  # not in the engine before a step takes it
    replica._admit_pending(handle.arrived_at - 1e-6)  # a step that began before it came
    assert not replica.engine.has_work
    replica._admit_pending(handle.arrived_at)
    assert replica.engine.has_work


async def test_pending_request_checks_abort_and_duplicates(replica: Replica) -> None:
    with pytest.raises(RequestError, match="max_tokens"):
        replica.submit(_request("bad", max_tokens=0))  # checked on arrival
    replica.submit(_request("a"))
    with pytest.raises(RequestError, match="already"):
        replica.submit(_request("a"))
    before = replica.engine.counters.num_aborted
    assert replica.abort("a") == 0  # no blocks yet
    assert replica.engine.counters.num_aborted == before + 1
    replica._admit_pending(float("inf"))
    assert not replica.engine.has_work


async def test_request_arriving_while_a_step_is_computed_late_waits_for_the_next(
    replica: Replica,
) -> None:
    """Every step's computation is held back 20 ms past its nominal start (as a gap
    wait may); a request submitted during that delay queues for the next step instead
    of joining one that began before it arrived."""
    held = asyncio.Event()
    release = asyncio.Event()
    real_wait = replica._timer.wait_for_gap

    async def late_gap(width_s: float, max_wait_s: float) -> None:
        await real_wait(width_s, max_wait_s)
        if replica.engine.has_work and not held.is_set():
            held.set()  # the step's nominal start has passed; its computation waits
            await release.wait()

    replica._timer.wait_for_gap = late_gap  # type: ignore[method-assign]
    queue_times: list[float] = []
    replica.on_queue_time = queue_times.append
    replica.start()
    await asyncio.sleep(0.01)  # the loop waits, idle
    replica.submit(_request("a", max_tokens=50))  # keeps the engine stepping
    await asyncio.wait_for(held.wait(), 5)  # step 2 nominally started, not yet computed
    await asyncio.sleep(0.005)
    late = replica.submit(_request("b"))
    release.set()
    for _ in range(500):
        if len(queue_times) == 2:
            break
        await asyncio.sleep(0.01)
    assert len(queue_times) == 2, queue_times
    assert queue_times[0] == 0.0  # "a" arrived to an idle engine
    # "b" waited for the step after the late one (a decode step: ~15 real ms here,
    # ~5 of which had passed when it came); joining the late step would read 0.
    assert queue_times[1] > 0.002, queue_times
    assert late.scheduled_at is not None and late.scheduled_at > late.arrived_at
