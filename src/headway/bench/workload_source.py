"""Resolves `--workload NAME|FILE` into a core workload and the tokenizer it counts with.

A name is one of `headway.core.workloads`' builders. A file path is read with
`headway.resources.traces`: a file holding one JSON array (ShareGPT conversations)
becomes the `sharegpt` workload, JSON lines the `trace` workload (workload param
`format`: auto | mooncake | headway).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from headway.core.workloads import Workload

if TYPE_CHECKING:
    from headway.resources.tokenizer import HfTokenizer


def load_bench_tokenizer(tokenizer_path: str | None) -> HfTokenizer:
    """The tokenizer a run counts prompt tokens with (default: the shipped one)."""
    from headway.resources.tokenizer import default_tokenizer, load_tokenizer

    return default_tokenizer() if tokenizer_path is None else load_tokenizer(tokenizer_path)


def is_file_source(name: str) -> bool:
    return "/" in name or name.endswith((".json", ".jsonl")) or Path(name).is_file()


def build_from_source(
    name: str, params: Mapping[str, object], tokenizer_path: str | None
) -> tuple[Workload, HfTokenizer]:
    """Build the workload `name` (or read the trace / ShareGPT file `name`)."""
    from headway.core.workloads import build_workload

    tokenizer = load_bench_tokenizer(tokenizer_path)
    if not is_file_source(name):
        return build_workload(name, params, tokenizer), tokenizer
    from headway.resources import traces

    path = Path(name)
    if not path.is_file():
        raise ValueError(f"no such file {name}")
    rest = dict(params)
    if _is_json_array(path):
        records: object = traces.read_sharegpt(path)
        kind = "sharegpt"
    else:
        fmt = str(rest.pop("format", "auto"))
        if fmt not in traces.TRACE_FORMATS:
            raise ValueError(f"format: one of {list(traces.TRACE_FORMATS)}, got {fmt!r}")
        records = traces.read_trace(path, fmt)
        kind = "trace"
    return build_workload(kind, {**rest, "records": records}, tokenizer), tokenizer


def _is_json_array(path: Path) -> bool:
    """A ShareGPT file is one JSON array; a trace is JSON lines (objects)."""
    with path.open("rb") as f:
        head = f.read(4096).lstrip()
    return head.startswith(b"[")
