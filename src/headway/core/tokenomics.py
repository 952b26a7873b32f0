"""Tokenomics formulas (REFERENCE.md "Tokenomics formulas"): cost and energy per token,
speculative decoding's expected tokens per step and speed-up, and KV-cache transfer
time for prefill/decode disaggregation.

Pure arithmetic: prices, powers and bandwidths are inputs, never constants here.

* $ per 1M tokens = (GPU $/hour x GPUs) / (tokens/s x 3600) x 1e6; unbounded (None)
  when nothing is produced.
* Energy: board power x time; joules per token = W x GPUs / tokens/s. Its price:
  J / 3.6e6 kWh x $/kWh.
* Speculative decoding with per-token acceptance probability a and draft length k: the
  target verifies k drafted tokens and always adds one of its own, so the expected
  tokens per target step is E = 1 + a + ... + a^k = (1 - a^(k+1)) / (1 - a) (k + 1 at
  a = 1). With c the cost of one draft step relative to one target step, the ideal
  speed-up is E / (k c + 1). vLLM's "acceptance length" (1 + accepted / drafts) is E;
  its "acceptance rate" (accepted / drafted) is not a.
* At batch size B the verify step carries k + 1 tokens per sequence instead of one, so
  once the batch is compute-bound it costs up to k + 1 decode steps and the gain goes;
  `spec_decode_at_batch` prices both with the cost model.
* KV transfer time = prompt tokens x KV bytes per token / link bytes/s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from headway.core.costmodel import CostModel, SeqWork

SECONDS_PER_HOUR = 3600.0
JOULES_PER_KWH = 3.6e6
HOURS_PER_MONTH = 730.0  # 365 x 24 / 12, the usual cloud billing month


def usd_per_1m_tokens(gpu_hourly_usd: float, num_gpus: int, tokens_per_s: float) -> float | None:
    """$ per million tokens of a fleet of `num_gpus` at `gpu_hourly_usd` each producing
    `tokens_per_s`; None when nothing is produced (the cost is unbounded)."""
    if gpu_hourly_usd < 0:
        raise ValueError(f"gpu_hourly_usd: must be >= 0, got {gpu_hourly_usd}")
    if num_gpus < 1:
        raise ValueError(f"num_gpus: must be >= 1, got {num_gpus}")
    if tokens_per_s <= 0:
        return None
    return gpu_hourly_usd * num_gpus / (tokens_per_s * SECONDS_PER_HOUR) * 1e6


def joules_per_token(board_power_w: float, num_gpus: int, tokens_per_s: float) -> float | None:
    """Energy per token at board power (an upper bound: GPUs rarely draw full board
    power, and idle ones still draw some); None when nothing is produced."""
    if board_power_w < 0:
        raise ValueError(f"board_power_w: must be >= 0, got {board_power_w}")
    if tokens_per_s <= 0:
        return None
    return board_power_w * num_gpus / tokens_per_s


def energy_usd_per_1m_tokens(joules: float, usd_per_kwh: float) -> float:
    """The electricity price of 1M tokens that take `joules` each."""
    return joules * 1e6 / JOULES_PER_KWH * usd_per_kwh


def energy_usd_per_gpu_hour(board_power_w: float, usd_per_kwh: float) -> float:
    """One GPU at board power for an hour, in $ (W x 1 h = W / 1000 kWh)."""
    return board_power_w / 1000.0 * usd_per_kwh


def monthly_usd(num_gpus: int, gpu_hourly_usd: float) -> float:
    """A fleet's price per (730-hour) month."""
    return num_gpus * gpu_hourly_usd * HOURS_PER_MONTH


# -- speculative decoding ---------------------------------------------------------------
def _check_draft(acceptance_prob: float, num_draft_tokens: int) -> None:
    if not 0.0 <= acceptance_prob <= 1.0:
        raise ValueError(f"acceptance_prob: must be in [0, 1], got {acceptance_prob}")
    if num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens: must be >= 1, got {num_draft_tokens}")


def spec_decode_expected_tokens(acceptance_prob: float, num_draft_tokens: int) -> float:
    """E = (1 - a^(k+1)) / (1 - a): expected tokens per target step (k + 1 at a = 1)."""
    _check_draft(acceptance_prob, num_draft_tokens)
    a, k = acceptance_prob, num_draft_tokens
    if a == 1.0:
        return float(k + 1)
    return (1.0 - a ** (k + 1)) / (1.0 - a)


