"""`shared-prefix`: groups of single-call sessions whose prompts share a system prompt
(vLLM's prefix-repetition dataset as a chat).

Shape: `num_groups` system prompts of `system_prompt_tokens` tokens; each session sends
[system: its group's prompt, user: a fresh question of `question_tokens` tokens] with
max_tokens from `output_tokens`. Sessions come in blocks of num_groups x
prompts_per_group, each block a seeded shuffle holding every group prompts_per_group
times; more sessions than one block continue with further blocks (same system prompts,
new questions). Lengths are content tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from headway.core.workloads.params import ParamReader
from headway.core.workloads.text import TextFactory, tag_code
from headway.core.workloads.types import Session, Stage


class SharedPrefixWorkload:
    """Groups of prompts sharing a system prompt, shuffled across groups."""

    name = "shared-prefix"

    def __init__(self, factory: TextFactory, params: Mapping[str, object]) -> None:
        p = ParamReader(self.name, params)
        self.num_groups = p.integer("num_groups", 8, minimum=1)
        self.prompts_per_group = p.integer("prompts_per_group", 16, minimum=1)
        self.system_prompt_tokens = p.integer("system_prompt_tokens", 2048, minimum=1)
        self.question_tokens = p.length("question_tokens", 128)
        self.output_tokens = p.length("output_tokens", 128)
        p.finish()
        self.factory = factory

    def params(self) -> Mapping[str, object]:
        return {
            "num_groups": self.num_groups,
            "prompts_per_group": self.prompts_per_group,
            "system_prompt_tokens": self.system_prompt_tokens,
            "question_tokens": self.question_tokens.as_dict(),
            "output_tokens": self.output_tokens.as_dict(),
        }

    def group_of(self, index: int, seed: int) -> int:
        """The group of session `index` (a seeded shuffle per block of sessions)."""
        block_size = self.num_groups * self.prompts_per_group
        block, slot = divmod(index, block_size)
        perm = np.random.default_rng([seed, tag_code("shared-prefix/order"), block]).permutation(
            block_size
        )
        return int(perm[slot]) // self.prompts_per_group

    def sessions(self, num_sessions: int, seed: int) -> Iterator[Session]:
        f = self.factory
        for i in range(num_sessions):
            group = self.group_of(i, seed)
            rng = np.random.default_rng([seed, tag_code(self.name), i])
            system = f.shared_text(self.system_prompt_tokens, seed, "shared-prefix/system", group)
            n_q = self.question_tokens.sample(rng)
            ctx = f.extend(f.start(), "system", system, self.system_prompt_tokens)
            ctx = f.extend(ctx, "user", f.text(rng, n_q), n_q)
            sid = f"s{i}"
            call = f.call(f"{sid}/c0", ctx, self.output_tokens.sample(rng))
            yield Session(sid, (Stage(0.0, (call,)),))
