"""One request's state inside the engine.

Lifecycle: WAITING -> RUNNING -> (PREEMPTED -> WAITING ->) FINISHED. A preempted
sequence loses its blocks and recomputes from token 0 (vLLM v1 recompute preemption),
keeping the tokens it already generated. `num_computed_tokens` counts tokens whose KV
is in the cache; `block_ids` cover at least that many tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class SeqStatus(StrEnum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"


class FinishReason(StrEnum):
    STOP = "stop"  # end-of-sequence token or a stop string/token
    LENGTH = "length"  # max_tokens or the context limit
    ABORT = "abort"  # client went away or an operator cancelled it


@dataclass(frozen=True)
class EngineRequest:
    """What the engine needs to serve one request (already tokenized)."""

    request_id: str
    prompt_token_ids: tuple[int, ...]
    max_tokens: int
    ignore_eos: bool = False
    stop_token_ids: frozenset[int] = frozenset()
    lora_name: str | None = None
    lora_id: int | None = None
    lora_path: str = ""
    cache_salt: str | None = None
    priority: int = 0
    # Precomputed prompt block hashes (the cluster simulator caches them per prompt).
    prompt_block_hashes: tuple[bytes, ...] | None = None
    # Leading prompt tokens whose KV arrives from another engine (P/D disaggregation: a
    # prefill engine computed them); whole blocks, at most all but the last token.
    num_external_computed_tokens: int = 0


@dataclass(eq=False, slots=True)
class Sequence:
    """Mutable engine-side state of one request.

    `output_token_ids` grows only through `append_output`, which keeps `num_tokens`
    (read several times per token in a step) a plain attribute.
    """

    request: EngineRequest
    arrival_index: int
    status: SeqStatus = SeqStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[bytes] = field(default_factory=list)
    num_cached_blocks: int = 0  # leading blocks already registered in the prefix cache
    num_cached_tokens: int = -1  # prefix hit at first scheduling (-1: not yet scheduled)
    num_preemptions: int = 0
    finish_reason: FinishReason | None = None
    sample_key: int = 0
    num_prompt_tokens: int = field(init=False)
    num_tokens: int = field(init=False)  # prompt + output tokens

    def __post_init__(self) -> None:
        self.num_prompt_tokens = len(self.request.prompt_token_ids)
        self.num_tokens = self.num_prompt_tokens + len(self.output_token_ids)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    def append_output(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.num_tokens += 1

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    def token_ids(self) -> list[int]:
        return [*self.request.prompt_token_ids, *self.output_token_ids]

    def tokens_between(self, start: int, end: int) -> list[int]:
        """Tokens [start, end) of prompt + output, without copying the whole sequence."""
        prompt = self.request.prompt_token_ids
        n = len(prompt)
        if end <= n:
            return list(prompt[start:end])
        if start >= n:
            return self.output_token_ids[start - n : end - n]
        return [*prompt[start:], *self.output_token_ids[: end - n]]

    @property
    def hash_keys_every_block(self) -> tuple[Any, ...] | None:
        """vLLM's tagged extra hash keys for every block: the LoRA adapter."""
        req = self.request
        if req.lora_name is None:
            return None
        return (("lora", req.lora_name, req.lora_path),)

    @property
    def hash_keys_first_block(self) -> tuple[Any, ...] | None:
        """vLLM's tagged extra hash keys for block 0 only: the cache salt."""
        salt = self.request.cache_salt
        return (("cache_salt", salt),) if salt else None

    def event_extra_keys(self, block_index: int) -> tuple[Any, ...] | None:
        """A block's extra keys as KV events publish them: untagged, no LoRA path."""
        keys: tuple[Any, ...] = ()
        if self.request.lora_name is not None:
            keys += (self.request.lora_name,)
        if block_index == 0 and self.request.cache_salt:
            keys += (self.request.cache_salt,)
        return keys or None

    @property
    def is_finished(self) -> bool:
        return self.status == SeqStatus.FINISHED
