"""Building a workload by name from a parameter mapping (errors name the field)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from headway.core.tokenizer import Tokenizer
from headway.core.workloads.agentic import AgenticWorkload
from headway.core.workloads.long_context import LongContextWorkload
from headway.core.workloads.multi_turn import MultiTurnWorkload
from headway.core.workloads.shared_prefix import SharedPrefixWorkload
from headway.core.workloads.sharegpt import ShareGptWorkload
from headway.core.workloads.synthetic import SyntheticChatWorkload
from headway.core.workloads.text import TextFactory, text_factory
from headway.core.workloads.trace import TraceWorkload
from headway.core.workloads.types import Workload

_BUILDERS: dict[str, Callable[[TextFactory, Mapping[str, object]], Workload]] = {
    SyntheticChatWorkload.name: SyntheticChatWorkload,
    SharedPrefixWorkload.name: SharedPrefixWorkload,
    MultiTurnWorkload.name: MultiTurnWorkload,
    AgenticWorkload.name: AgenticWorkload,
    LongContextWorkload.name: LongContextWorkload,
    TraceWorkload.name: TraceWorkload,
    ShareGptWorkload.name: ShareGptWorkload,
}
WORKLOAD_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_workload(name: str, params: Mapping[str, object], tokenizer: Tokenizer) -> Workload:
    """The workload `name` with `params` (see docs/workloads.md); ValueError naming the
    field on a bad parameter or an unknown name."""
    builder = _BUILDERS.get(name)
    if builder is None:
        raise ValueError(f"workload: unknown name {name!r}; known: {list(WORKLOAD_NAMES)}")
    return builder(text_factory(tokenizer), params)
