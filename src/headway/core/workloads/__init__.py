"""Seeded, pure workload generators (see `types` for the data model and its invariants).

Built by name with `build_workload(name, params, tokenizer)`.
"""

from headway.core.workloads.types import Call, ChatMessage, Session, Stage, Workload

__all__ = ["Call", "ChatMessage", "Session", "Stage", "Workload"]
