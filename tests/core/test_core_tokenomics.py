"""Tokenomics formulas against hand-computed values (REFERENCE.md)."""

from __future__ import annotations

import pytest

from headway.core import tokenomics as t
from headway.core.catalog import PRECISIONS
from headway.core.costmodel import CostModel, Deployment
from headway.resources.catalog import load_catalog


@pytest.mark.parametrize(
    ("a", "k", "expected"),
    [
        (0.8, 4, 3.3616),  # (1 - 0.8^5) / 0.2 = 0.67232 / 0.2
        (0.5, 3, 1.875),  # (1 - 1/16) / 0.5
        (0.0, 5, 1.0),  # nothing accepted: the target's own token
        (1.0, 4, 5.0),  # everything accepted: k + 1
        (0.6, 1, 1.6),  # 1 + a
    ],
    ids=["a0.8-k4", "a0.5-k3", "a0", "a1", "k1"],
)
def test_expected_tokens_per_step(a: float, k: int, expected: float) -> None:
    assert t.spec_decode_expected_tokens(a, k) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("e", "k", "c", "expected"),
    [
        (3.3616, 4, 0.1, 3.3616 / 1.4),
        (1.875, 3, 0.0, 1.875),
        (1.0, 5, 0.05, 1.0 / 1.25),  # nothing accepted: a slow-down
    ],
    ids=["a0.8-k4-c0.1", "free-draft", "no-acceptance"],
)
def test_ideal_speedup(e: float, k: int, c: float, expected: float) -> None:
    assert t.spec_decode_speedup(e, k, c) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("a", [0.0, 0.3, 0.8, 0.99], ids=["0", "0.3", "0.8", "0.99"])
def test_acceptance_prob_inverts_expected_tokens(a: float) -> None:
    e = t.spec_decode_expected_tokens(a, 4)
    assert t.acceptance_prob_from_length(e, 4) == pytest.approx(a, abs=1e-9)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: t.spec_decode_expected_tokens(1.2, 4), "acceptance_prob"),
        (lambda: t.spec_decode_expected_tokens(0.5, 0), "num_draft_tokens"),
        (lambda: t.acceptance_prob_from_length(6.0, 4), "acceptance_length"),
        (lambda: t.spec_decode_speedup(2.0, 4, -1.0), "draft_cost_ratio"),
        (lambda: t.kv_transfer_time_s(10, 1.0, 0.0), "link_bytes_per_s"),
        (lambda: t.usd_per_1m_tokens(-1.0, 1, 1.0), "gpu_hourly_usd"),
    ],
    ids=["a>1", "k0", "length>k+1", "c<0", "link0", "price<0"],
)
def test_bad_inputs_name_the_field(call: object, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        call()  # type: ignore[operator]


def test_cost_energy_and_transfer_hand_computed() -> None:
    # $2/h x 8 GPUs over 1000 tokens/s: 16 / 3.6e6 $ per token -> $4.444 per 1M.
    assert t.usd_per_1m_tokens(2.0, 8, 1000.0) == pytest.approx(16 / 3.6)
    assert t.usd_per_1m_tokens(2.0, 8, 0.0) is None
    # 2 x 700 W over 1400 tokens/s: 1 J per token; 1e6 J = 0.2778 kWh at $0.10.
    assert t.joules_per_token(700.0, 2, 1400.0) == pytest.approx(1.0)
    assert t.energy_usd_per_1m_tokens(1.0, 0.10) == pytest.approx(0.1 / 3.6)
    assert t.energy_usd_per_gpu_hour(700.0, 0.10) == pytest.approx(0.07)
    assert t.monthly_usd(4, 2.5) == pytest.approx(7300.0)
    # Llama-3.1-8B BF16 KV: 128 KiB per token; 1000 tokens over 50 GB/s = 2.62144 ms.
    assert t.kv_transfer_time_s(1000, 131072.0, 50e9) == pytest.approx(2.62144e-3)


def _cost_model() -> CostModel:
    catalog = load_catalog([])
    return CostModel(
        Deployment(catalog.model("llama-3.1-8b"), catalog.gpu("h100"), PRECISIONS["bf16"])
    )


def test_spec_decode_pays_at_batch_one_and_stops_paying_when_compute_bound() -> None:
    # Named case: Llama-3.1-8B BF16 on one H100, 128-token contexts, a = 0.6, k = 4,
    # draft at 10% of the target: memory-bound at batch 1, compute-bound at hundreds.
    cm = _cost_model()
    e = t.spec_decode_expected_tokens(0.6, 4)
    one = t.spec_decode_at_batch(cm, 1, 128, e, 4, 0.1)
    # Batch 1 is memory-bound: verifying 5 tokens costs about one decode step.
    assert one.verify_step_s < 1.1 * one.decode_step_s
    assert one.speedup == pytest.approx(
        e * one.decode_step_s / (0.4 * one.decode_step_s + one.verify_step_s)
    )
    assert one.speedup > 1.5
    b = t.spec_decode_break_even_batch(cm, 128, e, 4, 0.1, 4096)
    assert b is not None and 1 < b < 4096
    assert t.spec_decode_at_batch(cm, b, 128, e, 4, 0.1).speedup <= 1.0
    assert t.spec_decode_at_batch(cm, b - 1, 128, e, 4, 0.1).speedup > 1.0
    # Nothing accepted never pays, even at batch 1.
    assert t.spec_decode_break_even_batch(cm, 128, 1.0, 4, 0.1, 64) == 1


def test_spec_decode_keeps_paying_on_long_contexts() -> None:
    # Named case: at 1024-token contexts the KV reads, shared by the k + 1 verified
    # tokens, dominate the step, so speculation pays up to 4096 sequences.
    cm = _cost_model()
    e = t.spec_decode_expected_tokens(0.8, 4)
    assert t.spec_decode_break_even_batch(cm, 1024, e, 4, 0.05, 4096) is None


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [(10.0, 5.0, 2), (10.0, 4.0, 3), (0.3, 0.1, 3), (1.0, 3.0, 1)],
    ids=["exact", "round-up", "float-noise", "below-one"],
)
def test_ceil_div(a: float, b: float, expected: int) -> None:
    # 0.3 / 0.1 is 2.9999999999999996 in floats: still 3, not 4 (or 2).
    assert t.ceil_div(a, b) == expected
