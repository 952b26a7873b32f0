"""Trace and ShareGPT readers: formats, round trip, errors naming the line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from headway.core.workloads import ShareGptRecord, TraceRecord
from headway.resources.traces import (
    TraceFormatError,
    read_sharegpt,
    read_trace,
    write_trace,
)


def write_lines(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_mooncake_trace(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "mooncake.jsonl",
        [
            {"timestamp": 0, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, 48]},
            "",
            {"timestamp": 1500, "input_length": 600, "output_length": 1, "hash_ids": [46, 49]},
        ],
    )
    assert read_trace(path) == [
        TraceRecord(0.0, 6955, 52, (46, 47, 48)),
        TraceRecord(1.5, 600, 1, (46, 49)),  # milliseconds -> seconds
    ]


def test_headway_trace_round_trip(tmp_path: Path) -> None:
    records = [TraceRecord(0.25, 100, 10, None), TraceRecord(1.0, 2000, 5, (1, 2, 3, 4))]
    path = tmp_path / "trace.jsonl"
    write_trace(path, records)
    assert read_trace(path) == records
    assert read_trace(path, fmt="headway") == records


@pytest.mark.parametrize(
    ("rows", "fmt", "match"),
    [
        (
            [{"timestamp": 0, "input_length": 10, "output_length": 1}, "{not json"],
            "auto",
            r":2: not JSON",
        ),
        (
            [{"timestamp": 0, "input_length": "10", "output_length": 1}],
            "auto",
            r":1: input_length: must be a positive integer",
        ),
        (
            [{"timestamp": -5, "input_length": 10, "output_length": 1}],
            "auto",
            r":1: timestamp: must be a number >= 0",
        ),
        (
            [{"timestamp": 0, "input_length": 10, "output_length": 0}],
            "mooncake",
            r":1: output_length",
        ),
        (
            [{"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": ["a"]}],
            "auto",
            r":1: hash_ids",
        ),
        ([{"timestamp_s": 1.0, "input_tokens": 3}], "headway", r":1: output_tokens"),
        ([[1, 2, 3]], "auto", r":1: must be a JSON object"),
        ([""], "auto", "no records"),
        (
            [{"timestamp_s": 1.0, "input_tokens": 3, "output_tokens": 1}],
            "csv",
            "format: must be one of",
        ),
    ],
    ids=[
        "bad-json",
        "string-length",
        "negative-time",
        "zero-output",
        "bad-hash",
        "missing-field",
        "not-object",
        "empty",
        "bad-format",
    ],
)
def test_trace_errors_name_line_and_field(
    tmp_path: Path, rows: list[object], fmt: str, match: str
) -> None:
    path = write_lines(tmp_path / "t.jsonl", rows)
    with pytest.raises(TraceFormatError, match=match):
        read_trace(path, fmt)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="cannot read"):
        read_trace(tmp_path / "absent.jsonl")


def test_sharegpt(tmp_path: Path) -> None:
    data = [
        {
            "id": "a",
            "conversations": [
                {"from": "system", "value": "be nice"},
                {"from": "human", "value": "what is a replica?"},
                {"from": "gpt", "value": "a copy of the model."},
                {"from": "human", "value": "and a router?"},
            ],
        },
        {"id": "b", "conversations": [{"from": "human", "value": "only a question"}]},
        {"conversations": [{"from": "user", "value": "q"}, {"from": "assistant", "value": "r"}]},
    ]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    assert read_sharegpt(path) == [
        ShareGptRecord("a", "what is a replica?", "a copy of the model."),
        ShareGptRecord("2", "q", "r"),  # no id: the array index
    ]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"conversations": []}, "must be a JSON array"),
        ([{"id": "x"}], r"\[0\]\.conversations: must be a list"),
        ([{"conversations": [{"from": "human", "value": 3}]}], r"\[0\]\.conversations\[0\]\.value"),
        ([{"conversations": [{"value": "x"}]}], r"\[0\]\.conversations\[0\]\.from"),
        ([{"conversations": []}, "x"], r"\[1\]: must be an object"),
    ],
    ids=["not-array", "no-conversations", "bad-value", "no-from", "not-object"],
)
def test_sharegpt_errors(tmp_path: Path, data: object, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TraceFormatError, match=match):
        read_sharegpt(path)


def test_sharegpt_not_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("[\n{oops")
    with pytest.raises(TraceFormatError, match=r"bad.json:2: not JSON"):
        read_sharegpt(path)
