"""`agentic`: agent runs - planning, tool-call rounds, optional parallel sub-agents, a
final answer - with every assistant turn scripted so all targets see identical prompts.

Shape of one run (a session; every call carries `x-session-id` and `x-run-id` = the run
id, so session-affine routing keeps a run on one replica). Each call's answer is scripted
(assistant, `answer_of` = that call) into the context of the calls after it:

1. stage 0, delay 0: planning call `plan` [system (shared by all runs: the agent's
   instructions and tool definitions, `system_prompt_tokens`), user: the task
   (`task_tokens`)]; max_tokens from `plan_output_tokens`.
2. `num_tool_rounds` rounds: the previous answer is a tool call; the tool's result
   (`tool_result_role`, `tool_result_tokens`) is appended, and the next call is issued
   `tool_latency_s` later. Rounds 0..n-2 issue calls `tool0`.. (max_tokens from
   `tool_call_output_tokens`); the last round's call is the final answer unless there
   are sub-agents.
3. if `num_subagents` > 0: one stage after `think_time_s` with that many parallel calls
   `sub0`..: the parent's context + its scripted dispatch answer + each sub-agent's own
   task (user, `subagent_task_tokens`), so all sub-agents share the parent's prefix;
   max_tokens from `subagent_output_tokens`. Their results come back to the parent as
   `tool_result_role` messages with `answer_of` = the sub-agent's call.
4. `final` (after `think_time_s` following sub-agents, else `tool_latency_s`): the whole
   context; max_tokens from `final_output_tokens`.

Lengths are content tokens. Scripted answers have exactly their call's max_tokens tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from headway.core.workloads.params import ParamReader
from headway.core.workloads.text import Context, TextFactory, tag_code
from headway.core.workloads.types import RUN_HEADER, SESSION_HEADER, Call, Session, Stage


class AgenticWorkload:
    """Agent runs: plan, tool rounds, parallel sub-agents, final answer."""

    name = "agentic"

    def __init__(self, factory: TextFactory, params: Mapping[str, object]) -> None:
        p = ParamReader(self.name, params)
        self.system_prompt_tokens = p.integer("system_prompt_tokens", 2048)
        self.task_tokens = p.length("task_tokens", 256)
        self.plan_output_tokens = p.length("plan_output_tokens", 128)
        self.num_tool_rounds = p.integer("num_tool_rounds", 3)
        self.tool_call_output_tokens = p.length("tool_call_output_tokens", 64)
        self.tool_result_tokens = p.length("tool_result_tokens", 512)
        self.tool_latency_s = p.delay("tool_latency_s", 0.5)
        self.tool_result_role = p.choice("tool_result_role", "tool", ("tool", "user"))
        self.num_subagents = p.integer("num_subagents", 0)
        self.subagent_task_tokens = p.length("subagent_task_tokens", 128)
        self.subagent_output_tokens = p.length("subagent_output_tokens", 256)
        self.final_output_tokens = p.length("final_output_tokens", 256)
        self.think_time_s = p.delay("think_time_s", 0.0)
        p.finish()
        if self.num_tool_rounds == 0 and self.num_subagents == 0:
            raise ValueError(
                "agentic.num_tool_rounds: a run needs at least one tool round or one sub-agent "
                "(num_subagents)"
            )
        self.factory = factory

    def params(self) -> Mapping[str, object]:
        return {
            "system_prompt_tokens": self.system_prompt_tokens,
            "task_tokens": self.task_tokens.as_dict(),
            "plan_output_tokens": self.plan_output_tokens.as_dict(),
            "num_tool_rounds": self.num_tool_rounds,
            "tool_call_output_tokens": self.tool_call_output_tokens.as_dict(),
            "tool_result_tokens": self.tool_result_tokens.as_dict(),
            "tool_latency_s": self.tool_latency_s.as_dict(),
            "tool_result_role": self.tool_result_role,
            "num_subagents": self.num_subagents,
            "subagent_task_tokens": self.subagent_task_tokens.as_dict(),
            "subagent_output_tokens": self.subagent_output_tokens.as_dict(),
            "final_output_tokens": self.final_output_tokens.as_dict(),
            "think_time_s": self.think_time_s.as_dict(),
        }

    def sessions(self, num_sessions: int, seed: int) -> Iterator[Session]:
        for i in range(num_sessions):
            yield self._run(i, seed)

    def _run(self, index: int, seed: int) -> Session:
        f = self.factory
        rng = np.random.default_rng([seed, tag_code(self.name), index])
        run_id = f"run{index}"
        headers = ((SESSION_HEADER, run_id), (RUN_HEADER, run_id))

        def answer(ctx: Context, call: Call) -> Context:
            """The context followed by `call`'s scripted answer."""
            text = f.text(rng, call.max_tokens)
            return f.extend(ctx, "assistant", text, call.max_tokens, answer_of=call.call_id)

        ctx = f.start()
        if self.system_prompt_tokens:
            system = f.shared_text(self.system_prompt_tokens, seed, "agentic/system")
            ctx = f.extend(ctx, "system", system, self.system_prompt_tokens)
        n_task = self.task_tokens.sample(rng)
        ctx = f.extend(ctx, "user", f.text(rng, n_task), n_task)
        last = f.call(f"{run_id}/plan", ctx, self.plan_output_tokens.sample(rng), headers)
        stages = [Stage(0.0, (last,))]

        def final(ctx: Context, delay_s: float) -> Session:
            call = f.call(f"{run_id}/final", ctx, self.final_output_tokens.sample(rng), headers)
            return Session(run_id, (*stages, Stage(delay_s, (call,))))

        for k in range(self.num_tool_rounds):
            # The previous answer is a tool call; its result comes back after the tool ran.
            ctx = answer(ctx, last)
            n_result = self.tool_result_tokens.sample(rng)
            ctx = f.extend(ctx, self.tool_result_role, f.text(rng, n_result), n_result)
            delay_s = self.tool_latency_s.sample(rng)
            if k == self.num_tool_rounds - 1 and not self.num_subagents:
                return final(ctx, delay_s)
            n_out = self.tool_call_output_tokens.sample(rng)
            last = f.call(f"{run_id}/tool{k}", ctx, n_out, headers)
            stages.append(Stage(delay_s, (last,)))
        ctx = answer(ctx, last)  # the parent's dispatch of the sub-agents
        subcalls = []
        for j in range(self.num_subagents):
            n_sub = self.subagent_task_tokens.sample(rng)
            sub_ctx = f.extend(ctx, "user", f.text(rng, n_sub), n_sub)
            n_out = self.subagent_output_tokens.sample(rng)
            subcalls.append(f.call(f"{run_id}/sub{j}", sub_ctx, n_out, headers))
        stages.append(Stage(self.think_time_s.sample(rng), tuple(subcalls)))
        for sub in subcalls:
            text = f.text(rng, sub.max_tokens)
            ctx = f.extend(ctx, self.tool_result_role, text, sub.max_tokens, answer_of=sub.call_id)
        return final(ctx, self.think_time_s.sample(rng))
