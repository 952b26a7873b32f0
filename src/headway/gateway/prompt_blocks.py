"""From a completion request to the prefix keys routing matches on.

* Precise mode (`block_hashes`): the prompt is rendered and tokenized exactly as the
  engine does (the Llama-3 chat template of `core.tokenizer`, as the simulator applies
  it; the configured tokenizer, default the shipped one), then hashed with vLLM's
  chained `sha256_cbor` block hashes (`core.block_hash`) for the engine's block size
  and hash seed (`prompt.hash_seed` = the engines' PYTHONHASHSEED), the request's
  `cache_salt` as block 0's extra key. Only blocks that can be a cache hit are kept:
  vLLM never serves the last prompt token from cache, so at most
  `(num_prompt_tokens - 1) // block_size` blocks. The hashes are the 64-bit ints KV
  events carry. Not computed when the block size is unknown yet, for prompts given as
  something other than text or token ids, or when the pool has no KV events.
* Approximate mode (`chunk_hashes`, always computed): the rendered prompt cut into
  `prompt.chunk_chars`-character chunks (full chunks only), each chunk's hash chained
  on the previous one (BLAKE2b, 8 bytes), so equal hashes mean equal prefixes. A
  `cache_salt` seeds the chain. Token-id prompts are chunked by `chunk_chars // 4` ids.

Results are cached (LRU, keyed by a digest of the rendered prompt, the salt and the
block size), and prompts with `prompt.thread_min_bytes` or more to tokenize are
tokenized in a worker thread (with `encode_batch`, which releases the GIL) so a large
prompt does not stall the event loop. Chat prompts count only the messages not in the
chat encoder's piece cache: a long system prompt seen before costs a few dict lookups
and the block hashes' memo lookups (~0.5 ms for 6k tokens), less than the thread
hop's wait for the GIL behind a busy loop. Cost here: ~0.3 ms of CPU per KB of prompt (docs/collectors.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from headway.core.block_hash import BlockHasher, BlockHashMemo, to_event_int
from headway.core.tokenizer import ChatEncoder, ChatTemplate, ChatTemplateError, Tokenizer
from headway.gateway.config import PromptConfig
from headway.routing.prefix.chunks import chunk_hashes, id_chunk_hashes

_MASK_64 = (1 << 64) - 1  # token ids are the client's: any int must hash, not raise

_CHARS_PER_TOKEN = 4  # for chunking token-id prompts


@dataclass(frozen=True)
class PromptInfo:
    """What routing needs from a prompt."""

    num_prompt_tokens: int | None  # exact, when tokenized
    block_hashes: tuple[int, ...]  # precise mode; () when not computed
    chunk_hashes: tuple[int, ...]  # approximate mode
    num_chars: int = 0  # the rendered prompt's length (4 per token for token-id prompts)


@dataclass(frozen=True)
class _Prompt:
    text: str | None
    token_ids: tuple[int, ...] | None
    salt: str | None
    # Chat prompts: the messages `text` was rendered from, tokenized message by message.
    messages: Sequence[Mapping[str, Any]] | None = None
    add_generation_prompt: bool = True


_EMPTY = PromptInfo(None, (), (), 0)


def prompt_of(data: Mapping[str, Any], *, is_chat: bool) -> _Prompt | None:
    """The prompt as the engine would see it: rendered chat text, completion text, or
    token ids; None when it cannot be read (the engine will answer the error)."""
    salt = data.get("cache_salt")
    salt = salt if isinstance(salt, str) and salt else None
    if is_chat:
        messages = data.get("messages")
        if not isinstance(messages, list):
            return None
        add_generation_prompt = data.get("add_generation_prompt", True)
        try:
            text = ChatTemplate().render(
                messages, add_generation_prompt=add_generation_prompt is not False
            )
        except ChatTemplateError:
            return None
        return _Prompt(text, None, salt, messages, add_generation_prompt is not False)
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return _Prompt(prompt, None, salt)
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return _Prompt(None, tuple(prompt), salt)
    return None


def precise_block_hashes(
    token_ids: Sequence[int],
    block_size: int,
    seed: str | None,
    salt: str | None = None,
    memo: BlockHashMemo | None = None,
) -> tuple[int, ...]:
    """vLLM's event hashes of the prompt's blocks that can be cache hits: the full
    blocks of all prompt tokens but the last."""
    num_blocks = max(0, len(token_ids) - 1) // block_size
    if num_blocks == 0:
        return ()
    hasher = BlockHasher(block_size, seed, memo=memo)
    first = (("cache_salt", salt),) if salt else None
    digests = hasher.extend([], token_ids[: num_blocks * block_size], extra_keys_first_block=first)
    return tuple(to_event_int(d) for d in digests)


class TurnHashCache:
    """The event hashes of chat prompts' leading turns, keyed by those turns.

    Consecutive prompts repeat leading turns (a system prompt; a conversation's
    earlier turns), and equal leading turns encode to equal leading token ids
    (`ChatEncoder.encode_turns`), hence equal block hashes. So the hashes of the
    blocks that lie wholly within each turn boundary are kept, and a prompt starts
    from the longest boundary cached: ~20 us for a 6k-token system prompt instead of
    ~0.4 ms of per-block memo lookups. Keys carry the block size, hash seed and cache
    salt. Bounded (LRU); a lock guards it (the reader also computes in a thread).
    """

    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Any, tuple[tuple[bytes, ...], tuple[int, ...]]] = OrderedDict()
        self._lock = threading.Lock()
        self.num_hits = 0

    def hashes(
        self,
        token_ids: Sequence[int],
        turns: Sequence[tuple[str, str, int]],
        block_size: int,
        seed: str | None,
        salt: str | None,
        memo: BlockHashMemo | None = None,
    ) -> tuple[int, ...]:
        """`precise_block_hashes(token_ids, ...)` for a chat prompt with these turns."""
        num_blocks = max(0, len(token_ids) - 1) // block_size
        if num_blocks == 0:
            return ()
        base = (block_size, seed, salt)
        keys: list[tuple[Any, int]] = []  # (key, blocks wholly inside) per turn boundary
        prefix: tuple[tuple[str, str], ...] = ()
        for role, text, num_tokens in turns:
            prefix = (*prefix, (role, text))
            keys.append(((base, prefix), min(num_tokens // block_size, num_blocks)))
        digests: list[bytes] = []
        events: list[int] = []
        with self._lock:
            for key, _ in reversed(keys):
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    self.num_hits += 1
                    digests = list(entry[0][:num_blocks])
                    events = list(entry[1][:num_blocks])
                    break
        offset = len(digests) * block_size
        first = (("cache_salt", salt),) if salt else None
        BlockHasher(block_size, seed, memo=memo).extend(
            digests,
            token_ids[offset : num_blocks * block_size],
            extra_keys_first_block=first,
            token_offset=offset,
        )
        events += [to_event_int(d) for d in digests[len(events) :]]
        with self._lock:
            for key, num_inside in keys:
                if num_inside and key not in self._entries:
                    self._entries[key] = (tuple(digests[:num_inside]), tuple(events[:num_inside]))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return tuple(events)


class _GilFreeEncoder:
    """The tokenizer, encoding through `encode_batch` where it has one: the `tokenizers`
    library holds the GIL through `encode` but releases it in `encode_batch`, and only
    the latter lets the event loop run while a worker thread tokenizes."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._batch = getattr(tokenizer, "encode_batch", None)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.vocab_size

    @property
    def eos_token_id(self) -> int:
        return self._tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        if self._batch is not None:
            return list(self._batch([text])[0])
        return self._tokenizer.encode(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._tokenizer.decode(token_ids)


class PromptReader:
    """Computes `PromptInfo` for requests, with an LRU cache and a worker thread for
    large prompts."""

    def __init__(self, config: PromptConfig, tokenizer: Tokenizer) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self._cache: OrderedDict[bytes, PromptInfo] = OrderedDict()
        self._executor: ThreadPoolExecutor | None = None
        # Consecutive prompts repeat earlier messages and prefixes: tokenize message by
        # message (checked against whole-prompt tokenization) and look up the digests
        # of blocks hashed before.
        self._encoder = _GilFreeEncoder(tokenizer)
        # The periodic whole-prompt checks run in the worker thread after the request
        # has its info (`_check_later`), not on its path.
        self._chat = ChatEncoder(self._encoder, defer_periodic_checks=True)
        self._checks: set[asyncio.Future[bool]] = set()
        self.num_background_checks = 0
        self._memo = BlockHashMemo()
        self._turn_hashes = TurnHashCache()
        self.num_cache_hits = 0
        self.num_threaded = 0

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def read(
        self,
        data: Mapping[str, Any],
        *,
        is_chat: bool,
        block_size: int | None,
        tokenize: bool,
    ) -> PromptInfo:
        """The prompt's info; `tokenize`: count tokens (and, with a `block_size`,
        compute precise block hashes)."""
        prompt = prompt_of(data, is_chat=is_chat)
        if prompt is None:
            return _EMPTY
        key = self._key(prompt, block_size if tokenize else -1)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.num_cache_hits += 1
            return cached
        if prompt.messages is not None and prompt.token_ids is None:
            # Chat prompts are encoded piece by piece from a cache: only what is not
            # cached yet is worth a thread hop (which waits for the GIL behind a busy
            # event loop); a long system prompt seen before is not.
            size = self._chat.num_uncached_chars(prompt.messages, prompt.add_generation_prompt)
        else:
            size = len(prompt.text) if prompt.text is not None else 4 * len(prompt.token_ids or ())
        if tokenize and size >= self.config.thread_min_bytes:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(2, thread_name_prefix="headway-prompt")
            self.num_threaded += 1
            info = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.compute, prompt, block_size, tokenize
            )
        else:
            info = self.compute(prompt, block_size, tokenize)
        if self.config.cache_entries > 0:
            self._cache[key] = info
            if len(self._cache) > self.config.cache_entries:
                self._cache.popitem(last=False)
        due = self._chat.take_due_check()
        if due is not None:
            self._check_later(*due)
        return info

    def _check_later(self, rendered: str, ids: list[int]) -> None:
        """Verify a piecewise encoding in the worker thread. On a mismatch the encoder
        has switched to whole-prompt encoding; what was read piecewise is forgotten, so
        later reads compute afresh (the calls already routed keep their info: a wrong
        block hash costs a cache hit predicted, nothing else)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(2, thread_name_prefix="headway-prompt")
        self.num_background_checks += 1
        check = asyncio.get_running_loop().run_in_executor(
            self._executor, self._chat.verify, rendered, ids
        )
        self._checks.add(check)
        check.add_done_callback(self._checked)

    def _checked(self, check: asyncio.Future[bool]) -> None:
        self._checks.discard(check)
        if check.cancelled() or check.exception() is not None:
            return  # (a tokenizer that fails here fails the next read, which says why)
        if not check.result():
            self._cache.clear()
            self._turn_hashes = TurnHashCache()

    def compute(self, prompt: _Prompt, block_size: int | None, tokenize: bool) -> PromptInfo:
        chunk = self.config.chunk_chars
        if prompt.text is not None:
            chunks = chunk_hashes(prompt.text, chunk, prompt.salt)
            num_chars = len(prompt.text)
        else:
            chunks = id_chunk_hashes(
                prompt.token_ids or (), max(1, chunk // _CHARS_PER_TOKEN), prompt.salt
            )
            num_chars = _CHARS_PER_TOKEN * len(prompt.token_ids or ())
        if not tokenize:
            return PromptInfo(None, (), chunks, num_chars)
        ids: Sequence[int]
        turns: list[tuple[str, str, int]] = []
        if prompt.token_ids is not None:
            ids = prompt.token_ids
        elif prompt.messages is not None:
            ids, turns = self._chat.encode_turns(prompt.messages, prompt.add_generation_prompt)
        else:
            assert prompt.text is not None
            ids = self._encoder.encode(prompt.text)
        blocks: tuple[int, ...] = ()
        if block_size and turns:
            blocks = self._turn_hashes.hashes(
                ids, turns, block_size, self.config.hash_seed, prompt.salt, self._memo
            )
        elif block_size:
            blocks = precise_block_hashes(
                ids, block_size, self.config.hash_seed, prompt.salt, self._memo
            )
        return PromptInfo(len(ids), blocks, chunks, num_chars)

    @staticmethod
    def _key(prompt: _Prompt, block_size: int | None) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        if prompt.text is not None:
            h.update(b"t" + prompt.text.encode("utf-8", "surrogatepass"))
        else:
            h.update(
                b"i" + b"".join((t & _MASK_64).to_bytes(8, "big") for t in prompt.token_ids or ())
            )
        h.update(b"\x00s" + (prompt.salt or "").encode("utf-8", "surrogatepass"))
        h.update(b"\x00b" + str(block_size).encode())
        return h.digest()
