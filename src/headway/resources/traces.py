"""Reads request traces and ShareGPT files into the records `headway.core.workloads`
replays (the `trace` and `sharegpt` workloads); nothing is downloaded.

Trace formats (JSON Lines, one request per line; blank lines are skipped):

* Mooncake (`format="mooncake"`): `{"timestamp": ms, "input_length": n,
  "output_length": n, "hash_ids": [int, ...]}`; the timestamp is milliseconds, each hash
  id stands for one 512-token block of the prompt.
* Headway (`format="headway"`): `{"timestamp_s": s, "input_tokens": n,
  "output_tokens": n, "hash_ids": [int, ...]}` (hash_ids optional); `write_trace` writes it.
* `format="auto"` (default) tells them apart per line by the keys present.

ShareGPT (`read_sharegpt`): a JSON array of `{"id": ..., "conversations": [{"from":
"human"|"gpt"|..., "value": text}, ...]}`; a record is the first human/user turn and the
first gpt/assistant turn after it. Conversations without such a pair are skipped (vLLM
drops conversations with fewer than two turns).

Errors are `TraceFormatError` naming the file, the line (or array index) and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from headway.core.workloads import ShareGptRecord, TraceRecord

TRACE_FORMATS = ("auto", "mooncake", "headway")
_HUMAN_ROLES = ("human", "user")
_MODEL_ROLES = ("gpt", "assistant", "chatgpt", "bard", "model")


class TraceFormatError(ValueError):
    """A trace or ShareGPT file that cannot be read; the message names where."""


def _positive_int(raw: Mapping[str, object], key: str, where: str) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TraceFormatError(f"{where}: {key}: must be a positive integer, got {value!r}")
    return value


def _number(raw: Mapping[str, object], key: str, where: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise TraceFormatError(f"{where}: {key}: must be a number >= 0, got {value!r}")
    return float(value)


def _hash_ids(raw: Mapping[str, object], where: str) -> tuple[int, ...] | None:
    value = raw.get("hash_ids")
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(h, int) and not isinstance(h, bool) for h in value
    ):
        raise TraceFormatError(f"{where}: hash_ids: must be a list of integers")
    return tuple(value)


def parse_trace_record(raw: object, where: str, fmt: str = "auto") -> TraceRecord:
    """One trace record from a decoded JSON object; `where` prefixes errors."""
    if not isinstance(raw, dict):
        raise TraceFormatError(f"{where}: must be a JSON object, got {type(raw).__name__}")
    if fmt == "auto":
        fmt = "mooncake" if "input_length" in raw else "headway"
    if fmt == "mooncake":
        return TraceRecord(
            timestamp_s=_number(raw, "timestamp", where) / 1000.0,
            input_tokens=_positive_int(raw, "input_length", where),
            output_tokens=_positive_int(raw, "output_length", where),
            hash_ids=_hash_ids(raw, where),
        )
    if fmt == "headway":
        return TraceRecord(
            timestamp_s=_number(raw, "timestamp_s", where),
            input_tokens=_positive_int(raw, "input_tokens", where),
            output_tokens=_positive_int(raw, "output_tokens", where),
            hash_ids=_hash_ids(raw, where),
        )
    raise TraceFormatError(f"format: must be one of {list(TRACE_FORMATS)}, got {fmt!r}")


def read_trace(path: str | Path, fmt: str = "auto") -> list[TraceRecord]:
    """The records of a Mooncake or Headway JSONL trace, in file order."""
    if fmt not in TRACE_FORMATS:
        raise TraceFormatError(f"format: must be one of {list(TRACE_FORMATS)}, got {fmt!r}")
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceFormatError(f"{p}: cannot read: {exc}") from exc
    records = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceFormatError(f"{where}: not JSON: {exc.msg}") from exc
        records.append(parse_trace_record(raw, where, fmt))
    if not records:
        raise TraceFormatError(f"{p}: the trace has no records")
    return records


def write_trace(path: str | Path, records: Iterable[TraceRecord]) -> None:
    """Write records as a Headway JSONL trace (`read_trace` reads it back)."""
    with Path(path).open("w", encoding="utf-8") as out:
        for r in records:
            row: dict[str, object] = {
                "timestamp_s": r.timestamp_s,
                "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens,
            }
            if r.hash_ids is not None:
                row["hash_ids"] = list(r.hash_ids)
            out.write(json.dumps(row) + "\n")


def parse_sharegpt(data: object, source: str = "sharegpt") -> list[ShareGptRecord]:
    """Records of decoded ShareGPT JSON; `source` prefixes errors."""
    if not isinstance(data, list):
        raise TraceFormatError(f"{source}: must be a JSON array of conversations")
    records = []
    for i, conv in enumerate(data):
        where = f"{source}[{i}]"
        if not isinstance(conv, dict):
            raise TraceFormatError(f"{where}: must be an object")
        turns = conv.get("conversations")
        if not isinstance(turns, list):
            raise TraceFormatError(f"{where}.conversations: must be a list")
        prompt: str | None = None
        for j, turn in enumerate(turns):
            if not isinstance(turn, dict):
                raise TraceFormatError(f"{where}.conversations[{j}]: must be an object")
            role, value = turn.get("from"), turn.get("value")
            if not isinstance(role, str):
                raise TraceFormatError(f"{where}.conversations[{j}].from: must be a string")
            if not isinstance(value, str):
                raise TraceFormatError(f"{where}.conversations[{j}].value: must be a string")
            if prompt is None and role in _HUMAN_ROLES:
                prompt = value
            elif prompt is not None and role in _MODEL_ROLES:
                records.append(ShareGptRecord(str(conv.get("id", i)), prompt, value))
                break
    return records


def read_sharegpt(path: str | Path) -> list[ShareGptRecord]:
    """The records of a ShareGPT JSON file (see the module doc)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceFormatError(f"{p}: cannot read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise TraceFormatError(f"{p}:{exc.lineno}: not JSON: {exc.msg}") from exc
    return parse_sharegpt(data, str(p))
