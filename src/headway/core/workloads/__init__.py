"""Seeded, pure workload generators.

`types` holds the data model (ChatMessage, Call, Stage, Session, Workload) and its
invariants; `text` how prompts of exact token counts are built; one module per workload.
Build one by name with `build_workload(name, params, tokenizer)`; docs/workloads.md
describes every workload's parameters and shape.
"""

from headway.core.workloads.agentic import AgenticWorkload
from headway.core.workloads.lengths import (
    DelayDist,
    DelayKind,
    LengthDist,
    LengthKind,
    parse_delay_dist,
    parse_length_dist,
)
from headway.core.workloads.long_context import LongContextWorkload
from headway.core.workloads.multi_turn import MultiTurnWorkload
from headway.core.workloads.registry import WORKLOAD_NAMES, build_workload
from headway.core.workloads.shared_prefix import SharedPrefixWorkload
from headway.core.workloads.sharegpt import ShareGptRecord, ShareGptWorkload
from headway.core.workloads.synthetic import (
    SyntheticChatWorkload,
    SyntheticRequest,
    SyntheticWorkload,
)
from headway.core.workloads.text import TextFactory, text_factory
from headway.core.workloads.trace import MOONCAKE_BLOCK_TOKENS, TraceRecord, TraceWorkload
from headway.core.workloads.types import (
    RUN_HEADER,
    SESSION_HEADER,
    Call,
    ChatMessage,
    Session,
    Stage,
    Workload,
)

__all__ = [
    "MOONCAKE_BLOCK_TOKENS",
    "RUN_HEADER",
    "SESSION_HEADER",
    "WORKLOAD_NAMES",
    "AgenticWorkload",
    "Call",
    "ChatMessage",
    "DelayDist",
    "DelayKind",
    "LengthDist",
    "LengthKind",
    "LongContextWorkload",
    "MultiTurnWorkload",
    "Session",
    "ShareGptRecord",
    "ShareGptWorkload",
    "SharedPrefixWorkload",
    "Stage",
    "SyntheticChatWorkload",
    "SyntheticRequest",
    "SyntheticWorkload",
    "TextFactory",
    "TraceRecord",
    "TraceWorkload",
    "Workload",
    "build_workload",
    "parse_delay_dist",
    "parse_length_dist",
    "text_factory",
]
