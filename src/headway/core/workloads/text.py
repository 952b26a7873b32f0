"""Prompt text of exact token counts, built from the workload's tokenizer.

Like vLLM's random dataset, text is made by sampling token ids from the vocabulary with
the seeded generator and decoding them. To make lengths exact without re-encoding every
prompt, the ids are drawn from a *word pool*: tokens that decode to a space followed by
ASCII letters and that encode back to exactly themselves. A byte-level BPE pre-tokenizer
splits text before every " word", so a string of n pool words encodes to exactly n
tokens, and concatenating such strings adds their counts. The Llama-3 chat template puts
every message's content between "\\n\\n" and a special token, which the pre-tokenizer also
splits on, so

    prompt_tokens = BOS + sum(overhead(role) + content_tokens) + generation prompt

where overhead(role) is the token count of the template around an empty message. The
factory checks this additivity once against the real tokenizer (`is_additive`); for a
tokenizer where it does not hold, every prompt is counted by encoding its rendered
template (exact, slower) and pieces are trimmed and re-encoded to their lengths.

Shared pieces (system prompts, documents, trace blocks) are drawn from a generator seeded
by (seed, tag, index), so they are identical wherever they recur and independent of
iteration order; they are cached per factory.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from headway.core.tokenizer import (
    BEGIN_OF_TEXT,
    END_HEADER,
    END_OF_TURN,
    START_HEADER,
    ChatTemplate,
    Tokenizer,
)
from headway.core.workloads.types import Call, ChatMessage

MIN_WORD_POOL = 16
_PROBE_WORDS = 300
_MAX_CACHED_PIECES = 4096
_MAX_FIT_ROUNDS = 8


def tag_code(tag: str) -> int:
    """A stable integer for a piece tag (Python's str hash is salted per process)."""
    return zlib.crc32(tag.encode())


@dataclass(frozen=True)
class Context:
    """A growing chat context and its token count (BOS + messages, no generation prompt)."""

    messages: tuple[ChatMessage, ...]
    num_tokens: int


class TextFactory:
    """Builds texts and prompts with exact token counts for one tokenizer."""

    def __init__(self, tokenizer: Tokenizer, template: ChatTemplate | None = None) -> None:
        self.tokenizer = tokenizer
        self.template = template if template is not None else ChatTemplate()
        words = _word_pool(tokenizer)
        if len(words) < MIN_WORD_POOL:
            raise ValueError(
                f"tokenizer: only {len(words)} word tokens (' ' + letters) that round-trip; "
                f"workloads need at least {MIN_WORD_POOL}"
            )
        self._words = np.array(words, dtype=object)
        self.bos_tokens = len(tokenizer.encode(BEGIN_OF_TEXT))
        self.generation_tokens = len(tokenizer.encode(f"{START_HEADER}assistant{END_HEADER}\n\n"))
        self._overheads: dict[str, int] = {}
        self._pieces: dict[tuple[int, ...], np.ndarray] = {}
        self._texts: dict[tuple[int, ...], str] = {}
        self.is_additive = self._probe()

    @property
    def num_words(self) -> int:
        """Size of the word pool."""
        return len(self._words)

    def overhead(self, role: str) -> int:
        """Template tokens around one message of `role` with empty content."""
        n = self._overheads.get(role)
        if n is None:
            n = len(self.tokenizer.encode(f"{START_HEADER}{role}{END_HEADER}\n\n{END_OF_TURN}"))
            self._overheads[role] = n
        return n

    def fresh_ids(self, rng: np.random.Generator, num_tokens: int) -> np.ndarray:
        """Word-pool indices of a fresh text of `num_tokens` tokens."""
        ids: np.ndarray = rng.integers(0, len(self._words), size=max(0, num_tokens))
        return ids

    def shared_ids(self, num_tokens: int, seed: int, tag: str, index: int = 0) -> np.ndarray:
        """Word-pool indices of the piece (seed, tag, index): identical wherever it recurs
        (cached; do not modify the returned array)."""
        key = (seed, tag_code(tag), index, num_tokens)
        ids = self._pieces.get(key)
        if ids is None:
            ids = self.fresh_ids(np.random.default_rng([seed, tag_code(tag), index]), num_tokens)
            if len(self._pieces) >= _MAX_CACHED_PIECES:
                self._pieces.clear()
            self._pieces[key] = ids
        return ids

    def join(self, ids: np.ndarray) -> str:
        """The text of word-pool indices: len(ids) tokens when `is_additive`."""
        if len(ids) == 0:
            return ""
        text = "".join(self._words[ids])
        return text if self.is_additive else self._fit(text, len(ids))

    def text(self, rng: np.random.Generator, num_tokens: int) -> str:
        """A fresh text of exactly `num_tokens` tokens (0 gives "")."""
        return self.join(self.fresh_ids(rng, num_tokens))

    def shared_text(self, num_tokens: int, seed: int, tag: str, index: int = 0) -> str:
        """The text of the piece (seed, tag, index) (cached)."""
        key = (seed, tag_code(tag), index, num_tokens)
        text = self._texts.get(key)
        if text is None:
            text = self.join(self.shared_ids(num_tokens, seed, tag, index))
            if len(self._texts) >= _MAX_CACHED_PIECES:
                self._texts.clear()
            self._texts[key] = text
        return text

    def count(self, text: str) -> int:
        """Token count of a text, by encoding it."""
        return len(self.tokenizer.encode(text))

    def start(self) -> Context:
        """An empty context (just the begin-of-text token)."""
        return Context((), self.bos_tokens)

    def extend(
        self,
        ctx: Context,
        role: str,
        content: str,
        content_tokens: int,
        answer_of: str | None = None,
    ) -> Context:
        """`ctx` with one more message whose content has `content_tokens` tokens."""
        message = ChatMessage(role, content, answer_of)
        return Context(
            (*ctx.messages, message), ctx.num_tokens + self.overhead(role) + content_tokens
        )

    def prompt_tokens(self, ctx: Context) -> int:
        """Exact prompt length of the context with the generation prompt appended."""
        if self.is_additive:
            return ctx.num_tokens + self.generation_tokens
        return self.count_prompt(ctx.messages)

    def count_prompt(self, messages: Sequence[ChatMessage]) -> int:
        """Prompt length by rendering the template and encoding it (always exact)."""
        rendered = self.template.render([m.as_dict() for m in messages])
        return len(self.tokenizer.encode(rendered))

    def call(
        self,
        call_id: str,
        ctx: Context,
        max_tokens: int,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> Call:
        """A call sending the context."""
        return Call(call_id, ctx.messages, max_tokens, self.prompt_tokens(ctx), headers)

    def _probe(self) -> bool:
        """Whether concatenated pool words and the template add up exactly."""
        rng = np.random.default_rng(0)
        idx = rng.integers(0, len(self._words), size=_PROBE_WORDS)
        text = "".join(self._words[idx])
        if self.count(text) != _PROBE_WORDS:
            return False
        messages = (ChatMessage("system", text), ChatMessage("user", text + text))
        expected = (
            self.bos_tokens
            + self.overhead("system")
            + _PROBE_WORDS
            + self.overhead("user")
            + 2 * _PROBE_WORDS
            + self.generation_tokens
        )
        return self.count_prompt(messages) == expected

    def _fit(self, text: str, num_tokens: int) -> str:
        """Trim or extend a text until it encodes to `num_tokens` (non-additive tokenizers);
        the filler words are seeded by the text's length so the result is deterministic."""
        rng = np.random.default_rng([len(text), num_tokens])
        for _ in range(_MAX_FIT_ROUNDS):
            ids = self.tokenizer.encode(text)
            if len(ids) == num_tokens:
                return text
            if len(ids) > num_tokens:
                text = self.tokenizer.decode(ids[:num_tokens])
            else:
                extra = rng.integers(0, len(self._words), size=num_tokens - len(ids))
                text += "".join(self._words[extra])
        return text


def _word_pool(tokenizer: Tokenizer) -> list[str]:
    """Tokens that decode to ' ' + ASCII letters (>= 2) and encode back to themselves."""
    words: list[str] = []
    for token_id in range(tokenizer.vocab_size):
        text = tokenizer.decode([token_id])
        if len(text) < 3 or text[0] != " ":
            continue
        body = text[1:]
        if not (body.isascii() and body.isalpha()):
            continue
        if tokenizer.encode(text) == [token_id]:
            words.append(text)
    return words


_FACTORIES: dict[int, tuple[Tokenizer, TextFactory]] = {}


def text_factory(tokenizer: Tokenizer) -> TextFactory:
    """The (cached) factory of a tokenizer; scanning the vocabulary is done once."""
    hit = _FACTORIES.get(id(tokenizer))
    if hit is not None and hit[0] is tokenizer:
        return hit[1]
    factory = TextFactory(tokenizer)
    if len(_FACTORIES) >= 8:
        _FACTORIES.clear()
    # The tokenizer is kept alive with its factory so its id cannot be reused.
    _FACTORIES[id(tokenizer)] = (tokenizer, factory)
    return factory
