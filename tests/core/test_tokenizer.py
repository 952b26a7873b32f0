"""The shipped tokenizer and the chat template every component renders prompts with."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headway.core.tokenizer import (
    BEGIN_OF_TEXT,
    END_OF_TURN,
    SPECIAL_TOKENS,
    ChatTemplate,
    ChatTemplateError,
    Tokenizer,
)
from headway.resources.tokenizer import (
    HfTokenizer,
    TokenizerLoadError,
    default_tokenizer,
    load_tokenizer,
)


@pytest.fixture(scope="module")
def tok() -> HfTokenizer:
    return default_tokenizer()


def test_shipped_tokenizer_loads(tok: HfTokenizer) -> None:
    as_protocol: Tokenizer = tok  # satisfies core's protocol (checked by mypy)
    assert as_protocol.vocab_size == tok.vocab_size
    assert tok.vocab_size > 1000
    assert tok.eos_token_id == tok.encode(END_OF_TURN)[0]
    assert default_tokenizer() is tok  # loaded once


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Hello world, this is a test.",
        "  leading and trailing spaces  ",
        "tabs\tand\nnewlines\r\n",
        "naïve café, 日本語, emoji 🙂",
        "numbers 1234567890 and symbols {}[]<>|",
    ],
    ids=["empty", "ascii", "spaces", "whitespace", "unicode", "symbols"],
)
def test_round_trip(tok: HfTokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=60).filter(lambda s: not any(sp in s for sp in SPECIAL_TOKENS)))
def test_round_trip_any_text(text: str) -> None:
    tok = default_tokenizer()
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("special", SPECIAL_TOKENS, ids=list(SPECIAL_TOKENS))
def test_special_tokens_are_single_ids(tok: HfTokenizer, special: str) -> None:
    ids = tok.encode(special)
    assert len(ids) == 1
    assert tok.id_to_token(ids[0]) == special
    assert tok.decode(ids) == ""  # special tokens are left out of decoded text
    # Inside text they still split off as single tokens.
    around = tok.encode(f"a{special}b")
    assert ids[0] in around


def test_special_token_ids_are_distinct(tok: HfTokenizer) -> None:
    ids = [tok.encode(s)[0] for s in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS)


def test_encode_batch_matches_encode(tok: HfTokenizer) -> None:
    texts = ["one", "two words", ""]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_word_token_ids(tok: HfTokenizer) -> None:
    words = tok.word_token_ids()
    assert len(words) > 50
    for token_id in words[:200]:
        text = tok.decode([token_id])
        assert text[0] == " " and text[1:].isalpha() and len(text) >= 3
    assert tok.eos_token_id not in words


# -- loading ---------------------------------------------------------------------------


def test_load_from_directory(tmp_path: Path, tok: HfTokenizer) -> None:
    shutil.copy(tok.source, tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path)
    assert loaded.encode("Hello world") == tok.encode("Hello world")
    assert loaded.eos_token_id == tok.eos_token_id


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("missing.json", None),
        ("dir-without-file", "DIR"),
        ("garbage.json", "this is not json"),
        ("wrong-shape.json", '{"hello": "world"}'),
    ],
    ids=["missing-file", "empty-dir", "not-json", "not-a-tokenizer"],
)
def test_load_bad_path_raises(tmp_path: Path, name: str, content: str | None) -> None:
    p = tmp_path / name
    if content == "DIR":
        p.mkdir()
    elif content is not None:
        p.write_text(content)
    with pytest.raises(TokenizerLoadError, match="cannot load"):
        load_tokenizer(p)


# -- chat template ---------------------------------------------------------------------

GOLDEN = (
    "<|begin_of_text|>"
    "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
TWO = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there!"},
]


def test_chat_template_golden() -> None:
    assert ChatTemplate().render(TWO) == GOLDEN


def test_chat_template_without_generation_prompt() -> None:
    out = ChatTemplate().render(TWO, add_generation_prompt=False)
    assert out == GOLDEN.removesuffix("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert out.endswith(END_OF_TURN)


@pytest.mark.parametrize(
    ("content", "expected_text"),
    [
        ("plain", "plain"),
        (None, ""),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "ab"),
        ([{"type": "image_url", "image_url": {"url": "x"}}, {"type": "text", "text": "c"}], "c"),
        ([], ""),
    ],
    ids=["string", "none", "text-parts", "image-part-skipped", "no-parts"],
)
def test_content_forms(content: Any, expected_text: str) -> None:
    out = ChatTemplate().render([{"role": "user", "content": content}], False)
    assert (
        out
        == f"{BEGIN_OF_TEXT}<|start_header_id|>user<|end_header_id|>\n\n{expected_text}{END_OF_TURN}"
    )


def test_rendered_prompt_tokens_are_stable(tok: HfTokenizer) -> None:
    ids = tok.encode(ChatTemplate().render(TWO))
    assert ids[0] == tok.encode(BEGIN_OF_TEXT)[0]
    assert ids.count(tok.eos_token_id) == 2
    assert tok.encode(ChatTemplate().render(TWO)) == ids


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        ([], "messages: "),
        (["hello"], "messages[0]: "),
        ([{"role": "user", "content": "a"}, {"content": "b"}], "messages[1].role: "),
        ([{"role": "user", "content": "a"}, {"role": "", "content": "b"}], "messages[1].role: "),
        ([{"role": 3, "content": "b"}], "messages[0].role: "),
        ([{"role": "user", "content": 42}], "messages[0].content: "),
        ([{"role": "user", "content": {"text": "x"}}], "messages[0].content: "),
        ([{"role": "user", "content": ["x"]}], "messages[0].content[0]: "),
        ([{"role": "user", "content": [{"text": "x"}]}], "messages[0].content[0]: "),
        (
            [{"role": "user", "content": "ok"}, {"role": "user", "content": [{"type": "text"}]}],
            "messages[1].content[0].text: ",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": 1}],
                }
            ],
            "messages[0].content[1].text: ",
        ),
    ],
    ids=[
        "no-messages",
        "message-not-object",
        "missing-role",
        "empty-role",
        "role-not-string",
        "content-number",
        "content-object",
        "part-not-object",
        "part-without-type",
        "text-part-without-text",
        "text-not-string",
    ],
)
def test_template_errors_name_the_field(messages: list[Mapping[str, Any]], field: str) -> None:
    with pytest.raises(ChatTemplateError) as err:
        ChatTemplate().render(messages)
    assert str(err.value).startswith(field), str(err.value)
