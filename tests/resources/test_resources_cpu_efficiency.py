"""The built-in `cpu-1core` carries fitted cost-model `Efficiency` factors (its
`efficiency:` mapping, from benchmarks/sim_vs_vllm_cpu.py) and `resolve_engine` applies
them to engines on it; GPU entries keep the defaults."""

from __future__ import annotations

import pytest

from headway.core.costmodel import Efficiency, SeqWork
from headway.core.engine_factory import EngineSpec, resolve_engine
from headway.resources.catalog import load_catalog

FITTED = ("mfu_half_saturation_tokens", "per_sequence_overhead_s", "step_overhead_s")


def _efficiency(gpu: str, model: str) -> Efficiency:
    spec = EngineSpec(model=model, gpu=gpu, precision="bf16", num_gpu_blocks_override=256)
    return resolve_engine(spec, load_catalog()).cost_model.efficiency


def test_cpu_profile_carries_the_fitted_factors() -> None:
    overrides = dict(load_catalog().gpu("cpu-1core").efficiency_overrides)
    assert tuple(sorted(overrides)) == FITTED
    eff = _efficiency("cpu", "tiny-llama")
    assert {k: getattr(eff, k) for k in FITTED} == overrides
    # Factors the fit did not touch keep their defaults.
    assert eff.max_mfu == Efficiency().max_mfu
    assert eff.memory_bandwidth_fraction == Efficiency().memory_bandwidth_fraction


@pytest.mark.parametrize(
    ("gpu", "model"),
    [("h100", "llama-3.1-8b"), ("b200", "llama-3.1-8b")],
    ids=["h100", "b200"],
)
def test_gpus_keep_default_efficiency(gpu: str, model: str) -> None:
    assert load_catalog().gpu(gpu).efficiency_overrides == ()
    assert _efficiency(gpu, model) == Efficiency()


def test_cpu_decode_step_is_a_cores() -> None:
    """No MFU ramp (a core has no SMs to fill): a one-token step is the fixed per-step
    cost plus a weight read, milliseconds as vLLM-CPU measured (3-8 ms); the GPU
    defaults' ramp and overheads would make it ~10 ms on this profile's numbers."""
    spec = EngineSpec(model="tiny-llama", gpu="cpu-1core", precision="bf16")
    cm = resolve_engine(spec, load_catalog()).cost_model
    assert cm.efficiency.mfu(1) == cm.efficiency.max_mfu
    assert 2e-3 < cm.step_time_s([SeqWork(1, 96)]) < 8e-3
