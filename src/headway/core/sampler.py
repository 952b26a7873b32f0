"""Deterministic stand-in for a model's sampler.

The simulated model "generates" tokens drawn from a vocabulary subset by a hash of
(seed, prompt, position), so the same prompt gives the same answer on every replica
and every run. Unless the request sets `ignore_eos`, the answer ends with an
end-of-sequence token after a natural length drawn (also deterministically) from an
exponential distribution, as a chat model's answers end on their own.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import numpy as np

_MASK = (1 << 64) - 1


def _mix64(x: int) -> int:
    """SplitMix64 finaliser: a cheap, well-spread 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


@dataclass(frozen=True)
class DeterministicSampler:
    """Picks output tokens from `vocab` deterministically; ends with `eos_token_id`."""

    vocab: tuple[int, ...]
    eos_token_id: int
    seed: int = 0
    mean_output_tokens: float = 200.0
    min_output_tokens: int = 4

    def __post_init__(self) -> None:
        if not self.vocab:
            raise ValueError("vocab: the sampler needs at least one token to emit")

    def key_for(self, prompt_token_ids: Seq[int]) -> int:
        digest = hashlib.blake2b(
            self.seed.to_bytes(8, "little", signed=True)
            # Little-endian uint32 per token (numpy builds the bytes ~20x faster).
            + np.asarray(prompt_token_ids, dtype="<u4").tobytes(),
            digest_size=8,
        ).digest()
        return int.from_bytes(digest, "little")

    def natural_length(self, key: int) -> int:
        """Output length at which the simulated model emits end-of-sequence."""
        u = (_mix64(key ^ 0x5EED) >> 11) / float(1 << 53)
        length = -self.mean_output_tokens * math.log(1.0 - u)
        return max(self.min_output_tokens, int(length))

    def token_at(self, key: int, position: int) -> int:
        """The token at output `position` of the answer keyed `key` (`_mix64` inlined:
        called once per generated token)."""
        x = (key + position + 0x9E3779B97F4A7C15) & _MASK
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
        vocab = self.vocab
        return vocab[(x ^ (x >> 31)) % len(vocab)]

    def tokens_at(self, key: int, start: int, count: int) -> list[int]:
        """`token_at(key, p)` for p in [start, start + count) (the mix inlined: a decode
        jump takes many tokens at once)."""
        vocab = self.vocab
        n = len(vocab)
        out: list[int] = []
        for p in range(start, start + count):
            x = (key + p + 0x9E3779B97F4A7C15) & _MASK
            x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
            x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
            out.append(vocab[(x ^ (x >> 31)) % n])
        return out
