"""`synthetic`: independent single-call sessions with random prompts (vLLM's random
dataset as a chat), and the token-id variant the simulator's own benchmarks use.

Parameters (lengths are content tokens, like vLLM's random dataset; the chat template
adds its fixed overhead to `prompt_tokens`):

* input_len (default 1024): prompt content length, a `LengthDist` spelling.
* output_len (default 128): max_tokens, a `LengthDist` spelling.
* prefix_tokens (default 0): a prefix shared by every prompt, put in front of the
  input_len random tokens (vLLM's random-prefix-len).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from headway.core.workloads.lengths import LengthDist
from headway.core.workloads.params import ParamReader
from headway.core.workloads.text import TextFactory, tag_code
from headway.core.workloads.types import Session, Stage


class SyntheticChatWorkload:
    """Random chat prompts with lengths from `LengthDist`s."""

    name = "synthetic"

    def __init__(self, factory: TextFactory, params: Mapping[str, object]) -> None:
        p = ParamReader(self.name, params)
        self.input_len = p.length("input_len", 1024)
        self.output_len = p.length("output_len", 128)
        self.prefix_tokens = p.integer("prefix_tokens", 0)
        p.finish()
        self.factory = factory

    def params(self) -> Mapping[str, object]:
        return {
            "input_len": self.input_len.as_dict(),
            "output_len": self.output_len.as_dict(),
            "prefix_tokens": self.prefix_tokens,
        }

    def sessions(self, num_sessions: int, seed: int) -> Iterator[Session]:
        f = self.factory
        prefix = f.shared_ids(self.prefix_tokens, seed, "synthetic/prefix")
        for i in range(num_sessions):
            rng = np.random.default_rng([seed, tag_code(self.name), i])
            n_in = self.input_len.sample(rng)
            n_out = self.output_len.sample(rng)
            ids = np.concatenate([prefix, f.fresh_ids(rng, n_in)])
            ctx = f.extend(f.start(), "user", f.join(ids), len(ids))
            sid = f"s{i}"
            yield Session(sid, (Stage(0.0, (f.call(f"{sid}/c0", ctx, n_out),)),))


@dataclass(frozen=True)
class SyntheticRequest:
    """A prompt as token ids and the number of tokens to generate."""

    prompt_token_ids: tuple[int, ...]
    max_tokens: int


@dataclass(frozen=True)
class SyntheticWorkload:
    """Random token-id prompts (ids in [min_token_id, max_token_id)) with lengths drawn
    from `input_len` and `output_len`; for engine-level benchmarks without a chat API."""

    input_len: LengthDist
    output_len: LengthDist
    min_token_id: int = 300
    max_token_id: int = 3000

    def sample(self, rng: np.random.Generator) -> SyntheticRequest:
        n = self.input_len.sample(rng)
        ids = rng.integers(self.min_token_id, self.max_token_id, size=n)
        return SyntheticRequest(tuple(int(t) for t in ids), self.output_len.sample(rng))
