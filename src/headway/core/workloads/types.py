"""The data types every workload produces and the load generator consumes.

A workload yields `Session`s. A session is a sequence of `Stage`s; the calls of one
stage are issued together (parallel sub-agents) once the previous stage has finished
and the stage's `delay_s` (think / tool time) has passed. A call is one chat-completions
request.

Invariants every workload keeps:

* `Call.prompt_tokens` is the exact token count of the call's messages rendered by
  `headway.core.tokenizer.ChatTemplate` (with the generation prompt) and encoded by the
  workload's tokenizer.
* An assistant message with `answer_of` set stands for the answer of the call of that id,
  which belongs to an earlier stage of the same session; its scripted content has exactly
  that call's `max_tokens` tokens, so a target that generates `max_tokens` tokens
  (ignore_eos) sees a context of the same length whether or not the client substitutes
  the real answer.
* `call_id`s are unique within one `sessions()` iteration.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

# Headers multi-call workloads set on every call of a session / an agent run.
SESSION_HEADER = "x-session-id"
RUN_HEADER = "x-run-id"


@dataclass(frozen=True)
class ChatMessage:
    """One chat message of a request body."""

    role: str  # "system" | "user" | "assistant" | "tool"
    content: str
    # Scripted in place of call `answer_of`'s answer; with --use-model-answers the client
    # substitutes the real answer of that call.
    answer_of: str | None = None

    def as_dict(self) -> dict[str, str]:
        """The message as the chat-completions body carries it (no `answer_of`)."""
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Call:
    """One HTTP request of a session."""

    call_id: str
    messages: tuple[ChatMessage, ...]
    max_tokens: int
    prompt_tokens: int
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Stage:
    """Calls issued together (parallel sub-agents) once the previous stage has finished
    and `delay_s` (think / tool time) has passed."""

    delay_s: float
    calls: tuple[Call, ...]


@dataclass(frozen=True)
class Session:
    """The unit the arrival process schedules: a single request, a chat, an agent run."""

    session_id: str
    stages: tuple[Stage, ...]
    # Trace workloads: offset from the start of the run; None: the arrival process decides.
    arrival_s: float | None = None

    @property
    def calls(self) -> tuple[Call, ...]:
        """All calls of the session in stage order."""
        return tuple(c for s in self.stages for c in s.calls)


class Workload(Protocol):
    """A seeded generator of sessions."""

    name: str

    def params(self) -> Mapping[str, object]:
        """Every parameter with its value (JSON-ready), for the run's metadata."""
        ...

    def sessions(self, num_sessions: int, seed: int) -> Iterator[Session]:
        """`num_sessions` sessions (fewer only for a finite trace), the same for the same
        seed."""
        ...
