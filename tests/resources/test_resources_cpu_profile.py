"""The built-in `cpu-1core` device and `tiny-llama` model (issue 7's simulator
calibration): the model entry is the shape the engine tooling makes, and the pair
resolves into a simulated engine the way `headway sim --gpu cpu-1core --model tiny-llama`
builds it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from headway.core.costmodel import SeqWork
from headway.core.engine_factory import EngineSpec, resolve_engine
from headway.resources.catalog import load_catalog

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "engines"))

import headway_engines as he  # noqa: E402


@pytest.mark.parametrize(
    ("catalog_field", "hf_field"),
    [
        ("num_layers", "num_hidden_layers"),
        ("hidden_size", "hidden_size"),
        ("num_attention_heads", "num_attention_heads"),
        ("num_kv_heads", "num_key_value_heads"),
        ("intermediate_size", "intermediate_size"),
        ("vocab_size", "vocab_size"),
        ("max_model_len", "max_position_embeddings"),
        ("tie_word_embeddings", "tie_word_embeddings"),
    ],
    ids=lambda v: str(v),
)
def test_tiny_llama_matches_engine_tooling_shape(catalog_field: str, hf_field: str) -> None:
    model = load_catalog().model("tiny-llama")
    assert getattr(model, catalog_field) == he.MODEL_SHAPE[hf_field]


def test_tiny_llama_head_dim_and_size() -> None:
    model = load_catalog().model("tiny-llama")
    shape = he.MODEL_SHAPE
    assert model.head_dim == shape["hidden_size"] // shape["num_attention_heads"]
    assert 4.0e6 < model.total_params < 5.0e6  # "~4.5 M parameters"


@pytest.mark.parametrize("gpu", ["cpu-1core", "cpu"], ids=["name", "alias"])
def test_cpu_profile_resolves_like_the_calibrated_vllm_replica(gpu: str) -> None:
    spec = EngineSpec(
        model="tiny-llama",
        gpu=gpu,
        precision="bf16",
        block_size=32,
        num_gpu_blocks_override=256,
        max_model_len=2048,
        max_num_seqs=16,
        max_num_batched_tokens=2048,
    )
    engine = resolve_engine(spec, load_catalog())
    assert engine.config.num_gpu_blocks == 256
    assert engine.config.scheduler.max_num_seqs == 16
    cm = engine.cost_model
    decode_s = cm.step_time_s([SeqWork(1, 96)])
    prefill_s = cm.step_time_s([SeqWork(1024, 0)])
    # A CPU core: milliseconds per step, not a GPU's tens of microseconds, and a long
    # prefill costs many decode steps.
    assert 1e-3 < decode_s < 50e-3
    assert prefill_s > 5 * decode_s
