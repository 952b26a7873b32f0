"""Engine sizing from a spec: the numbers vLLM would pick, and errors that name the field."""

from __future__ import annotations

import pytest

from headway.core.catalog import Catalog
from headway.core.engine_factory import EngineSpec, EngineSpecError, resolve_engine
from headway.resources.catalog import load_catalog


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def test_kv_capacity_from_hbm_and_vllm_batch_defaults(catalog: Catalog) -> None:
    r = resolve_engine(EngineSpec(model="llama-3.1-8b", gpu="h100", precision="bf16"), catalog)
    # 8B BF16 on 80 GB: ~16 GB weights; the KV cache (128 KiB/token) gets the rest of 85%.
    assert 400_000 < r.capacity_tokens < 500_000
    assert r.config.block_size == 16
    assert r.config.scheduler.max_num_batched_tokens == 8192  # vLLM 0.32, >= 70 GiB
    assert r.config.scheduler.max_num_seqs == 1024
    # max_model_len defaults to the model's context when the cache holds it.
    assert r.config.max_model_len == catalog.model("llama-3.1-8b").max_model_len


def test_override_caps_max_model_len_at_the_cache(catalog: Catalog) -> None:
    r = resolve_engine(
        EngineSpec(model="llama-3.1-8b", gpu="h100", num_gpu_blocks_override=100), catalog
    )
    assert r.config.num_gpu_blocks == 100
    assert r.config.max_model_len == 1600


def test_default_precision_is_fp8_kv_and_weights(catalog: Catalog) -> None:
    fp8 = resolve_engine(EngineSpec(model="llama-3.1-8b", gpu="h100"), catalog)
    bf16 = resolve_engine(EngineSpec(model="llama-3.1-8b", gpu="h100", precision="bf16"), catalog)
    # Half the bytes per KV token and per weight: more than twice the tokens.
    assert fp8.capacity_tokens > 2 * bf16.capacity_tokens


def test_b200_gets_the_large_batch_default(catalog: Catalog) -> None:
    r = resolve_engine(EngineSpec(model="llama-3.1-8b", gpu="b200"), catalog)
    assert r.config.scheduler.max_num_batched_tokens == 16384


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (EngineSpec(model="nope", gpu="h100"), "model"),
        (EngineSpec(model="llama-3.1-8b", gpu="nope"), "gpu"),
        (EngineSpec(model="llama-3.1-8b", gpu="h100", precision="fp3"), "precision"),
        (EngineSpec(model="llama-3.1-8b", gpu="h100", tp=0), "tp"),
        (EngineSpec(model="llama-3.1-8b", gpu="h100", block_size=0), "block_size"),
        (
            EngineSpec(model="llama-3.1-8b", gpu="h100", gpu_memory_utilization=1.5),
            "gpu_memory_utilization",
        ),
        (EngineSpec(model="llama-3.1-405b", gpu="h100"), "model"),  # does not fit on one
        (
            EngineSpec(
                model="llama-3.1-8b", gpu="h100", num_gpu_blocks_override=10, max_model_len=4096
            ),
            "max_model_len",
        ),
    ],
    ids=[
        "unknown-model",
        "unknown-gpu",
        "unknown-precision",
        "tp-zero",
        "block-size-zero",
        "memory-fraction",
        "405b-on-one-h100",
        "max-model-len-over-cache",
    ],
)
def test_errors_name_the_field(catalog: Catalog, spec: EngineSpec, field: str) -> None:
    with pytest.raises(EngineSpecError) as err:
        resolve_engine(spec, catalog)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}:")


_DEVICE = {
    "hbm_gib": 80, "hbm_bandwidth_tb_s": 3.35, "tflops": {"bf16": 989},
    "interconnect_gb_s": 450, "board_power_w": 700,
}  # fmt: skip


def test_device_efficiency_overrides_reach_the_cost_model(catalog: Catalog) -> None:
    from headway.core.costmodel import Efficiency
    from headway.resources.catalog import parse_catalog

    device = {**_DEVICE, "efficiency": {"step_overhead_s": 7e-4, "per_sequence_overhead_s": 0}}
    merged = catalog.merged(parse_catalog({"gpus": {"fitted": device}}))
    eff = resolve_engine(
        EngineSpec(model="llama-3.1-8b", gpu="fitted"), merged
    ).cost_model.efficiency
    assert (eff.step_overhead_s, eff.per_sequence_overhead_s) == (7e-4, 0.0)
    assert eff.max_mfu == Efficiency().max_mfu  # the rest stay at their defaults
    # A spec's own factors win over the device's.
    spec = EngineSpec(model="llama-3.1-8b", gpu="fitted", efficiency=Efficiency())
    assert resolve_engine(spec, merged).cost_model.efficiency.step_overhead_s == 300e-6


@pytest.mark.parametrize(
    ("efficiency", "message"),
    [
        ({"max_mfuu": 0.5}, "gpus.x.efficiency.max_mfuu: unknown field"),
        ({"gpu_memory_utilization": 0.5}, "gpus.x.efficiency.gpu_memory_utilization: unknown"),
        ({"max_mfu": -1}, "gpus.x.efficiency.max_mfu: must be a number >= 0"),
        ([1, 2], "gpus.x.efficiency: must map"),
    ],
    ids=["unknown", "vllm-flag-not-a-device-field", "negative", "not-a-mapping"],
)
def test_device_efficiency_errors_name_the_field(efficiency: object, message: str) -> None:
    from headway.resources.catalog import CatalogError, parse_catalog

    with pytest.raises(CatalogError, match=message.replace(".", r"\.")):
        parse_catalog({"gpus": {"x": {**_DEVICE, "efficiency": efficiency}}})
