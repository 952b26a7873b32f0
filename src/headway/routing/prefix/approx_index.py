"""`ApproxPrefixIndex`: the chunk hashes of the prompts this gateway routed, per endpoint.

Approximate prefix-aware routing without engine support: after each committed
decision the routing plugins record the request's `chunk_hashes` (chained hashes of
fixed-size text chunks, computed by the gateway) on the chosen endpoint, betting the
engine still caches that prefix. The bet is wrong when the engine evicted it, when
another gateway process sent the traffic, or when the chunking does not line up with
the engine's blocks; the precise `KvBlockIndex` has none of these problems.

Invariants (checked by tests/routing/test_routing_approx_index.py with Hypothesis):

* Bounded memory: no endpoint ever holds more than `max_entries_per_endpoint` hashes;
  the least recently RECORDED hash goes first (matching never reorders, so a
  decision stays a pure read).
* `record` writes a request's hashes last-to-first, so the request's first chunk is
  the most recent: chained prefixes are shared by more prompts near their head, and
  losing a head would break the leading run of every longer match (the same reason
  radix-tree caches evict leaves first).
* `match_lengths` counts only the LEADING run of the request's hashes an endpoint
  holds (stops at the first miss).

Memory: about `BYTES_PER_ENTRY` bytes per recorded hash (an OrderedDict slot with its
linked-list node plus a 64-bit int object, measured with tracemalloc on CPython 3.11),
so the default bound of 32,768 entries costs about 5 MB per endpoint. With 256-char
chunks (~64 tokens) that covers ~2M prompt tokens per endpoint, more than a typical
engine's KV cache holds, so the bound rarely evicts what the engine still has.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from itertools import takewhile

DEFAULT_MAX_ENTRIES_PER_ENDPOINT = 32_768
BYTES_PER_ENTRY = 150  # estimate, see the module docstring


class ApproxPrefixIndex:
    """Per endpoint, an LRU set of recorded chunk hashes with a hard size bound."""

    __slots__ = ("_entries", "_last_recorded", "max_entries_per_endpoint")

    def __init__(self, max_entries_per_endpoint: int = DEFAULT_MAX_ENTRIES_PER_ENDPOINT) -> None:
        if max_entries_per_endpoint < 1:
            raise ValueError(
                f"max_entries_per_endpoint: must be >= 1, got {max_entries_per_endpoint}"
            )
        self.max_entries_per_endpoint = max_entries_per_endpoint
        # endpoint -> hashes, least recently recorded first
        self._entries: dict[str, OrderedDict[int, None]] = {}
        # (endpoint, hashes object) of the last record: several plugins of one handler
        # observe the same committed decision; recording it again changes nothing.
        self._last_recorded: tuple[str, Sequence[int]] | None = None

    def record(self, endpoint_id: str, hashes: Sequence[int]) -> None:
        """`endpoint_id` was sent a prompt whose chunk hashes are `hashes`."""
        if not hashes:
            return
        last = self._last_recorded
        if last is not None and last[1] is hashes and last[0] == endpoint_id:
            return
        self._last_recorded = (endpoint_id, hashes)
        entries = self._entries.get(endpoint_id)
        if entries is None:
            entries = self._entries[endpoint_id] = OrderedDict()
        for h in reversed(hashes):
            if h in entries:
                entries.move_to_end(h)
            else:
                entries[h] = None
        bound = self.max_entries_per_endpoint
        while len(entries) > bound:
            entries.popitem(last=False)

    def match_lengths(self, hashes: Sequence[int], endpoint_ids: Iterable[str]) -> dict[str, int]:
        """For each endpoint, how many LEADING hashes of `hashes` it holds. A pure read."""
        out: dict[str, int] = {}
        for e in endpoint_ids:
            entries = self._entries.get(e)
            # takewhile + len: the scan runs in C, stopping at the first miss
            out[e] = len(list(takewhile(entries.__contains__, hashes))) if entries else 0
        return out

    def remove_endpoint(self, endpoint_id: str) -> None:
        """Forget everything recorded for `endpoint_id` (it left the pool)."""
        self._entries.pop(endpoint_id, None)
        self._last_recorded = None

    def num_entries(self, endpoint_id: str) -> int:
        entries = self._entries.get(endpoint_id)
        return 0 if entries is None else len(entries)

    def entries_of(self, endpoint_id: str) -> tuple[int, ...]:
        """`endpoint_id`'s hashes, least recently recorded first (a copy)."""
        return tuple(self._entries.get(endpoint_id, ()))

    def endpoint_ids(self) -> frozenset[str]:
        return frozenset(self._entries)

    def estimated_bytes(self) -> int:
        """Rough memory held, `BYTES_PER_ENTRY` per entry."""
        return BYTES_PER_ENTRY * sum(len(v) for v in self._entries.values())
