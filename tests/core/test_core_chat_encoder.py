"""ChatEncoder: message-by-message encoding equals encoding the rendered prompt."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from headway.core.tokenizer import ChatEncoder, ChatTemplate, ChatTemplateError
from headway.resources.tokenizer import default_tokenizer

TOK = default_tokenizer()

texts = st.text(
    alphabet=st.sampled_from(list("abcdefghij XYZ.,!?'\n\t-_:;0123456789éü漢")), max_size=60
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "tool"]), "content": texts}
    ),
    min_size=1,
    max_size=5,
)


def whole(msgs: Sequence[dict[str, str]], gen: bool = True) -> list[int]:
    return TOK.encode(ChatTemplate().render(msgs, gen))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=messages, gen=st.booleans())
@example(msgs=[{"role": "system", "content": "  "}], gen=False)  # merged with the header's \n\n
@example(
    msgs=[{"role": "user", "content": "\n x"}, {"role": "assistant", "content": " y"}], gen=True
)
def test_piecewise_equals_whole_prompt_for_the_shipped_tokenizer(
    msgs: list[dict[str, str]], gen: bool
) -> None:
    # No checks: this is the claim the encoder relies on for the shipped tokenizer.
    enc = ChatEncoder(TOK, num_checked=0, check_every=10**9)
    assert enc.encode(msgs, gen) == whole(msgs, gen)
    assert enc.is_piecewise


class _Merging:
    """A tokenizer whose tokens depend on context across message boundaries."""

    vocab_size = 10
    eos_token_id = 0

    def encode(self, text: str) -> list[int]:
        return [len(text)]  # one "token" per call: never additive

    def decode(self, token_ids: Sequence[int]) -> str:
        return ""


def test_a_non_additive_tokenizer_is_caught_and_whole_encoding_used() -> None:
    enc = ChatEncoder(_Merging(), num_checked=1)
    msgs = [{"role": "user", "content": "hello"}]
    expected = [len(ChatTemplate().render(msgs))]
    assert enc.encode(msgs) == expected
    assert not enc.is_piecewise
    assert enc.encode(msgs) == expected  # and stays in whole-prompt mode


def test_periodic_checks_after_the_first_ones() -> None:
    enc = ChatEncoder(_Merging(), num_checked=0, check_every=3)
    msgs = [{"role": "user", "content": "hi"}]
    enc.encode(msgs)
    enc.encode(msgs)
    assert enc.is_piecewise  # not checked yet: wrong answers are possible before ...
    enc.encode(msgs)
    assert not enc.is_piecewise  # ... the third prompt is checked and switches it off


def test_deferred_periodic_checks_wait_for_the_caller() -> None:
    """With deferred checks, the every-third prompt is not encoded whole inside
    `encode` (its rendering and ids wait in `take_due_check`, once); `verify` then
    catches the mismatch and switches to whole-prompt encoding."""
    enc = ChatEncoder(_Merging(), num_checked=0, check_every=3, defer_periodic_checks=True)
    msgs = [{"role": "user", "content": "hi"}]
    for _ in range(2):
        enc.encode(msgs)
        assert enc.take_due_check() is None
    # The third prompt's whole rendering is not counted as work for `encode`...
    assert enc.num_uncached_chars(msgs) == 0
    ids = enc.encode(msgs)
    assert enc.is_piecewise  # ... nor done there: it is due for the caller
    due = enc.take_due_check()
    assert due == (ChatTemplate().render(msgs), ids)
    assert enc.take_due_check() is None  # handed out once
    assert enc.verify(*due) is False
    assert not enc.is_piecewise
    assert enc.encode(msgs) == [len(ChatTemplate().render(msgs))]


def test_verify_accepts_an_additive_tokenizer() -> None:
    enc = ChatEncoder(TOK, num_checked=0, check_every=1, defer_periodic_checks=True)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    ids = enc.encode(msgs)
    due = enc.take_due_check()
    assert due is not None and enc.verify(*due)
    assert enc.is_piecewise and ids == TOK.encode(ChatTemplate().render(msgs))


def test_pieces_cache_is_bounded() -> None:
    enc = ChatEncoder(TOK, max_pieces=5)
    for i in range(20):
        enc.encode([{"role": "user", "content": f" question {i}"}])
    assert len(enc._pieces) <= 5


@pytest.mark.parametrize(
    "bad",
    [[], [{"content": "x"}], ["not a message"], [{"role": "user", "content": 3}]],
    ids=["empty", "no-role", "not-object", "bad-content"],
)
def test_bad_messages_raise_like_the_template(bad: list[object]) -> None:
    with pytest.raises(ChatTemplateError):
        ChatEncoder(TOK).encode(bad)  # type: ignore[arg-type]


class _Counting:
    """The shipped tokenizer, counting the texts it encodes."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def encode(self, text: str) -> list[int]:
        self.texts.append(text)
        return TOK.encode(text)


def test_piece_cache_evicts_the_least_recently_used() -> None:
    counting = _Counting()
    enc = ChatEncoder(counting, num_checked=0, check_every=10**9, max_pieces=6)  # type: ignore[arg-type]
    hot = {"role": "system", "content": "the hot system prompt"}
    for i in range(20):
        enc.encode([hot, {"role": "user", "content": f"question {i}"}], False)
    # Kept while cold questions come and go: encoded once, not once per eviction round.
    assert counting.texts.count("the hot system prompt") == 1


@pytest.mark.parametrize(
    ("earlier", "msgs", "expected"),
    [
        ([], [{"role": "system", "content": "long system"}], len("long system")),
        (
            [[{"role": "system", "content": "long system"}]],
            [{"role": "system", "content": "long system"}, {"role": "user", "content": "q?"}],
            len("q?"),
        ),
        ([[{"role": "user", "content": " led"}]], [{"role": "user", "content": " led"}], 0),
        (
            [],
            [{"role": "user", "content": " led"}],
            len("<|start_header_id|>user<|end_header_id|>\n\n led"),
        ),
        ([], [{"role": "user", "content": 7}], 0),  # unreadable: `encode` raises for it
    ],
    ids=["cold", "system-cached", "whitespace-led-cached", "whitespace-led-cold", "bad"],
)
def test_num_uncached_chars(
    earlier: list[list[dict[str, object]]], msgs: list[dict[str, object]], expected: int
) -> None:
    enc = ChatEncoder(TOK, num_checked=0, check_every=10**9)
    for m in earlier:
        enc.encode(m)
    assert enc.num_uncached_chars(msgs) == expected


def test_num_uncached_chars_counts_the_whole_prompt_when_a_check_is_due() -> None:
    msgs = [{"role": "user", "content": "hi"}]
    enc = ChatEncoder(TOK, num_checked=1, check_every=10**9)
    enc.encode(msgs)  # the first prompt is checked; now "hi" is cached
    assert enc.num_uncached_chars(msgs) == 0
    checked = ChatEncoder(TOK, num_checked=2, check_every=10**9)
    checked.encode(msgs)
    assert checked.num_uncached_chars(msgs) == len(ChatTemplate().render(msgs))
