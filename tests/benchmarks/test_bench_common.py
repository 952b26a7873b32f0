"""benchmarks/_common.py helpers that the engine-tier benchmarks rely on."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

from bench_smoke import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from _common import sse_json


class _Response:
    def __init__(self, lines: list[bytes]) -> None:
        self._lines = lines

    @property
    def content(self) -> AsyncIterator[bytes]:
        async def gen() -> AsyncIterator[bytes]:
            for line in self._lines:
                yield line

        return gen()


def test_sse_json_yields_data_objects_only() -> None:
    resp = _Response(
        [b'data: {"a": 1}\n', b"\n", b": comment\n", b'data: {"b": 2}\r\n', b"data: [DONE]\n"]
    )

    async def collect() -> list[object]:
        return [x async for x in sse_json(resp)]

    assert asyncio.run(collect()) == [{"a": 1}, {"b": 2}]
