"""Prompt -> prefix keys: precise block hashes equal vLLM's vectors and the simulator's
(stored blocks and reported cached_tokens), the last-token rule, salt and seed, text
chunk hashes, and the reader's cache and worker thread."""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import pytest
from sim_harness import MODEL, get, post

from headway.core.tokenizer import BEGIN_OF_TEXT, ChatEncoder, ChatTemplate
from headway.gateway.config import PromptConfig
from headway.gateway.prompt_blocks import (
    PromptReader,
    TurnHashCache,
    chunk_hashes,
    id_chunk_hashes,
    precise_block_hashes,
    prompt_of,
)
from headway.resources.tokenizer import default_tokenizer

# vLLM 0.32, sha256_cbor, PYTHONHASHSEED unset: tokens 0..15 and 16..31 (REFERENCE.md).
VLLM_BLOCKS = (2233398808101521225, 17911472383915781900)

LAST_TOKEN_RULE = {
    "31-tokens": (31, VLLM_BLOCKS[:1]),
    "32-tokens-last-block-holds-the-last-token": (32, VLLM_BLOCKS[:1]),
    "33-tokens": (33, VLLM_BLOCKS),
    "16-tokens": (16, ()),
    "17-tokens": (17, VLLM_BLOCKS[:1]),
    "empty": (0, ()),
}


@pytest.mark.parametrize(("n", "expected"), LAST_TOKEN_RULE.values(), ids=LAST_TOKEN_RULE.keys())
def test_precise_hashes_match_vllm_vectors(n: int, expected: tuple[int, ...]) -> None:
    assert precise_block_hashes(list(range(n)), 16, None) == expected


def test_salt_and_seed_change_the_chain() -> None:
    ids = list(range(48))
    plain = precise_block_hashes(ids, 16, None)
    salted = precise_block_hashes(ids, 16, None, salt="tenant-a")
    seeded = precise_block_hashes(ids, 16, "0")
    assert len(plain) == len(salted) == len(seeded) == 2
    assert not set(plain) & set(salted) and not set(plain) & set(seeded)
    assert precise_block_hashes(ids, 32, None)[0] != plain[0]


CHUNKS = {
    "shared-prefix": ("a" * 20 + "X" * 8, "a" * 20 + "Y" * 8, 2),
    "diverge-in-first-chunk": ("b" + "a" * 19, "c" + "a" * 19, 0),
    "identical": ("a" * 40, "a" * 40, 4),
    "partial-chunk-ignored": ("a" * 19, "a" * 19, 1),
}


@pytest.mark.parametrize(("x", "y", "num_equal"), CHUNKS.values(), ids=CHUNKS.keys())
def test_chunk_hashes_are_chained(x: str, y: str, num_equal: int) -> None:
    hx, hy = chunk_hashes(x, 10), chunk_hashes(y, 10)
    assert len(hx) == len(x) // 10
    common = next((i for i, (a, b) in enumerate(zip(hx, hy, strict=False)) if a != b), None)
    assert (common if common is not None else min(len(hx), len(hy))) == num_equal
    assert chunk_hashes(x, 10, salt="s")[:1] != hx[:1] or not hx


def test_id_chunk_hashes() -> None:
    assert id_chunk_hashes(list(range(20)), 8) == id_chunk_hashes([*range(16), 9], 8)
    assert len(id_chunk_hashes(list(range(20)), 8)) == 2


def chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


PROMPTS = {
    "chat": (chat("hi"), True, ChatTemplate().render([{"role": "user", "content": "hi"}])),
    "chat-no-generation-prompt": (
        chat("hi", add_generation_prompt=False),
        True,
        ChatTemplate().render([{"role": "user", "content": "hi"}], add_generation_prompt=False),
    ),
    "completion-text": ({"prompt": "hello"}, False, "hello"),
    "completion-list-of-one": ({"prompt": ["hello"]}, False, "hello"),
    "bad-messages": ({"messages": [{"content": "x"}]}, True, None),
    "no-prompt": ({}, False, None),
}


@pytest.mark.parametrize(("data", "is_chat", "text"), PROMPTS.values(), ids=PROMPTS.keys())
def test_prompt_of(data: dict[str, Any], is_chat: bool, text: str | None) -> None:
    prompt = prompt_of(data, is_chat=is_chat)
    assert (prompt.text if prompt is not None else None) == text


