"""headway.core.throughput: the saturated (offline) throughput estimate."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway.core.catalog import Catalog, precision
from headway.core.costmodel import CostModel, Deployment, Efficiency, SeqWork, StepCost
from headway.core.throughput import (
    KvReservation,
    ThroughputBound,
    ThroughputEstimate,
    ThroughputInputError,
    saturated_throughput,
    step_work,
)
from headway.resources.catalog import load_catalog


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog()


def _cost_model(
    catalog: Catalog,
    model: str,
    gpu: str,
    prec: str = "fp8",
    tp: int = 1,
    efficiency: Efficiency | None = None,
) -> CostModel:
    deployment = Deployment(catalog.model(model), catalog.gpu(gpu), precision(prec), tp)
    return CostModel(deployment, efficiency)


def _estimate(
    catalog: Catalog, model: str, gpu: str, prec: str, tp: int, isl: int, osl: int, **kw: object
) -> ThroughputEstimate:
    return saturated_throughput(_cost_model(catalog, model, gpu, prec, tp), isl, osl, **kw)  # type: ignore[arg-type]


# -- hardware and precision ordering --------------------------------------------
@pytest.mark.parametrize(
    ("model", "prec", "slower_gpu", "faster_gpu", "isl", "osl"),
    [
        ("llama-3.1-8b", "fp8", "h100", "h200", 1000, 1000),
        ("llama-3.1-8b", "fp8", "h100", "h200", 128, 2048),
        ("llama-3.1-8b", "fp8", "h200", "b200", 2048, 128),
        ("llama-3.3-70b", "fp8", "h200", "b200", 1000, 1000),
        ("llama-3.3-70b", "fp4", "b200", "gb200", 5000, 500),
    ],
    ids=[
        "8b-h100<h200-1k",
        "8b-h100<h200-decode",
        "8b-h200<b200-prefill",
        "70b-h200<b200",
        "70b-b200<gb200",
    ],
)
def test_better_gpu_gives_more_throughput(
    catalog: Catalog, model: str, prec: str, slower_gpu: str, faster_gpu: str, isl: int, osl: int
) -> None:
    slow = _estimate(catalog, model, slower_gpu, prec, 1, isl, osl)
    fast = _estimate(catalog, model, faster_gpu, prec, 1, isl, osl)
    assert fast.output_tokens_per_s_per_gpu > slow.output_tokens_per_s_per_gpu


@pytest.mark.parametrize(
    ("model", "gpu", "wider", "narrower", "isl", "osl"),
    [
        ("llama-3.1-8b", "h100", "bf16", "fp8", 1000, 1000),
        ("llama-3.1-8b", "h100", "bf16", "fp8", 128, 4096),
        ("llama-3.1-8b", "h200", "fp8-kvbf16", "fp8", 128, 2048),
        ("llama-3.3-70b", "b200", "fp8", "fp4", 1000, 1000),
        ("llama-3.3-70b", "b200", "bf16", "fp8", 2048, 128),
    ],
    ids=[
        "8b-h100-bf16<fp8",
        "8b-h100-decode-bf16<fp8",
        "8b-h200-kvbf16<kvfp8",
        "70b-b200-fp8<fp4",
        "70b-b200-bf16<fp8",
    ],
)
def test_lower_precision_gives_more_throughput(
    catalog: Catalog, model: str, gpu: str, wider: str, narrower: str, isl: int, osl: int
) -> None:
    wide = _estimate(catalog, model, gpu, wider, 1, isl, osl)
    narrow = _estimate(catalog, model, gpu, narrower, 1, isl, osl)
    assert narrow.output_tokens_per_s_per_gpu > wide.output_tokens_per_s_per_gpu


# -- which bound binds -----------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "gpu", "prec", "isl", "osl", "limits", "bound"),
    [
        ("llama-3.3-70b", "h200", "fp8", 20000, 2000, {}, ThroughputBound.KV_CAPACITY),
        ("llama-3.1-8b", "h100", "bf16", 1000, 1000, {}, ThroughputBound.KV_CAPACITY),
        (
            "llama-3.1-8b",
            "b200",
            "fp8",
            128,
            128,
            {"max_num_seqs": 64},
            ThroughputBound.MAX_NUM_SEQS,
        ),
        ("llama-3.1-8b", "b200", "fp8", 128, 128, {}, ThroughputBound.MAX_NUM_SEQS),
        (
            "llama-3.1-8b",
            "b200",
            "fp8",
            2048,
            128,
            {"max_num_batched_tokens": 2048},
            ThroughputBound.MAX_NUM_BATCHED_TOKENS,
        ),
    ],
    ids=[
        "70b-long-context-kv",
        "8b-bf16-kv",
        "tiny-max-num-seqs",
        "short-requests-2048-seqs",
        "prefill-heavy-budget",
    ],
)
def test_binding_limit_is_identified(
    catalog: Catalog,
    model: str,
    gpu: str,
    prec: str,
    isl: int,
    osl: int,
    limits: dict[str, int],
    bound: ThroughputBound,
) -> None:
    est = _estimate(catalog, model, gpu, prec, 1, isl, osl, **limits)
    assert est.bound == bound
    by_bound = {
        ThroughputBound.KV_CAPACITY: est.max_num_seqs_by_kv,
        ThroughputBound.MAX_NUM_SEQS: est.max_num_seqs,
        ThroughputBound.MAX_NUM_BATCHED_TOKENS: est.max_num_seqs_by_token_budget,
    }
    assert est.num_seqs == by_bound[bound]
    assert est.num_seqs == min(by_bound.values())


@pytest.mark.parametrize(
    ("isl", "osl"),
    [(1000, 1000), (128, 4096), (20000, 2000)],
    ids=["1k-1k", "decode-heavy", "long-context"],
)
def test_full_reservation_fits_fewer_requests(catalog: Catalog, isl: int, osl: int) -> None:
    cm = _cost_model(catalog, "llama-3.3-70b", "h200")
    avg = saturated_throughput(cm, isl, osl, kv_reservation=KvReservation.AVERAGE)
    full = saturated_throughput(cm, isl, osl, kv_reservation=KvReservation.FULL)
    assert full.kv_blocks_per_seq > avg.kv_blocks_per_seq
    assert full.max_num_seqs_by_kv < avg.max_num_seqs_by_kv
    assert full.output_tokens_per_s <= avg.output_tokens_per_s


class _SuperlinearCostModel(CostModel):
    """Step time grows with the square of the batch: a real interior optimum."""

    def step_cost(self, work: Sequence[SeqWork]) -> StepCost:
        n = sum(w.num_new_tokens for w in work)
        duration = 1e-3 + 1e-3 * (len(work) / 100.0) ** 2
        return StepCost(duration, duration, 0.0, 0.0, 0.0, n)


def test_interior_optimum_is_reported_as_throughput_peak(catalog: Catalog) -> None:
    deployment = Deployment(catalog.model("llama-3.1-8b"), catalog.gpu("h200"), precision("fp8"))
    est = saturated_throughput(_SuperlinearCostModel(deployment), 128, 128, max_num_seqs=2048)
    # rate(B) = B / (1e-3 + 1e-3 (B/100)^2) peaks at B = 100.
    assert est.bound == ThroughputBound.THROUGHPUT_PEAK
    assert 90 <= est.num_seqs <= 110


# -- monotonic sanity ------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "values"),
    [
        ("max_num_seqs", [16, 64, 256, 1024, 4096]),
        ("max_num_batched_tokens", [512, 2048, 8192, 32768]),
    ],
    ids=["more-seqs", "bigger-budget"],
)
def test_looser_limits_never_lower_throughput(
    catalog: Catalog, field: str, values: list[int]
) -> None:
    cm = _cost_model(catalog, "llama-3.1-8b", "h200")
    rates = [saturated_throughput(cm, 1000, 500, **{field: v}).output_tokens_per_s for v in values]  # type: ignore[arg-type]
    assert rates == sorted(rates)


@pytest.mark.parametrize("osl", [128, 1000, 4000], ids=["osl128", "osl1000", "osl4000"])
def test_longer_prompts_lower_output_throughput(catalog: Catalog, osl: int) -> None:
    cm = _cost_model(catalog, "llama-3.1-8b", "h100")
    rates = [
        saturated_throughput(cm, isl, osl).output_tokens_per_s for isl in (128, 1000, 4000, 16000)
    ]
    assert rates == sorted(rates, reverse=True)


@pytest.mark.parametrize(
    ("field", "low", "high"),
    [
        ("memory_bandwidth_fraction", 0.5, 0.9),
        ("max_mfu", 0.3, 0.7),
        ("step_overhead_s", 5e-3, 1e-4),
    ],
    ids=["bandwidth", "mfu", "overhead"],
)
def test_better_efficiency_never_lowers_throughput(
    catalog: Catalog, field: str, low: float, high: float
) -> None:
    def rate(value: float) -> float:
        eff = dataclasses.replace(Efficiency(), **{field: value})
        cm = _cost_model(catalog, "llama-3.3-70b", "h200", efficiency=eff)
        return saturated_throughput(cm, 1000, 1000).output_tokens_per_s

    assert rate(high) > rate(low)


def test_tpot_grows_with_the_batch(catalog: Catalog) -> None:
    cm = _cost_model(catalog, "llama-3.1-8b", "h100")
    small = saturated_throughput(cm, 1000, 1000, max_num_seqs=8)
    large = saturated_throughput(cm, 1000, 1000, max_num_seqs=512)
    assert large.tpot_s > small.tpot_s
    assert large.output_tokens_per_s > small.output_tokens_per_s


# -- tensor parallelism ----------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "gpu", "prec", "tp"),
    [
        ("llama-3.3-70b", "h100", "fp8", 2),
        ("llama-3.3-70b", "h100", "bf16", 4),
        ("llama-3.1-8b", "h200", "fp8", 2),
    ],
    ids=["70b-fp8-tp2", "70b-bf16-tp4", "8b-fp8-tp2"],
)
def test_tp_per_gpu_figures(catalog: Catalog, model: str, gpu: str, prec: str, tp: int) -> None:
    est = _estimate(catalog, model, gpu, prec, tp, 1000, 1000)
    assert est.num_gpus == tp
    assert est.output_tokens_per_s_per_gpu == pytest.approx(est.output_tokens_per_s / tp)
    assert est.total_tokens_per_s_per_gpu == pytest.approx(est.total_tokens_per_s / tp)
    assert est.total_tokens_per_s == pytest.approx(est.output_tokens_per_s * 2000 / 1000)
    assert est.comm_s > 0


def test_tp2_holds_more_kv_per_gpu_than_tp1(catalog: Catalog) -> None:
    tp1 = _estimate(catalog, "llama-3.1-8b", "h100", "fp8", 1, 1000, 1000)
    tp2 = _estimate(catalog, "llama-3.1-8b", "h100", "fp8", 2, 1000, 1000)
    # Half the weights and half the KV heads per GPU: more than twice the tokens.
    assert tp2.kv_capacity_tokens > 2 * tp1.kv_capacity_tokens
    assert tp2.max_num_seqs_by_kv > tp1.max_num_seqs_by_kv


# -- bad input -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("model", "prec", "tp", "isl", "osl", "kw", "field"),
    [
        ("llama-3.1-8b", "fp8", 1, 0, 100, {}, "isl"),
        ("llama-3.1-8b", "fp8", 1, 100, 0, {}, "osl"),
        ("llama-3.1-8b", "fp8", 1, 100, 100, {"max_num_seqs": 0}, "max_num_seqs"),
        (
            "llama-3.1-8b",
            "fp8",
            1,
            100,
            100,
            {"max_num_batched_tokens": 0},
            "max_num_batched_tokens",
        ),
        ("llama-3.1-8b", "fp8", 1, 100, 100, {"block_size": 0}, "block_size"),
        ("llama-3.1-405b", "bf16", 1, 100, 100, {}, "tp"),
        ("llama-3.3-70b", "bf16", 1, 100, 100, {}, "tp"),
        ("llama-3.1-8b", "fp8", 1, 131000, 1000, {}, "isl"),
    ],
    ids=["isl0", "osl0", "seqs0", "budget0", "block0", "405b-tp1", "70b-bf16-tp1", "too-long"],
)
def test_bad_input_names_the_field(
    catalog: Catalog,
    model: str,
    prec: str,
    tp: int,
    isl: int,
    osl: int,
    kw: dict[str, int],
    field: str,
) -> None:
    cm = _cost_model(catalog, model, "h100", prec, tp)
    with pytest.raises(ThroughputInputError) as info:
        saturated_throughput(cm, isl, osl, **kw)  # type: ignore[arg-type]
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


# -- the mean step ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("num_seqs", "isl", "osl"),
    [(100, 1000, 1000), (300, 2048, 128), (40, 20000, 2000), (64, 128, 1)],
    ids=["1k-1k", "prefill-heavy", "long", "osl1"],
)
def test_step_work_carries_the_mean_load(num_seqs: int, isl: int, osl: int) -> None:
    work = step_work(num_seqs, isl, osl)
    decode = [w for w in work if w.num_new_tokens == 1 and w.num_context_tokens > isl - 1]
    prefill_tokens = sum(w.num_new_tokens for w in work if w not in decode)
    assert len(decode) == round(num_seqs * (osl - 1) / osl)
    assert prefill_tokens == round(num_seqs * isl / osl)
    # Mean attention work of prefill: num_seqs/osl prompts of isl^2/2 query-key pairs.
    pairs = sum(
        w.num_new_tokens * w.num_context_tokens + w.num_new_tokens**2 / 2
        for w in work
        if w not in decode
    )
    assert pairs == pytest.approx(num_seqs / osl * isl * isl / 2, rel=0.02)


@settings(max_examples=40, deadline=None)
@given(
    isl=st.integers(1, 30000),
    osl=st.integers(1, 8000),
    max_num_seqs=st.integers(1, 4096),
    max_num_batched_tokens=st.integers(1, 65536),
)
def test_estimate_invariants(
    isl: int, osl: int, max_num_seqs: int, max_num_batched_tokens: int
) -> None:
    cm = _cost_model(load_catalog(), "llama-3.1-8b", "h200")
    est = saturated_throughput(
        cm, isl, osl, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens
    )
    assert (
        1
        <= est.num_seqs
        <= min(est.max_num_seqs_by_kv, max_num_seqs, est.max_num_seqs_by_token_budget)
    )
    assert est.num_seqs * est.kv_blocks_per_seq <= est.kv_capacity_blocks
    assert est.output_tokens_per_s > 0
    assert est.step_time_s == est.tpot_s > 0
    assert est.output_tokens_per_s == pytest.approx(est.num_seqs / est.step_time_s)
    assert est.requests_per_s == pytest.approx(est.output_tokens_per_s / osl)
