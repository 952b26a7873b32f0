"""Loads tokenizers: the shipped byte-level BPE, or any Hugging Face `tokenizer.json`.

The shipped tokenizer (`data/tokenizer.json`) is trained by the project itself with
`scripts/train_tokenizer.py` on text the project generates, so nothing is downloaded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources as importlib_resources
from pathlib import Path

from tokenizers import Tokenizer as HfTokenizerImpl

from headway.core.tokenizer import END_OF_TEXT, END_OF_TURN


class TokenizerLoadError(ValueError):
    """A tokenizer file that is missing or not a Hugging Face tokenizer.json."""


class HfTokenizer:
    """A `headway.core.tokenizer.Tokenizer` backed by the `tokenizers` library."""

    def __init__(self, impl: HfTokenizerImpl, source: str) -> None:
        self._impl = impl
        self.source = source
        eos = None
        for name in (END_OF_TURN, END_OF_TEXT, "</s>", "<|endoftext|>", "<|im_end|>"):
            eos = impl.token_to_id(name)
            if eos is not None:
                break
        self._eos = eos if eos is not None else 0
        self._vocab_size = int(impl.get_vocab_size(with_added_tokens=True))

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def eos_token_id(self) -> int:
        return self._eos

    def encode(self, text: str) -> list[int]:
        return list(self._impl.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(e.ids) for e in self._impl.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self._impl.decode(list(token_ids), skip_special_tokens=True))

    def id_to_token(self, token_id: int) -> str | None:
        token: str | None = self._impl.id_to_token(token_id)
        return token

    def word_token_ids(self) -> tuple[int, ...]:
        """Ids of tokens that decode to a space followed by letters: the simulated
        model's output vocabulary, so generated text reads as words."""
        out = []
        for token_id in range(self._impl.get_vocab_size(with_added_tokens=False)):
            text = self._impl.decode([token_id])
            if len(text) >= 3 and text[0] == " " and text[1:].isalpha() and text[1:].isascii():
                out.append(token_id)
        return tuple(out)

    def output_vocab(self) -> tuple[int, ...]:
        """What a simulated model samples its output from: the word tokens, or the
        first 1,000 ids of a vocabulary without any."""
        return self.word_token_ids() or tuple(range(min(self.vocab_size, 1000)))


def load_tokenizer(path: str | Path) -> HfTokenizer:
    """Load a `tokenizer.json` (or a directory holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    try:
        impl = HfTokenizerImpl.from_file(str(p))
    except Exception as exc:  # the library raises bare Exception subclasses
        raise TokenizerLoadError(f"tokenizer {p}: cannot load: {exc}") from exc
    return HfTokenizer(impl, str(p))


@lru_cache(maxsize=1)
def default_tokenizer() -> HfTokenizer:
    """The project's own byte-level BPE tokenizer."""
    ref = importlib_resources.files("headway.resources").joinpath("data/tokenizer.json")
    with importlib_resources.as_file(ref) as p:
        return load_tokenizer(p)


class SharedEncodeCache(HfTokenizer):
    """`tokenizer` with its `encode` results remembered by text (LRU, `max_entries`).

    The simulator's replicas share one: a router that asks every replica to render or
    tokenize the same prompt (vllm-router's cache-aware policies call
    `/v1/chat/completions/render` on all of them per request), and the request that
    then arrives at one of them, cost one tokenization instead of one per replica.
    Short texts are not cached (encoding them is cheaper than remembering them).
    """

    def __init__(
        self, tokenizer: HfTokenizer, max_entries: int = 1024, min_chars: int = 256
    ) -> None:
        super().__init__(tokenizer._impl, tokenizer.source)
        self._cache: OrderedDict[str, list[int]] = OrderedDict()
        self._max_entries = max_entries
        self._min_chars = min_chars
        self.num_hits = 0

    def encode(self, text: str) -> list[int]:
        if len(text) < self._min_chars:
            return super().encode(text)
        ids = self._cache.get(text)
        if ids is not None:
            self._cache.move_to_end(text)
            self.num_hits += 1
            return list(ids)
        ids = super().encode(text)
        self._cache[text] = ids
        if len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return list(ids)
