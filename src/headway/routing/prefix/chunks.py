"""Approximate prefix keys: chained hashes of fixed-size chunks of a prompt.

The gateway cuts the rendered prompt into `chunk_chars`-character chunks (full chunks
only) and chains each chunk's BLAKE2b hash on the previous one, so equal hashes mean
equal prefixes; a `cache_salt` seeds the chain. Token-id prompts are chunked by ids.
The cluster simulation computes the same keys, so `approx-prefix` behaves alike live
and simulated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

DEFAULT_CHUNK_CHARS = 256  # about 64 tokens of English text
_ROOT = b"headway-chunk-root"
_MASK_64 = (1 << 64) - 1  # token ids are the client's: any int must hash, not raise


def chunk_hashes(text: str, chunk_chars: int, salt: str | None = None) -> tuple[int, ...]:
    """Chained 64-bit hashes of the full `chunk_chars`-character chunks of `text`."""
    parent = _root(salt)
    out = []
    blake2b, from_bytes = hashlib.blake2b, int.from_bytes
    end = len(text) - chunk_chars + 1
    if text.isascii():  # one character = one byte: encode once, slice bytes
        data = text.encode("ascii")
        for i in range(0, end, chunk_chars):
            parent = blake2b(parent + data[i : i + chunk_chars], digest_size=8).digest()
            out.append(from_bytes(parent, "big"))
        return tuple(out)
    for i in range(0, end, chunk_chars):
        parent = blake2b(
            parent + text[i : i + chunk_chars].encode("utf-8", "surrogatepass"), digest_size=8
        ).digest()
        out.append(from_bytes(parent, "big"))
    return tuple(out)


def id_chunk_hashes(
    token_ids: Sequence[int], chunk_tokens: int, salt: str | None = None
) -> tuple[int, ...]:
    """Like `chunk_hashes`, over token ids."""
    parent = _root(salt)
    out = []
    for i in range(0, len(token_ids) - chunk_tokens + 1, chunk_tokens):
        body = b"".join((t & _MASK_64).to_bytes(8, "big") for t in token_ids[i : i + chunk_tokens])
        parent = hashlib.blake2b(parent + body, digest_size=8).digest()
        out.append(int.from_bytes(parent, "big"))
    return tuple(out)


def _root(salt: str | None) -> bytes:
    return _ROOT if salt is None else _ROOT + b"\x00" + salt.encode("utf-8", "surrogatepass")
