"""A replica hashes the prompts of requests that arrived (`Engine.prepare_request`) in
a step of its own, before the step that admits them; the step then takes the prepared
request as is, and an aborted one leaves nothing behind."""

from __future__ import annotations

import asyncio

import pytest

from headway.core.engine import Engine
from headway.core.engine_factory import EngineSpec, resolve_engine
from headway.core.sampler import DeterministicSampler
from headway.core.sequence import EngineRequest
from headway.resources.catalog import load_catalog
from headway.sim.clock import PreciseTimer
from headway.sim.faults import FaultConfig, FaultInjector
from headway.sim.replica import Replica


def _request(rid: str) -> EngineRequest:
    return EngineRequest(rid, tuple(range(1, 100)), 4, ignore_eos=True)


@pytest.mark.parametrize("abort", [False, True], ids=["admitted", "aborted"])
async def test_pending_requests_are_prepared_ahead_of_their_step(abort: bool) -> None:
    resolved = resolve_engine(EngineSpec(model="llama-3.1-8b", gpu="h100"), load_catalog())
    sampler = DeterministicSampler(tuple(range(100, 1100)), 2, seed=0)
    engine = Engine(resolved.config, resolved.cost_model.step_cost, sampler)
    reference = Engine(resolved.config, resolved.cost_model.step_cost, sampler)
    timer = PreciseTimer(asyncio.get_running_loop())
    replica = Replica(0, engine, 1.0, FaultInjector(FaultConfig(), 0), timer)
    try:
        handle = replica.submit(_request("a"))
        replica._prepare_pending()
        prepared = replica._prepared["a"]
        assert len(prepared.block_hashes) == 99 // engine.config.block_size
        if abort:
            replica.abort("a")
            assert not replica._prepared
            return
        replica._admit_pending(handle.arrived_at)
        assert not replica._prepared
        reference.add_request(_request("a"))
        seq, ref = engine.sequence("a"), reference.sequence("a")
        assert seq is not None and ref is not None
        assert (seq.block_hashes, seq.sample_key) == (ref.block_hashes, ref.sample_key)
    finally:
        await replica.stop()
        timer.close()
