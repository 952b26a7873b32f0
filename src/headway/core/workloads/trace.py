"""`trace`: replay of a request trace (Mooncake / Headway JSONL, read by
`headway.resources.traces.read_trace`).

Each record is one single-call session [user: content] sent at its timestamp: `arrival_s`
= (timestamp - first timestamp) x `time_scale` (0.5 replays twice as fast). The record's
`input_tokens` is the whole prompt as the engine saw it, so the content is input_tokens
minus the chat template's overhead (at least 1 token) and `prompt_tokens` equals
input_tokens whenever input_tokens exceeds the overhead. With `hash_ids` (Mooncake), the
content is the concatenation of one text block of `block_tokens` tokens per hash id
(block text is seeded by (seed, hash id), so equal hash ids give identical blocks and
shared prefixes recur exactly), cut to the content length and padded with fresh text if
the blocks are too few. Records are replayed in timestamp order; a trace yields at most
as many sessions as it has records.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from headway.core.workloads.params import ParamReader
from headway.core.workloads.text import TextFactory, tag_code
from headway.core.workloads.types import Session, Stage

MOONCAKE_BLOCK_TOKENS = 512


@dataclass(frozen=True)
class TraceRecord:
    """One request of a trace."""

    timestamp_s: float
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.input_tokens < 1:
            raise ValueError(f"input_tokens: must be >= 1, got {self.input_tokens}")
        if self.output_tokens < 1:
            raise ValueError(f"output_tokens: must be >= 1, got {self.output_tokens}")


class TraceWorkload:
    """Replays trace records at their timestamps."""

    name = "trace"

    def __init__(self, factory: TextFactory, params: Mapping[str, object]) -> None:
        p = ParamReader(self.name, params)
        records = p.raw("records", None)
        if not isinstance(records, Sequence) or not all(
            isinstance(r, TraceRecord) for r in records
        ):
            raise ValueError(
                "trace.records: must be a sequence of TraceRecord (read_trace's result)"
            )
        if not records:
            raise ValueError("trace.records: the trace is empty")
        self.records: tuple[TraceRecord, ...] = tuple(sorted(records, key=lambda r: r.timestamp_s))
        self.block_tokens = p.integer("block_tokens", MOONCAKE_BLOCK_TOKENS, minimum=1)
        self.time_scale = p.number("time_scale", 1.0)
        self.source = p.optional_str("source")
        p.finish()
        self.factory = factory
        self._overhead = factory.bos_tokens + factory.overhead("user") + factory.generation_tokens

    def params(self) -> Mapping[str, object]:
        return {
            "source": self.source,
            "num_records": len(self.records),
            "block_tokens": self.block_tokens,
            "time_scale": self.time_scale,
        }

    def sessions(self, num_sessions: int, seed: int) -> Iterator[Session]:
        f = self.factory
        start_s = self.records[0].timestamp_s
        for i, record in enumerate(self.records[:num_sessions]):
            rng = np.random.default_rng([seed, tag_code(self.name), i])
            n_content = max(1, record.input_tokens - self._overhead)
            pieces = []
            have = 0
            for h in record.hash_ids or ():
                if have >= n_content:
                    break
                block = f.shared_ids(self.block_tokens, seed, "trace/block", h)
                pieces.append(block[: n_content - have])
                have += len(pieces[-1])
            if have < n_content:
                pieces.append(f.fresh_ids(rng, n_content - have))
            ids = np.concatenate(pieces)
            ctx = f.extend(f.start(), "user", f.join(ids), len(ids))
            sid = f"s{i}"
            call = f.call(f"{sid}/c0", ctx, record.output_tokens)
            arrival_s = (record.timestamp_s - start_s) * self.time_scale
            yield Session(sid, (Stage(0.0, (call,)),), arrival_s=arrival_s)
