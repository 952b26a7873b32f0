"""`multi-turn`: chat sessions whose context grows turn by turn.

Shape: a session has `num_turns` calls, one per stage. Turn k sends [system (if
system_prompt_tokens > 0, shared by all sessions), user_1, assistant_1, ..., user_k];
assistant_j is scripted with `answer_of` = turn j's call id and exactly turn j's
max_tokens tokens, so every turn's rendered prompt starts with the previous turn's
rendered prompt (the previous generation prompt is the header of the scripted answer).
Turns after the first wait `think_time_s` after the previous answer. Every call carries
`x-session-id` = the session id. Lengths are content tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from headway.core.workloads.params import ParamReader
from headway.core.workloads.text import TextFactory, tag_code
from headway.core.workloads.types import SESSION_HEADER, Session, Stage


class MultiTurnWorkload:
    """Chats with growing context and think time between turns."""

    name = "multi-turn"

    def __init__(self, factory: TextFactory, params: Mapping[str, object]) -> None:
        p = ParamReader(self.name, params)
        self.num_turns = p.length("num_turns", 5)
        self.system_prompt_tokens = p.integer("system_prompt_tokens", 0)
        self.user_tokens = p.length("user_tokens", 128)
        self.output_tokens = p.length("output_tokens", 128)
        self.think_time_s = p.delay("think_time_s", "exponential:1.0")
        p.finish()
        self.factory = factory

    def params(self) -> Mapping[str, object]:
        return {
            "num_turns": self.num_turns.as_dict(),
            "system_prompt_tokens": self.system_prompt_tokens,
            "user_tokens": self.user_tokens.as_dict(),
            "output_tokens": self.output_tokens.as_dict(),
            "think_time_s": self.think_time_s.as_dict(),
        }

    def sessions(self, num_sessions: int, seed: int) -> Iterator[Session]:
        f = self.factory
        system = f.shared_text(self.system_prompt_tokens, seed, "multi-turn/system")
        for i in range(num_sessions):
            rng = np.random.default_rng([seed, tag_code(self.name), i])
            sid = f"s{i}"
            headers = ((SESSION_HEADER, sid),)
            ctx = f.start()
            if self.system_prompt_tokens:
                ctx = f.extend(ctx, "system", system, self.system_prompt_tokens)
            stages: list[Stage] = []
            for turn in range(self.num_turns.sample(rng)):
                n_user = self.user_tokens.sample(rng)
                ctx = f.extend(ctx, "user", f.text(rng, n_user), n_user)
                n_out = self.output_tokens.sample(rng)
                call = f.call(f"{sid}/t{turn}", ctx, n_out, headers)
                delay = 0.0 if turn == 0 else self.think_time_s.sample(rng)
                stages.append(Stage(delay, (call,)))
                ctx = f.extend(ctx, "assistant", f.text(rng, n_out), n_out, answer_of=call.call_id)
            yield Session(sid, tuple(stages))
