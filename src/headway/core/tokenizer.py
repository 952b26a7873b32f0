"""What `core` needs of a tokenizer (a protocol), and the one chat template.

The concrete tokenizer is loaded by `headway.resources.tokenizer` (the shipped
byte-level BPE or any Hugging Face `tokenizer.json`) and passed in.

The chat template is Llama-3's layout, applied the same way by the simulator, the
gateway and the benchmark so that a prompt's tokens, and hence its block hashes, are
identical everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
END_OF_TURN = "<|eot_id|>"
SPECIAL_TOKENS = (BEGIN_OF_TEXT, END_OF_TEXT, START_HEADER, END_HEADER, END_OF_TURN)


class Tokenizer(Protocol):
    """Text <-> token ids."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def eos_token_id(self) -> int: ...

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in it map to their ids."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of `token_ids`, special tokens left out."""
        ...


class ChatTemplateError(ValueError):
    """A message list the template cannot render; the message names the field."""


def message_text(content: Any, where: str) -> str:
    """The text of a message's `content`: a string, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for i, part in enumerate(content):
            if not isinstance(part, Mapping) or "type" not in part:
                raise ChatTemplateError(f"{where}[{i}]: must be an object with a 'type'")
            if part["type"] == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise ChatTemplateError(f"{where}[{i}].text: must be a string")
                parts.append(text)
            else:
                # Images and audio are not simulated; they contribute no text tokens.
                continue
        return "".join(parts)
    raise ChatTemplateError(f"{where}: must be a string or a list of content parts")


@dataclass(frozen=True)
class ChatTemplate:
    """Llama-3-style chat layout."""

    def render(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        if not messages:
            raise ChatTemplateError("messages: must contain at least one message")
        out = [BEGIN_OF_TEXT]
        for i, msg in enumerate(messages):
            if not isinstance(msg, Mapping):
                raise ChatTemplateError(f"messages[{i}]: must be an object")
            role = msg.get("role")
            if not isinstance(role, str) or not role:
                raise ChatTemplateError(f"messages[{i}].role: must be a non-empty string")
            text = message_text(msg.get("content"), f"messages[{i}].content")
            out.append(f"{START_HEADER}{role}{END_HEADER}\n\n{text}{END_OF_TURN}")
        if add_generation_prompt:
            out.append(f"{START_HEADER}assistant{END_HEADER}\n\n")
        return "".join(out)


class ChatEncoder:
    """Chat messages -> the token ids of their rendered template, message by message.

    Tokenizing a whole prompt costs more than anything else a gateway or a simulator
    does with it, yet consecutive prompts mostly repeat earlier messages (a system
    prompt, the turns of a conversation). So each message is encoded on its own (its
    header, its content, its end-of-turn marker), cached by text, and the pieces
    concatenated. That equals encoding the rendered prompt when the tokenizer's
    pre-tokenizer splits at those boundaries (special tokens always split; a byte-level
    BPE splits before a space-led word; content that starts with whitespace is encoded
    together with its header, whose "\n\n" it would merge with). It is checked, not
    assumed: the first `num_checked` prompts, and every `check_every`-th after, are also
    encoded whole and compared; one mismatch switches the encoder to whole-prompt
    encoding for good.

    With `defer_periodic_checks`, the every-`check_every`-th checks are not run inside
    `encode`: the prompt's rendering and piecewise ids wait in `take_due_check` for the
    caller to `verify` off its request path (a whole-prompt encode of a long prompt
    costs milliseconds). The first `num_checked` are always checked inline.

    The piece cache is bounded (`max_pieces`, least recently used first out).
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        num_checked: int = 16,
        check_every: int = 64,
        max_pieces: int = 4096,
        defer_periodic_checks: bool = False,
    ) -> None:
        self._tokenizer = tokenizer
        self._template = ChatTemplate()
        self._pieces: dict[str, tuple[int, ...]] = {}
        self._max_pieces = max_pieces
        self._num_checked = num_checked
        self._check_every = max(1, check_every)
        self._defer = defer_periodic_checks
        self._due_check: tuple[str, list[int]] | None = None
        self._num_encoded = 0
        self.is_piecewise = True

    def _is_inline_check(self, n: int) -> bool:
        """Whether the n-th prompt encoded is checked inside `encode`."""
        return n <= self._num_checked or (not self._defer and n % self._check_every == 0)

    def take_due_check(self) -> tuple[str, list[int]] | None:
        """The deferred check due, if any (rendered prompt, piecewise ids), once."""
        due, self._due_check = self._due_check, None
        return due

    def verify(self, rendered: str, ids: Sequence[int]) -> bool:
        """Whether whole-prompt encoding of `rendered` gives `ids`; a mismatch switches
        the encoder to whole-prompt encoding for good."""
        if self._tokenizer.encode(rendered) == list(ids):
            return True
        self.is_piecewise = False
        return False

    def _piece(self, text: str) -> tuple[int, ...]:
        ids = self._pieces.pop(text, None)
        if ids is not None:
            self._pieces[text] = ids  # most recently used last: hot system prompts stay
        else:
            ids = self._pieces[text] = tuple(self._tokenizer.encode(text))
            if len(self._pieces) > self._max_pieces:
                with contextlib.suppress(RuntimeError, KeyError, StopIteration):
                    del self._pieces[next(iter(self._pieces))]
        return ids

    def render(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        return self._template.render(messages, add_generation_prompt)

    def num_uncached_chars(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> int:
        """How many characters `encode(messages)` would hand the tokenizer: the pieces
        not in the cache, or the whole rendered prompt when it encodes whole (not
        piecewise, or this call is due for the check). A caller uses it to decide
        whether encoding is worth a worker thread; a message it cannot read counts 0
        (`encode` raises for it anyway)."""
        if not self.is_piecewise or self._is_inline_check(self._num_encoded + 1):
            try:
                return len(self.render(messages, add_generation_prompt))
            except ChatTemplateError:
                return 0
        num_chars = 0
        for msg in messages:
            if not isinstance(msg, Mapping):
                break
            try:
                text = message_text(msg.get("content"), "content")
            except ChatTemplateError:
                break
            piece = text
            if text[:1].isspace():  # encoded with its header, as in `encode`
                piece = f"{START_HEADER}{msg.get('role')}{END_HEADER}\n\n{text}"
            if piece not in self._pieces:
                num_chars += len(piece)
        return num_chars

    def encode(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of `render(messages)`; raises ChatTemplateError like `render`."""
        return self._encode(messages, add_generation_prompt, None)

    def encode_turns(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> tuple[list[int], list[tuple[str, str, int]]]:
        """`encode(messages)` and, per message, (role, text, tokens up to the end of its
        turn): equal leading turns give equal leading token ids, which a caller may
        key cached work on. No turns when the prompt was encoded whole (the encoder
        is not piecewise)."""
        turns: list[tuple[str, str, int]] = []
        ids = self._encode(messages, add_generation_prompt, turns)
        return ids, turns

    def _encode(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool,
        turns: list[tuple[str, str, int]] | None,
    ) -> list[int]:
        if not self.is_piecewise:
            return self._tokenizer.encode(self.render(messages, add_generation_prompt))
        if not messages:
            raise ChatTemplateError("messages: must contain at least one message")
        ids: list[int] = [*self._piece(BEGIN_OF_TEXT)]
        for i, msg in enumerate(messages):
            if not isinstance(msg, Mapping):
                raise ChatTemplateError(f"messages[{i}]: must be an object")
            role = msg.get("role")
            if not isinstance(role, str) or not role:
                raise ChatTemplateError(f"messages[{i}].role: must be a non-empty string")
            text = message_text(msg.get("content"), f"messages[{i}].content")
            header = f"{START_HEADER}{role}{END_HEADER}\n\n"
            if text[:1].isspace():
                # Leading whitespace would merge with the header's "\n\n" in one
                # pre-token: encode the two together (found by Hypothesis: "  ").
                ids += self._piece(header + text)
            else:
                ids += self._piece(header)
                ids += self._piece(text)
            ids += self._piece(END_OF_TURN)
            if turns is not None:
                turns.append((role, text, len(ids)))
        if add_generation_prompt:
            ids += self._piece(f"{START_HEADER}assistant{END_HEADER}\n\n")
        self._num_encoded += 1
        if self._is_inline_check(self._num_encoded):
            whole = self._tokenizer.encode(self.render(messages, add_generation_prompt))
            if whole != ids:
                self.is_piecewise = False
                if turns is not None:
                    turns.clear()
                return whole
        elif self._num_encoded % self._check_every == 0:
            self._due_check = (self.render(messages, add_generation_prompt), list(ids))
        return ids