def test_prompt_of_token_ids_and_salt() -> None:
    prompt = prompt_of({"prompt": [1, 2, 3], "cache_salt": "s"}, is_chat=False)
    assert prompt is not None and prompt.token_ids == (1, 2, 3) and prompt.salt == "s"


def test_reader_cache_and_thread() -> None:
    tok = default_tokenizer()
    inline = PromptReader(PromptConfig(thread_min_bytes=10**9), tok)
    threaded = PromptReader(PromptConfig(thread_min_bytes=100, cache_entries=1), tok)
    body = chat("lorem ipsum dolor sit amet " * 100)

    async def run(reader: PromptReader, block_size: int | None = 16) -> Any:
        return await reader.read(body, is_chat=True, block_size=block_size, tokenize=True)

    try:
        a = asyncio.run(run(inline))
        b = asyncio.run(run(threaded))
        assert a == b and a.num_prompt_tokens and len(a.block_hashes) > 10
        assert threaded.num_threaded == 1
        assert asyncio.run(run(inline)) == a and inline.num_cache_hits == 1
        # The block size is part of the key; an LRU of one entry forgets the first.
        c = asyncio.run(run(threaded, 32))
        assert len(c.block_hashes) == (a.num_prompt_tokens - 1) // 32
        asyncio.run(run(threaded))
        assert threaded.num_cache_hits == 0 and threaded.num_threaded == 3
        untokenized = asyncio.run(inline.read(body, is_chat=True, block_size=16, tokenize=False))
        assert untokenized.num_prompt_tokens is None and untokenized.block_hashes == ()
        assert untokenized.chunk_hashes == a.chunk_hashes
        text = prompt_of(body, is_chat=True)
        assert text is not None and untokenized.num_chars == a.num_chars == len(text.text or "")
    finally:
        inline.close()
        threaded.close()


@pytest.mark.parametrize(
    ("block_size", "salt"), [(16, None), (32, "tenant-a"), (7, None)], ids=["16", "32-salt", "7"]
)
def test_turn_hash_cache_equals_hashing_from_scratch(block_size: int, salt: str | None) -> None:
    """A conversation growing turn by turn, and a second one sharing its system
    prompt: every prompt's hashes equal `precise_block_hashes` of its token ids, and
    all but the first start from a cached turn boundary."""
    encoder = ChatEncoder(default_tokenizer(), num_checked=0, check_every=10**9)
    cache = TurnHashCache()
    system = {"role": "system", "content": "Tools: search, fetch, run. " * 40}
    conversations = [
        [system, {"role": "user", "content": "first question"}],
        [system, {"role": "user", "content": "first question"},
         {"role": "assistant", "content": "an answer"}, {"role": "user", "content": "next"}],
        [system, {"role": "user", "content": "another user's question"}],
        [{"role": "system", "content": " leading space"}, {"role": "user", "content": "q"}],
    ]  # fmt: skip
    for messages in conversations:
        ids, turns = encoder.encode_turns(messages)
        expected = precise_block_hashes(ids, block_size, "seed", salt)
        assert cache.hashes(ids, turns, block_size, "seed", salt) == expected
    assert cache.num_hits == 2  # the second and third conversations
    # A different salt or block size never reuses these entries.
    ids, turns = encoder.encode_turns(conversations[0])
    other = "other" if salt is None else None
    assert cache.hashes(ids, turns, block_size, "seed", other) == precise_block_hashes(
        ids, block_size, "seed", other
    )
    assert cache.num_hits == 2


def test_turn_hash_cache_is_bounded() -> None:
    encoder = ChatEncoder(default_tokenizer(), num_checked=0, check_every=10**9)
    cache = TurnHashCache(max_entries=3)
    for i in range(5):
        ids, turns = encoder.encode_turns([{"role": "user", "content": f"prompt {i} " * 20}])
        cache.hashes(ids, turns, 16, None, None)
    assert len(cache._entries) == 3


