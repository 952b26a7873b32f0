"""Request arrival processes (pure; the caller passes the random generator in).

vLLM's `vllm bench serve` process: inter-arrival gaps are gamma distributed with shape =
burstiness and scale = 1 / (rate x burstiness), so the mean gap is 1 / rate for any
burstiness and the coefficient of variation of the gaps is 1 / sqrt(burstiness):
burstiness 1 is a Poisson process, < 1 is burstier, > 1 is more regular, and infinity
gives constant gaps. rate = inf sends everything at once.

Like vLLM (without ramp-up), the cumulative offsets are rescaled so that the last one is
exactly num / rate: the run's offered load is then the requested rate for every seed
instead of drifting by a few percent. The first arrival is one gap after the start, not
at 0 (vLLM).
"""

from __future__ import annotations

import math

import numpy as np


def arrival_offsets_s(
    num: int,
    request_rate: float,
    burstiness: float,
    rng: np.random.Generator,
    *,
    normalize: bool = True,
) -> np.ndarray:
    """Send offsets in seconds from the start of the run (non-decreasing, length `num`).

    `normalize` rescales the offsets so the last is num / request_rate (vLLM's default).
    """
    if num < 0:
        raise ValueError(f"num: must be >= 0, got {num}")
    if not request_rate > 0:
        raise ValueError(f"request_rate: must be > 0, got {request_rate}")
    if not burstiness > 0:
        raise ValueError(f"burstiness: must be > 0, got {burstiness}")
    if num == 0 or math.isinf(request_rate):
        return np.zeros(num, dtype=np.float64)
    if math.isinf(burstiness):
        gaps = np.full(num, 1.0 / request_rate, dtype=np.float64)
    else:
        gaps = rng.gamma(shape=burstiness, scale=1.0 / (request_rate * burstiness), size=num)
    offsets = np.cumsum(gaps)
    if normalize and offsets[-1] > 0:
        offsets *= (num / request_rate) / offsets[-1]
    return offsets
