"""Model arithmetic (parameters, KV bytes) and the roofline step-time model."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway.core.catalog import Dtype, Precision
from headway.core.costmodel import CostModel, Deployment, Efficiency, SeqWork
from headway.resources.catalog import builtin_catalog

KIB = 1024


CAT = builtin_catalog()


def cost_model(
    model: str = "llama-3.1-8b",
    gpu: str = "h100",
    precision: Precision | None = None,
    tp: int = 1,
) -> CostModel:
    return CostModel(Deployment(CAT.model(model), CAT.gpu(gpu), precision or Precision(), tp))


def prefill(n: int, context: int = 0) -> list[SeqWork]:
    return [SeqWork(n, context)]


def decode(batch: int, context: int) -> list[SeqWork]:
    return [SeqWork(1, context)] * batch


# -- model arithmetic ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "dtype", "expected_bytes"),
    [
        ("llama-3.1-8b", Dtype.BF16, 128 * KIB),
        ("llama-3.1-8b", Dtype.FP8, 64 * KIB),
        ("llama-3.1-70b", Dtype.BF16, 320 * KIB),
        ("llama-3.1-405b", Dtype.BF16, 2 * 126 * 8 * 128 * 2),
        ("mixtral-8x7b", Dtype.BF16, 128 * KIB),
        ("deepseek-v3", Dtype.BF16, 61 * (512 + 64) * 2),
        ("deepseek-v3", Dtype.FP8, 61 * (512 + 64)),
    ],
    ids=["8b-bf16", "8b-fp8", "70b-bf16", "405b-bf16", "mixtral-bf16", "dsv3-mla", "dsv3-fp8"],
)
def test_kv_bytes_per_token(model: str, dtype: Dtype, expected_bytes: float) -> None:
    assert CAT.model(model).kv_bytes_per_token(dtype) == expected_bytes


def test_deepseek_v3_kv_is_68_6_kib() -> None:
    assert CAT.model("deepseek-v3").kv_bytes_per_token(Dtype.BF16) / KIB == pytest.approx(
        68.6, abs=0.05
    )


@pytest.mark.parametrize(
    ("model", "total", "active"),
    [
        ("llama-3.1-8b", 8.03e9, None),
        ("llama-3.1-70b", 70.6e9, None),
        ("llama-3.1-405b", 405e9, None),
        ("qwen3-32b", 32.8e9, None),
        ("mixtral-8x7b", 46.7e9, 12.9e9),
        ("deepseek-v3", 671e9, 37e9),
    ],
    ids=["8b", "70b", "405b", "qwen3-32b", "mixtral", "deepseek-v3"],
)
def test_parameter_counts_match_published(model: str, total: float, active: float | None) -> None:
    spec = CAT.model(model)
    assert spec.total_params == pytest.approx(total, rel=0.03)
    if active is not None:
        assert spec.active_params_per_token == pytest.approx(active, rel=0.03)
    else:
        # Dense: every parameter but the input embedding works on every token.
        assert spec.active_params_per_token == pytest.approx(
            spec.total_params - spec.vocab_size * spec.hidden_size
        )


@pytest.mark.parametrize(
    ("model", "tp", "divisor"),
    [
        ("llama-3.1-8b", 1, 1),
        ("llama-3.1-8b", 2, 2),
        ("llama-3.1-8b", 8, 8),
        ("llama-3.1-8b", 16, 8),  # past the 8 KV heads, heads are replicated
        ("deepseek-v3", 8, 1),  # the MLA latent is not sharded
    ],
    ids=["tp1", "tp2", "tp8", "tp16-replicated", "mla-tp8"],
)
def test_kv_sharding_across_tp(model: str, tp: int, divisor: int) -> None:
    spec = CAT.model(model)
    full = spec.kv_bytes_per_token(Dtype.BF16)
    assert spec.kv_bytes_per_token_per_gpu(Dtype.BF16, tp) == full / divisor
    d = Deployment(spec, CAT.gpu("h200"), tp=tp)
    assert d.kv_bytes_per_token_per_gpu == full / divisor
    assert d.weight_bytes_per_gpu == pytest.approx(d.weight_bytes_total / tp)


@pytest.mark.parametrize(
    ("model", "expert_count_touched_at_1"),
    [("mixtral-8x7b", 2), ("deepseek-v3", 8)],
    ids=["mixtral", "deepseek-v3"],
)
def test_moe_weights_touched_grow_with_batch(model: str, expert_count_touched_at_1: int) -> None:
    spec = CAT.model(model)
    sizes = [1, 2, 4, 16, 64, 256, 4096]
    touched = [spec.weight_params_touched(n) for n in sizes]
    assert touched == sorted(touched)
    assert touched[0] < touched[-1]
    # One token reads exactly its k experts per MoE layer: the active parameters.
    assert touched[0] == pytest.approx(spec.active_params_per_token)
    # A huge batch reads (almost) every expert.
    assert touched[-1] == pytest.approx(spec.total_params - spec.vocab_size * spec.hidden_size)
    assert spec.moe is not None and spec.moe.num_experts_per_token == expert_count_touched_at_1


def test_dense_weights_touched_do_not_depend_on_batch() -> None:
    spec = CAT.model("llama-3.1-8b")
    assert spec.weight_params_touched(1) == spec.weight_params_touched(4096)


def test_tied_embeddings_still_read_the_lm_head() -> None:
    untied = CAT.model("llama-3.1-8b")
    tied = replace(untied, tie_word_embeddings=True)
    embed = untied.vocab_size * untied.hidden_size
    assert tied.total_params == untied.total_params - embed
    # The LM head is read every step whether or not it shares storage with the embedding.
    assert tied.weight_params_touched(1) == untied.weight_params_touched(1)


# -- step time -------------------------------------------------------------------------


def test_empty_step_costs_nothing() -> None:
    c = cost_model().step_cost([])
    assert (c.duration_s, c.num_tokens) == (0.0, 0)


@pytest.mark.parametrize(
    ("model", "gpu"),
    [("llama-3.1-8b", "h100"), ("llama-3.1-70b", "b200"), ("mixtral-8x7b", "h200")],
    ids=["8b-h100", "70b-b200", "mixtral-h200"],
)
def test_decode_is_memory_bound_and_prefill_compute_bound(model: str, gpu: str) -> None:
    cm = cost_model(model, gpu)
    d = cm.step_cost(decode(1, 1024))
    assert not d.is_compute_bound
    assert d.memory_s > d.compute_s
    p = cm.step_cost(prefill(8192))
    assert p.is_compute_bound
    assert p.compute_s > p.memory_s
    assert p.duration_s > d.duration_s


@pytest.mark.parametrize(
    ("smaller", "larger"),
    [
        (prefill(128), prefill(1024)),
        (prefill(1024), prefill(8192)),
        (prefill(512, 0), prefill(512, 4096)),
        (decode(1, 100), decode(1, 10_000)),
        (decode(1, 1000), decode(64, 1000)),
        (decode(64, 1000), decode(256, 1000)),
        (decode(32, 1000), [*decode(32, 1000), SeqWork(512, 0)]),
    ],
    ids=[
        "prefill-128-1024",
        "prefill-1k-8k",
        "prefill-with-context",
        "decode-longer-context",
        "decode-batch-1-64",
        "decode-batch-64-256",
        "decode-plus-prefill-chunk",
    ],
)
def test_step_time_grows_with_work(smaller: list[SeqWork], larger: list[SeqWork]) -> None:
    cm = cost_model()
    assert cm.step_time_s(smaller) < cm.step_time_s(larger)


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(1, 8192),
    c=st.integers(0, 100_000),
    dn=st.integers(0, 4096),
    dc=st.integers(0, 100_000),
    model=st.sampled_from(["llama-3.1-8b", "mixtral-8x7b", "deepseek-v3"]),
)
def test_single_sequence_step_time_monotonic(n: int, c: int, dn: int, dc: int, model: str) -> None:
    cm = cost_model(model, "b200", tp=8 if model == "deepseek-v3" else 1)
    base = cm.step_cost(prefill(n, c))
    more = cm.step_cost(prefill(n + dn, c + dc))
    assert more.duration_s >= base.duration_s
    assert base.duration_s >= cm.efficiency.step_overhead_s
    assert base.num_tokens == n


@settings(max_examples=100, deadline=None)
@given(
    contexts=st.lists(st.integers(0, 50_000), min_size=1, max_size=64),
    extra=st.integers(1, 50_000),
    i=st.integers(0, 63),
)
def test_longer_context_never_makes_a_step_cheaper(contexts: list[int], extra: int, i: int) -> None:
    cm = cost_model()
    work = [SeqWork(1, c) for c in contexts]
    i %= len(work)
    longer = [*work[:i], SeqWork(1, contexts[i] + extra), *work[i + 1 :]]
    assert cm.step_time_s(longer) >= cm.step_time_s(work)


@pytest.mark.parametrize(
    "work",
    [prefill(4096), decode(64, 2048), [*decode(16, 1000), SeqWork(1024, 0)]],
    ids=["prefill", "decode", "mixed"],
)
def test_tensor_parallel_adds_comm_and_shards_work(work: list[SeqWork]) -> None:
    tp1 = cost_model("llama-3.1-70b", "h200", tp=1).step_cost(work)
    tp2 = cost_model("llama-3.1-70b", "h200", tp=2).step_cost(work)
    assert tp1.comm_s == 0.0
    assert tp2.comm_s > 0.0
    assert tp2.compute_s == pytest.approx(tp1.compute_s / 2)
    assert tp2.memory_s == pytest.approx(tp1.memory_s / 2)


def test_comm_grows_with_tp_and_tokens() -> None:
    work = prefill(2048)
    comm = [cost_model("llama-3.1-70b", "h200", tp=tp).step_cost(work).comm_s for tp in (2, 4, 8)]
    assert comm == sorted(comm)
    cm = cost_model("llama-3.1-70b", "h200", tp=4)
    assert cm.step_cost(prefill(128)).comm_s < cm.step_cost(prefill(4096)).comm_s


@pytest.mark.parametrize(
    ("gpu", "model"),
    [("h100", "llama-3.1-8b"), ("h200", "llama-3.1-8b"), ("b200", "qwen3-32b")],
    ids=["h100-8b", "h200-8b", "b200-32b"],
)
def test_fp8_prefill_faster_than_bf16(gpu: str, model: str) -> None:
    bf16 = cost_model(model, gpu, Precision(Dtype.BF16, Dtype.BF16))
    fp8 = cost_model(model, gpu, Precision(Dtype.FP8, Dtype.FP8))
    assert fp8.step_time_s(prefill(8192)) < bf16.step_time_s(prefill(8192))
    # Decode reads half the weight bytes too.
    assert fp8.step_time_s(decode(8, 2048)) < bf16.step_time_s(decode(8, 2048))


def test_moe_decode_memory_grows_with_batch_until_all_experts_are_read() -> None:
    cm = cost_model("mixtral-8x7b", "h200")
    mem = [cm.step_cost(decode(b, 0)).memory_s for b in (1, 2, 4, 8, 64)]
    assert mem == sorted(mem)
    assert mem[0] < mem[2]


# -- capacity --------------------------------------------------------------------------


def test_kv_capacity_formula() -> None:
    cm = cost_model("llama-3.1-8b", "h100")
    d, e = cm.deployment, cm.efficiency
    budget = d.gpu.hbm_bytes * (e.gpu_memory_utilization - e.activation_reserve_fraction)
    expected = int((budget - d.weight_bytes_per_gpu) // (128 * KIB))
    assert cm.kv_capacity_tokens() == expected
    assert cm.kv_capacity_blocks(16) == expected // 16


@pytest.mark.parametrize(
    ("small_weights", "big_weights"),
    [
        (("llama-3.1-8b", "h100", Precision(Dtype.FP8, Dtype.BF16), 1), ("llama-3.1-8b", "h100", Precision(), 1)),
        (("llama-3.1-8b", "h200", Precision(Dtype.INT4, Dtype.BF16), 1), ("llama-3.1-8b", "h200", Precision(Dtype.FP8, Dtype.BF16), 1)),
        (("llama-3.1-70b", "h200", Precision(), 4), ("llama-3.1-70b", "h200", Precision(), 2)),
    ],
    ids=["fp8-vs-bf16", "int4-vs-fp8", "tp4-vs-tp2-per-gpu-weights"],
)  # fmt: skip
def test_kv_capacity_decreases_with_bigger_weights(
    small_weights: tuple, big_weights: tuple
) -> None:
    small = cost_model(*small_weights)
    big = cost_model(*big_weights)
    assert small.deployment.weight_bytes_per_gpu < big.deployment.weight_bytes_per_gpu
    assert small.kv_capacity_tokens() > big.kv_capacity_tokens() > 0


def test_kv_capacity_same_kv_shape_more_weights() -> None:
    base = CAT.model("llama-3.1-8b")
    wider = replace(base, name="wider", intermediate_size=base.intermediate_size * 2)
    gpu = CAT.gpu("h200")
    a = CostModel(Deployment(base, gpu)).kv_capacity_tokens()
    b = CostModel(Deployment(wider, gpu)).kv_capacity_tokens()
    assert a > b > 0


@pytest.mark.parametrize(
    ("model", "gpu"),
    [("llama-3.1-70b", "h100"), ("llama-3.1-405b", "h200"), ("deepseek-v3", "b200")],
    ids=["70b-on-h100", "405b-on-h200", "dsv3-on-b200"],
)
def test_model_that_does_not_fit_has_no_kv_capacity(model: str, gpu: str) -> None:
    cm = cost_model(model, gpu)
    assert cm.kv_capacity_tokens() == 0
    assert cm.kv_capacity_blocks(16) == 0


# -- small pieces ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_tokens", "expected"),
    [(0, 0.6), (128, 0.3), (1, 0.6 / 129), (1_000_000, pytest.approx(0.6, rel=1e-3))],
    ids=["zero", "half-saturation", "one", "large"],
)
def test_mfu_curve(num_tokens: int, expected: float) -> None:
    assert Efficiency().mfu(num_tokens) == expected


def test_deployment_rejects_bad_tp() -> None:
    with pytest.raises(ValueError, match="tp"):
        Deployment(CAT.model("llama-3.1-8b"), CAT.gpu("h100"), tp=0)


@pytest.mark.parametrize(
    ("weights", "gpu", "expected_compute"),
    [
        (Dtype.BF16, "h100", Dtype.BF16),
        (Dtype.FP8, "h100", Dtype.FP8),
        (Dtype.INT4, "b200", Dtype.BF16),
        (Dtype.FP4, "b200", Dtype.FP4),
    ],
    ids=["bf16", "fp8", "int4-weight-only", "fp4"],
)
def test_compute_dtype(weights: Dtype, gpu: str, expected_compute: Dtype) -> None:
    d = Deployment(CAT.model("llama-3.1-8b"), CAT.gpu(gpu), Precision(weights, Dtype.BF16))
    assert d.compute_dtype == expected_compute


@pytest.mark.parametrize(
    ("gpu", "dtype", "expected_tflops"),
    [("h100", Dtype.FP4, 989), ("h100", Dtype.INT4, 989), ("b200", Dtype.INT4, 9000)],
    ids=["h100-fp4-falls-back", "h100-int4", "b200-int4-uses-fp4"],
)
def test_peak_flops_fallback(gpu: str, dtype: Dtype, expected_tflops: float) -> None:
    assert CAT.gpu(gpu).peak_flops_per_s(dtype) == expected_tflops * 1e12
