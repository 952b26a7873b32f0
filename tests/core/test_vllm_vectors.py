"""Differential tests against vectors produced by vLLM 0.32's own code
(scripts/gen_vllm_vectors.py): block hashes, the engine's block hashing of requests
with LoRA / cache salt, and KV-event payloads byte for byte."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from headway.core.block_hash import BlockHasher, hash_block, none_hash, to_event_int
from headway.core.block_pool import BlockPool, PrefixHit
from headway.core.kv_cache_manager import KvCacheManager
from headway.core.kv_events import WireEncoding, decode_batch, encode_batch
from headway.core.sequence import EngineRequest, Sequence

VECTORS = Path(__file__).parent / "vectors"
HASHES = json.loads((VECTORS / "vllm_block_hashes.json").read_text())
EVENTS = json.loads((VECTORS / "vllm_kv_events.json").read_text())

CBOR_CASES = [c for c in HASHES["cases"] if c["hash_fn"] == "sha256_cbor"]
# Requests whose extra keys Headway models (no images or prompt embeddings).
REQUEST_CASES = [
    c
    for c in CBOR_CASES
    if "request" in c and not {"mm_features", "prompt_embeds"} & set(c["request"])
]


@pytest.mark.parametrize("case", CBOR_CASES, ids=[c["name"] for c in CBOR_CASES])
def test_block_hashes_match_vllm(case: dict[str, Any]) -> None:
    seed = case["PYTHONHASHSEED"]
    assert none_hash(seed).hex() == case["none_hash_hex"]
    for block in case["blocks"]:
        extra = ast.literal_eval(block["extra_keys_repr"])
        digest = hash_block(bytes.fromhex(block["parent_used_hex"]), block["token_ids"], extra)
        assert digest.hex() == block["digest_hex"], f"block {block['index']}"
        assert to_event_int(digest) == block["event_block_hash"]


@pytest.mark.parametrize("case", REQUEST_CASES, ids=[c["name"] for c in REQUEST_CASES])
def test_engine_request_hashing_matches_vllm(case: dict[str, Any]) -> None:
    """The engine's own path (Sequence -> KvCacheManager) builds vLLM's tagged keys."""
    req = case["request"]
    lora = req.get("lora_request") or {}
    request = EngineRequest(
        request_id="r",
        prompt_token_ids=tuple(case["token_ids"]),
        max_tokens=1,
        cache_salt=req.get("cache_salt"),
        lora_name=lora.get("lora_name"),
        lora_id=lora.get("lora_int_id"),
        lora_path=lora.get("lora_path", ""),
    )
    seq = Sequence(request, 0)
    manager = KvCacheManager(
        BlockPool(64, case["block_size"]), BlockHasher(case["block_size"], case["PYTHONHASHSEED"])
    )
    manager.update_hashes(seq)
    assert [d.hex() for d in seq.block_hashes] == [b["digest_hex"] for b in case["blocks"]]
    for b in case["blocks"]:
        assert seq.event_extra_keys(b["index"]) == ast.literal_eval(b["event_extra_keys_repr"])


def _messages(form: str) -> list[dict[str, Any]]:
    return EVENTS["encodings"][form]["messages"]


def _exact(msg: dict[str, Any]) -> bool:
    """Messages Headway re-encodes byte for byte: no fields newer than it models
    (session_id, locality, ...), and hashes sent as ints (bytes decode to ints)."""
    raw = json.dumps(msg["payload_decoded"])
    return not any(k in raw for k in ("session_id", "locality", "ownership", "$bytes"))


FORMS = [("map_form", WireEncoding.MAP), ("array_form", WireEncoding.ARRAY)]
ALL = [(f, enc, m) for f, enc in FORMS for m in _messages(f)]


@pytest.mark.parametrize(
    ("form", "encoding", "msg"), ALL, ids=[f"{f}-{m['name']}" for f, _, m in ALL]
)
def test_vllm_payload_decodes_and_reencodes_identically(
    form: str, encoding: WireEncoding, msg: dict[str, Any]
) -> None:
    payload = bytes.fromhex(msg["frames_hex"][2])
    batch = decode_batch(payload)
    assert len(batch.events) == len(msg["payload_decoded"][1])
    if _exact(msg):
        assert encode_batch(batch, encoding).hex() == payload.hex()


def _engine_events() -> list[bytes]:
    """Replay vLLM's generator scenario through Headway's block pool: a 40-token prompt
    is prefilled, then ten decode tokens (1000..) complete block 2."""
    manager = KvCacheManager(BlockPool(12, 16), BlockHasher(16))
    seq = Sequence(EngineRequest("r", tuple(range(40)), max_tokens=10, ignore_eos=True), 0)
    manager.update_hashes(seq)
    assert manager.allocate(seq, 40, PrefixHit(()))
    seq.num_computed_tokens = 40
    manager.cache_full_blocks(seq)
    first = manager.pool.drain_events()
    for token in range(1000, 1008):
        seq.append_output(token)
    manager.update_hashes(seq)
    assert manager.allocate(seq, 8, PrefixHit(()))
    seq.num_computed_tokens = 48
    manager.cache_full_blocks(seq)
    second = manager.pool.drain_events()
    from headway.core.kv_events import EventBatch

    map_msgs = {m["name"]: m for m in _messages("map_form")}
    ts = [
        map_msgs[n]["payload_decoded"][0]
        for n in ("engine_prefill_store", "engine_decode_store_with_parent")
    ]
    return [
        encode_batch(EventBatch(ts[0], tuple(first), 0)),
        encode_batch(EventBatch(ts[1], tuple(second), 0)),
    ]


def test_block_pool_events_are_byte_identical_to_vllm() -> None:
    map_msgs = {m["name"]: m for m in _messages("map_form")}
    ours = _engine_events()
    assert ours[0].hex() == map_msgs["engine_prefill_store"]["frames_hex"][2]
    assert ours[1].hex() == map_msgs["engine_decode_store_with_parent"]["frames_hex"][2]


def test_replay_frames_documented() -> None:
    replay = EVENTS["encodings"]["map_form"]["replay"][0]["reply_messages_hex"]
    assert replay[-1] == ["", "", "ffffffffffffffff", ""]
    assert all(len(m) == 4 for m in replay)