def test_reader_threads_only_uncached_work() -> None:
    """A long system prompt seen before is encoded from the piece cache on the loop
    (no thread hop); a long one not seen before goes to the worker thread. The chat
    encoder's whole-prompt checks (the first 16 prompts, then every 64th) count in
    full."""
    system = "You are a careful agent with many tools. " * 200  # ~8 KB
    reader = PromptReader(PromptConfig(thread_min_bytes=4096), default_tokenizer())

    def body(system_text: str, question: str) -> dict[str, Any]:
        return {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": system_text},
                {"role": "user", "content": question},
            ],
        }

    async def read(b: dict[str, Any]) -> Any:
        return await reader.read(b, is_chat=True, block_size=16, tokenize=True)

    async def main() -> None:
        for i in range(16):  # checked against whole-prompt encoding: all threaded
            await read(body(system, f"warm-up question {i}"))
        assert reader.num_threaded == 16
        info = await read(body(system, "a new short question"))
        assert reader.num_threaded == 16  # only the question was new
        reader_fresh = PromptReader(PromptConfig(thread_min_bytes=10**9), default_tokenizer())
        try:
            assert (
                await reader_fresh.read(
                    body(system, "a new short question"), is_chat=True, block_size=16, tokenize=True
                )
                == info
            )  # the same info as encoding the prompt whole
        finally:
            reader_fresh.close()
        await read(body(system.replace("careful", "reckless"), "question"))
        assert reader.num_threaded == 17

    try:
        asyncio.run(main())
    finally:
        reader.close()


class _MergesMarkedPrompts:
    """The shipped tokenizer, except that a whole rendered prompt (it starts with the
    begin-of-text marker) containing MERGE encodes to something its pieces do not: a
    tokenizer that is additive until a rare input. Notes the thread of each whole
    encode."""

    def __init__(self) -> None:
        self._tok = default_tokenizer()
        self.vocab_size = self._tok.vocab_size
        self.eos_token_id = self._tok.eos_token_id
        self.whole_encode_threads: list[str] = []

    def encode(self, text: str) -> list[int]:
        if text.startswith(BEGIN_OF_TEXT) and text != BEGIN_OF_TEXT:  # (not its piece)
            self.whole_encode_threads.append(threading.current_thread().name)
            if "MERGE" in text:
                return [1, 2, 3]
        return self._tok.encode(text)

    def decode(self, token_ids: Any) -> str:
        return self._tok.decode(token_ids)


def test_reader_checks_periodically_off_the_request_path() -> None:
    """The first 16 prompts are checked inline; the 64th's check runs in the worker
    thread after its read returned. When that check finds a mismatch, the encoder
    switches to whole-prompt encoding and the reader forgets what it read piecewise."""
    tokenizer = _MergesMarkedPrompts()
    reader = PromptReader(PromptConfig(thread_min_bytes=10**9), tokenizer)

    async def read(i: int, text: str) -> Any:
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"{text} {i}"}]}
        return await reader.read(body, is_chat=True, block_size=16, tokenize=True)

    async def main() -> None:
        for i in range(63):
            await read(i, "question")
        assert tokenizer.whole_encode_threads == ["MainThread"] * 16
        assert reader._chat.is_piecewise and len(reader._cache) == 63
        piecewise = await read(63, "MERGE")  # the 64th: its check is due
        assert piecewise.num_prompt_tokens != 3  # answered piecewise, not checked inline
        assert reader.num_background_checks == 1
        await asyncio.gather(*reader._checks)
        await asyncio.sleep(0)  # the done-callback runs on the loop
        assert tokenizer.whole_encode_threads[16].startswith("headway-prompt")
        assert not reader._chat.is_piecewise
        assert len(reader._cache) == 0  # read piecewise: forgotten
        again = await read(63, "MERGE")
        assert again.num_prompt_tokens == 3  # now encoded whole

    try:
        asyncio.run(main())
    finally:
        reader.close()


@pytest.mark.parametrize("salt", [None, "tenant-a"], ids=["no-salt", "salt"])
def test_precise_hashes_equal_the_sims(kv_fleets, salt: str | None) -> None:  # type: ignore[no-untyped-def]
    url = kv_fleets.map.urls[1]
    extra = {"cache_salt": salt} if salt else {}
    body = chat(
        f"{uuid.uuid4().hex} " + "tell me about prefix caching " * 30, max_tokens=2, **extra
    )
    reader = PromptReader(PromptConfig(), default_tokenizer())
    try:
        info = asyncio.run(reader.read(body, is_chat=True, block_size=16, tokenize=True))
    finally:
        reader.close()
    assert info.num_prompt_tokens is not None and len(info.block_hashes) >= 10
    first = post(url, "/v1/chat/completions", body).json()
    assert first["usage"]["prompt_tokens"] == info.num_prompt_tokens
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert set(info.block_hashes) <= set(get(url, "/debug/cache").json()["block_hashes"])
    again = post(url, "/v1/chat/completions", body).json()
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 16 * len(info.block_hashes)
