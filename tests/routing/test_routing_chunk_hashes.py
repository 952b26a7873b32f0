"""Approximate prefix keys (routing/prefix/chunks.py) against their definition: BLAKE2b
(8 bytes) of the parent digest + the chunk's UTF-8 bytes, chained, full chunks only."""

from __future__ import annotations

import hashlib

import pytest

from headway.routing.prefix.chunks import chunk_hashes


def reference(text: str, chunk_chars: int, salt: str | None) -> tuple[int, ...]:
    parent = b"headway-chunk-root" + (b"" if salt is None else b"\x00" + salt.encode())
    out = []
    for i in range(0, len(text) - chunk_chars + 1, chunk_chars):
        chunk = text[i : i + chunk_chars].encode("utf-8", "surrogatepass")
        parent = hashlib.blake2b(parent + chunk, digest_size=8).digest()
        out.append(int.from_bytes(parent, "big"))
    return tuple(out)


@pytest.mark.parametrize(
    ("text", "chunk_chars", "salt"),
    [
        ("abcdefgh" * 100, 256, None),  # ASCII: sliced from one encoding
        ("abcdefgh" * 100, 7, "tenant"),
        ("naïve café 漢字 " * 60, 16, None),  # multi-byte characters: chunked by characters
        ("a" * 255, 256, None),  # no full chunk
        ("", 4, None),
    ],
    ids=["ascii", "ascii-salt", "non-ascii", "short", "empty"],
)
def test_chunk_hashes_match_their_definition(text: str, chunk_chars: int, salt: str | None) -> None:
    assert chunk_hashes(text, chunk_chars, salt) == reference(text, chunk_chars, salt)


def test_equal_prefixes_give_equal_leading_keys() -> None:
    a = chunk_hashes("x" * 64 + "tail one", 16)
    b = chunk_hashes("x" * 64 + "other tail", 16)
    assert a[:4] == b[:4] and len(a) == len(b) == 4