def acceptance_prob_from_length(acceptance_length: float, num_draft_tokens: int) -> float:
    """The per-token acceptance probability a whose E equals a measured acceptance length
    (vLLM's mean acceptance length), by bisection: E is increasing in a on [0, 1]."""
    k = num_draft_tokens
    if num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens: must be >= 1, got {num_draft_tokens}")
    if not 1.0 <= acceptance_length <= k + 1:
        raise ValueError(
            f"acceptance_length: must be in [1, {k + 1}] for {k} draft tokens, "
            f"got {acceptance_length}"
        )
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if spec_decode_expected_tokens(mid, k) < acceptance_length:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def spec_decode_speedup(
    expected_tokens: float, num_draft_tokens: int, draft_cost_ratio: float
) -> float:
    """Ideal speed-up E / (k c + 1): the verify step costs one decode step (small
    batches, memory-bound) and each of the k draft steps c of one."""
    if num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens: must be >= 1, got {num_draft_tokens}")
    if draft_cost_ratio < 0:
        raise ValueError(f"draft_cost_ratio: must be >= 0, got {draft_cost_ratio}")
    return expected_tokens / (num_draft_tokens * draft_cost_ratio + 1.0)


@dataclass(frozen=True)
class SpecDecodeAtBatch:
    """Speculative decoding at one batch size, priced with the cost model."""

    num_seqs: int
    decode_step_s: float  # one token per sequence, no speculation
    verify_step_s: float  # k + 1 tokens per sequence
    draft_s: float  # k draft steps at c x decode_step_s each
    speedup: float  # tokens/s with speculation over tokens/s without


def spec_decode_at_batch(
    cost_model: CostModel,
    num_seqs: int,
    context_tokens: int,
    expected_tokens: float,
    num_draft_tokens: int,
    draft_cost_ratio: float,
) -> SpecDecodeAtBatch:
    """Speed-up at `num_seqs` sequences of `context_tokens` context each:
    E x decode_step / (k c decode_step + verify_step). The draft model is assumed to
    scale with the batch like the target (its step costs c of the target's decode step
    at the same batch)."""
    if num_seqs < 1:
        raise ValueError(f"num_seqs: must be >= 1, got {num_seqs}")
    k = num_draft_tokens
    decode = cost_model.step_time_s([SeqWork(1, context_tokens)] * num_seqs)
    verify = cost_model.step_time_s([SeqWork(k + 1, context_tokens)] * num_seqs)
    draft = k * draft_cost_ratio * decode
    speedup = expected_tokens * decode / (draft + verify)
    return SpecDecodeAtBatch(num_seqs, decode, verify, draft, speedup)


def spec_decode_break_even_batch(
    cost_model: CostModel,
    context_tokens: int,
    expected_tokens: float,
    num_draft_tokens: int,
    draft_cost_ratio: float,
    max_num_seqs: int,
) -> int | None:
    """The smallest batch size in [1, max_num_seqs] at which speculation no longer pays
    (speed-up <= 1), or None when it pays up to `max_num_seqs`. The speed-up falls as
    the batch grows (the verify step turns compute-bound), so the first such batch is
    found by bisection."""

    def pays(b: int) -> bool:
        r = spec_decode_at_batch(
            cost_model, b, context_tokens, expected_tokens, num_draft_tokens, draft_cost_ratio
        )
        return r.speedup > 1.0

    if pays(max_num_seqs):
        return None
    if not pays(1):
        return 1
    lo, hi = 1, max_num_seqs  # pays(lo), not pays(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pays(mid):
            lo = mid
        else:
            hi = mid
    return hi


# -- prefill/decode disaggregation ----------------------------------------------------
def kv_transfer_time_s(
    num_prompt_tokens: int, kv_bytes_per_token: float, link_bytes_per_s: float
) -> float:
    """Time to move a prompt's KV cache from a prefill to a decode replica over a link
    of `link_bytes_per_s` (whole-model KV bytes per token: every TP shard moves)."""
    if num_prompt_tokens < 0:
        raise ValueError(f"num_prompt_tokens: must be >= 0, got {num_prompt_tokens}")
    if not link_bytes_per_s > 0:
        raise ValueError(f"link_bytes_per_s: must be > 0, got {link_bytes_per_s}")
    return num_prompt_tokens * kv_bytes_per_token / link_bytes_per_s


def ceil_div(a: float, b: float) -> int:
    """ceil(a / b) for positive b, robust to float noise just above an integer."""
    q = a / b
    r = round(q)
    return int(r) if math.isclose(q, r, rel_tol=1e-9) else math.ceil(q)
