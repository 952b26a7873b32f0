"""KV-cache events: what a block pool reports, and vLLM's ZMQ wire encoding of them.

vLLM publishes batches as a ZMQ multipart message ``[topic, seq (8-byte big-endian),
payload]`` where payload is msgpack. Two struct encodings exist:

* ``map`` (vLLM 0.32): the batch is an array ``[ts, events, data_parallel_rank]`` and
  each event a map tagged ``{"type": "BlockStored", ...}``; fields at their defaults
  are omitted.
* ``array`` (vLLM <= 0.23): each event an array whose first element is the tag, then
  every field positionally (None as nil).

Both are checked byte for byte against frames captured from vLLM's own publisher
(tests/core/vectors/vllm_kv_events.json).

`decode_batch` accepts both, tolerates unknown fields, and normalises block hashes
(ints, signed ints or raw digests) to unsigned 64-bit ints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgspec

from headway.core.block_hash import normalize_event_hash

DEFAULT_MEDIUM = "GPU"
FULL_ATTENTION = "full_attention"


@dataclass(frozen=True)
class BlockStored:
    """Blocks newly cached, in chain order; `parent_block_hash` precedes the first.

    `extra_keys` has one entry per block: None, or the block's extra hash keys in
    the untagged form vLLM publishes (LoRA name, (mm identifier, offset), cache salt).
    """

    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_id: int | None = None
    medium: str | None = DEFAULT_MEDIUM
    lora_name: str | None = None
    extra_keys: tuple[Any, ...] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None


@dataclass(frozen=True)
class BlockRemoved:
    """Blocks evicted from the cache."""

    block_hashes: tuple[int, ...]
    medium: str | None = DEFAULT_MEDIUM
    group_idx: int | None = None


@dataclass(frozen=True)
class AllBlocksCleared:
    """The whole cache was reset."""


KvEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True)
class EventBatch:
    """Events from one engine step."""

    ts: float
    events: tuple[KvEvent, ...]
    data_parallel_rank: int | None = None  # vLLM's publisher fills in its rank (0)
    unknown_event_types: tuple[str, ...] = field(default=())


class WireEncoding(StrEnum):
    MAP = "map"
    ARRAY = "array"


# Field order of each event (the array encoding's positions). Fields in _REQUIRED are
# always written in the map encoding (they have no default in vLLM 0.32, so None is
# sent as nil); the others are omitted when None, as msgspec's omit_defaults does.
_FIELDS: dict[str, tuple[str, ...]] = {
    "BlockStored": (
        "block_hashes",
        "parent_block_hash",
        "token_ids",
        "block_size",
        "lora_id",
        "medium",
        "lora_name",
        "extra_keys",
        "group_idx",
        "kv_cache_spec_kind",
        "kv_cache_spec_sliding_window",
    ),
    "BlockRemoved": ("block_hashes", "medium", "group_idx"),
    "AllBlocksCleared": (),
}
_REQUIRED = frozenset(_FIELDS["BlockStored"][:7])


class KvEventDecodeError(ValueError):
    """A payload that is not a KV-event batch in either known encoding."""


def _wire(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_wire(v) for v in value]
    return value


def encode_batch(batch: EventBatch, encoding: WireEncoding = WireEncoding.MAP) -> bytes:
    """msgpack payload of `batch`, byte-identical to vLLM's publisher: vLLM 0.32 for
    `MAP`, vLLM 0.23 (the last array-form release) for `ARRAY`."""
    events: list[Any] = []
    for ev in batch.events:
        tag = type(ev).__name__
        names = _FIELDS[tag]
        if encoding == WireEncoding.MAP:
            body: dict[str, Any] = {"type": tag}
            for name in names:
                value = getattr(ev, name)
                if value is not None or name in _REQUIRED:
                    body[name] = _wire(value)
            events.append(body)
        else:
            events.append([tag, *(_wire(getattr(ev, name)) for name in names)])
    return msgspec.msgpack.encode([batch.ts, events, batch.data_parallel_rank])


def decode_batch(payload: bytes) -> EventBatch:
    """Decode a payload of either encoding; unknown fields and event types are skipped."""
    try:
        raw = msgspec.msgpack.decode(payload)
    except msgspec.DecodeError as exc:
        raise KvEventDecodeError(f"not msgpack: {exc}") from exc
    if isinstance(raw, dict):
        ts, raw_events, dp_rank = raw.get("ts"), raw.get("events"), raw.get("data_parallel_rank")
    elif isinstance(raw, list) and len(raw) >= 2:
        ts, raw_events = raw[0], raw[1]
        dp_rank = raw[2] if len(raw) > 2 else None
    else:
        raise KvEventDecodeError("batch is neither [ts, events, rank] nor a map")
    if not isinstance(raw_events, list) or not isinstance(ts, int | float):
        raise KvEventDecodeError("batch has no event list or timestamp")
    events: list[KvEvent] = []
    unknown: list[str] = []
    for raw_ev in raw_events:
        tag, fields = _split_event(raw_ev)
        try:
            ev = _build_event(tag, fields)
        except (TypeError, ValueError) as exc:
            # A field of the wrong type (hashes not a list, a hash that is a string...).
            raise KvEventDecodeError(f"{tag}: malformed field: {exc}") from exc
        if ev is None:
            unknown.append(tag)
        else:
            events.append(ev)
    return EventBatch(float(ts), tuple(events), dp_rank, tuple(unknown))


def _split_event(raw_ev: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(raw_ev, dict):
        tag = raw_ev.get("type")
        if not isinstance(tag, str):
            raise KvEventDecodeError("event map without a 'type' tag")
        return tag, raw_ev
    if isinstance(raw_ev, list) and raw_ev and isinstance(raw_ev[0], str):
        tag = raw_ev[0]
        names = _FIELDS.get(tag, ())
        return tag, dict(zip(names, raw_ev[1:], strict=False))
    raise KvEventDecodeError(f"event is neither a tagged map nor a tagged array: {raw_ev!r:.80}")


def _hashes(values: Sequence[int | bytes]) -> tuple[int, ...]:
    return tuple(normalize_event_hash(v) for v in values)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _build_event(tag: str, f: dict[str, Any]) -> KvEvent | None:
    if tag == "BlockStored":
        parent = f.get("parent_block_hash")
        extra = f.get("extra_keys")
        return BlockStored(
            block_hashes=_hashes(f.get("block_hashes") or ()),
            parent_block_hash=normalize_event_hash(parent) if parent is not None else None,
            token_ids=tuple(f.get("token_ids") or ()),
            block_size=int(f.get("block_size") or 0),
            lora_id=f.get("lora_id"),
            medium=f.get("medium", DEFAULT_MEDIUM),
            lora_name=f.get("lora_name"),
            extra_keys=_frozen(extra) if extra is not None else None,
            group_idx=_opt_int(f.get("group_idx")),
            kv_cache_spec_kind=f.get("kv_cache_spec_kind"),
            kv_cache_spec_sliding_window=_opt_int(f.get("kv_cache_spec_sliding_window")),
        )
    if tag == "BlockRemoved":
        return BlockRemoved(
            _hashes(f.get("block_hashes") or ()),
            medium=f.get("medium", DEFAULT_MEDIUM),
            group_idx=_opt_int(f.get("group_idx")),
        )
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    return None


def _frozen(value: Any) -> Any:
    """Lists from msgpack back to tuples, so decoded events compare equal."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value
