"""KV-cache events: what a block pool reports, and vLLM's ZMQ wire encoding of them.

vLLM publishes batches as a ZMQ multipart message ``[topic, seq (8-byte big-endian),
payload]`` where payload is msgpack. Two struct encodings exist:

* ``map`` (vLLM 0.32): the batch is an array ``[ts, events, data_parallel_rank]`` and
  each event a map tagged ``{"type": "BlockStored", ...}``; fields at their defaults
  are omitted.
* ``array`` (older vLLM): each event an array whose first element is the tag, fields
  positional.

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


@dataclass(frozen=True)
class BlockStored:
    """Blocks newly cached, in chain order; `parent_block_hash` precedes the first."""

    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    token_ids: tuple[int, ...]
    block_size: int
    lora_id: int | None = None
    medium: str | None = DEFAULT_MEDIUM
    lora_name: str | None = None
    extra_keys: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class BlockRemoved:
    """Blocks evicted from the cache."""

    block_hashes: tuple[int, ...]
    medium: str | None = DEFAULT_MEDIUM


@dataclass(frozen=True)
class AllBlocksCleared:
    """The whole cache was reset."""


KvEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(frozen=True)
class EventBatch:
    """Events from one engine step."""

    ts: float
    events: tuple[KvEvent, ...]
    data_parallel_rank: int | None = None
    unknown_event_types: tuple[str, ...] = field(default=())


class WireEncoding(StrEnum):
    MAP = "map"
    ARRAY = "array"


# Positional field order of the older array encoding (tag first).
_ARRAY_FIELDS: dict[str, tuple[str, ...]] = {
    "BlockStored": (
        "block_hashes",
        "parent_block_hash",
        "token_ids",
        "block_size",
        "lora_id",
        "medium",
        "lora_name",
        "extra_keys",
    ),
    "BlockRemoved": ("block_hashes", "medium"),
    "AllBlocksCleared": (),
}
_DEFAULTS: dict[str, Any] = {
    "lora_id": None,
    "medium": DEFAULT_MEDIUM,
    "lora_name": None,
    "extra_keys": None,
}


class KvEventDecodeError(ValueError):
    """A payload that is not a KV-event batch in either known encoding."""


def _event_fields(ev: KvEvent) -> tuple[str, dict[str, Any]]:
    if isinstance(ev, BlockStored):
        return "BlockStored", {
            "block_hashes": list(ev.block_hashes),
            "parent_block_hash": ev.parent_block_hash,
            "token_ids": list(ev.token_ids),
            "block_size": ev.block_size,
            "lora_id": ev.lora_id,
            "medium": ev.medium,
            "lora_name": ev.lora_name,
            "extra_keys": list(ev.extra_keys) if ev.extra_keys is not None else None,
        }
    if isinstance(ev, BlockRemoved):
        return "BlockRemoved", {"block_hashes": list(ev.block_hashes), "medium": ev.medium}
    return "AllBlocksCleared", {}


def encode_batch(batch: EventBatch, encoding: WireEncoding = WireEncoding.MAP) -> bytes:
    """msgpack payload of `batch` in the chosen encoding."""
    events: list[Any] = []
    for ev in batch.events:
        tag, fields = _event_fields(ev)
        if encoding == WireEncoding.MAP:
            body: dict[str, Any] = {"type": tag}
            for k, v in fields.items():
                # Fields at their defaults are omitted, as msgspec's omit_defaults does.
                if k in _DEFAULTS and v == _DEFAULTS[k]:
                    continue
                body[k] = v
            events.append(body)
        else:
            events.append([tag, *(fields[k] for k in _ARRAY_FIELDS[tag])])
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
        names = _ARRAY_FIELDS.get(tag, ())
        return tag, dict(zip(names, raw_ev[1:], strict=False))
    raise KvEventDecodeError(f"event is neither a tagged map nor a tagged array: {raw_ev!r:.80}")


def _hashes(values: Sequence[int | bytes]) -> tuple[int, ...]:
    return tuple(normalize_event_hash(v) for v in values)


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
            extra_keys=tuple(extra) if extra is not None else None,
        )
    if tag == "BlockRemoved":
        return BlockRemoved(
            _hashes(f.get("block_hashes") or ()), medium=f.get("medium", DEFAULT_MEDIUM)
        )
    if tag == "AllBlocksCleared":
        return AllBlocksCleared()
    return None
