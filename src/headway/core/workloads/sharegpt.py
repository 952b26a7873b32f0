"""`sharegpt`: conversations from a ShareGPT file (read by
`headway.resources.traces.read_sharegpt`), sampled like vLLM's ShareGPT dataset.

Each record gives the first human turn (the prompt) and the first model turn after it
(the completion). Records are visited in a seeded shuffle; the prompt is sent as one
user message and max_tokens is the completion's token count (or `output_tokens` when
set, vLLM's --sharegpt-output-len). Like vLLM, a record is skipped when its prompt or
completion has fewer than `min_tokens` (4) tokens, its prompt more than
`max_prompt_tokens` (1024), or both together more than `max_total_tokens` (2048); these
counts are of the raw texts, as vLLM counts them. `prompt_tokens` is exact (counted by
encoding the rendered chat template). The workload yields fewer sessions than asked when
too few records qualify.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from headway.core.workloads.params import ParamReader
from headway.core.workloads.text import TextFactory, tag_code
from headway.core.workloads.types import Call, ChatMessage, Session, Stage


@dataclass(frozen=True)
class ShareGptRecord:
    """A conversation's first human turn and the model's answer to it."""

    conversation_id: str
    prompt: str
    completion: str


class ShareGptWorkload:
    """Real prompts from ShareGPT conversations."""

    name = "sharegpt"

    def __init__(self, factory: TextFactory, params: Mapping[str, object]) -> None:
        p = ParamReader(self.name, params)
        records = p.raw("records", None)
        if not isinstance(records, Sequence) or not all(
            isinstance(r, ShareGptRecord) for r in records
        ):
            raise ValueError(
                "sharegpt.records: must be a sequence of ShareGptRecord (read_sharegpt's result)"
            )
        self.records: tuple[ShareGptRecord, ...] = tuple(records)
        self.output_tokens = p.integer("output_tokens", 0)  # 0: the completion's length
        self.min_tokens = p.integer("min_tokens", 4)
        self.max_prompt_tokens = p.integer("max_prompt_tokens", 1024, minimum=1)
        self.max_total_tokens = p.integer("max_total_tokens", 2048, minimum=1)
        self.source = p.optional_str("source")
        p.finish()
        self.factory = factory

    def params(self) -> Mapping[str, object]:
        return {
            "source": self.source,
            "num_records": len(self.records),
            "output_tokens": self.output_tokens,
            "min_tokens": self.min_tokens,
            "max_prompt_tokens": self.max_prompt_tokens,
            "max_total_tokens": self.max_total_tokens,
        }

    def sessions(self, num_sessions: int, seed: int) -> Iterator[Session]:
        f = self.factory
        order = np.random.default_rng([seed, tag_code(self.name)]).permutation(len(self.records))
        made = 0
        for j in order:
            if made >= num_sessions:
                return
            record = self.records[int(j)]
            n_prompt = f.count(record.prompt)
            n_out = self.output_tokens or f.count(record.completion)
            if (
                n_prompt < self.min_tokens
                or n_out < self.min_tokens
                or n_prompt > self.max_prompt_tokens
                or n_prompt + n_out > self.max_total_tokens
            ):
                continue
            messages = (ChatMessage("user", record.prompt),)
            sid = f"s{made}"
            call = Call(f"{sid}/c0", messages, n_out, f.count_prompt(messages))
            made += 1
            yield Session(sid, (Stage(0.0, (call,)),))
