"""The OpenAI surface through the official `openai` client: chat and completions,
streamed and whole, usage, max_tokens, determinism, stop strings, cached tokens."""

from __future__ import annotations

import json

import pytest
from openai import OpenAI
from sim_harness import MODEL, Fleet, openai_client, post

SYSTEM_PROMPT = " ".join(
    f"Rule {i}: answer politely, cite the handbook section {i}, and keep it short."
    for i in range(24)
)


def _messages(user: str, system: str | None = None) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    return [*msgs, {"role": "user", "content": user}]


def test_chat_non_streaming(client: OpenAI) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=_messages("chat non-streaming"), max_tokens=8,  # type: ignore[arg-type]
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert resp.object == "chat.completion"
    assert resp.model == MODEL
    assert resp.id.startswith("chatcmpl-")
    (choice,) = resp.choices
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "length"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 8
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 8


def test_chat_streaming_with_usage(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=_messages("chat streaming"), max_tokens=6, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = list(stream)
    content = [c for c in chunks if c.choices]
    assert content[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None for c in content)
    assert content[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in content[:-1])
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 6
    assert last.usage.total_tokens == last.usage.prompt_tokens + 6
    assert len({c.id for c in chunks}) == 1
    assert "".join(c.choices[0].delta.content or "" for c in content)


def test_chat_streaming_without_usage_has_no_usage_chunk(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=_messages("no usage please"), max_tokens=5, stream=True,  # type: ignore[arg-type]
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_completions_non_streaming(client: OpenAI) -> None:
    resp = client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=7, extra_body={"ignore_eos": True}
    )
    assert resp.object == "text_completion"
    assert resp.id.startswith("cmpl-")
    (choice,) = resp.choices
    assert choice.text
    assert choice.finish_reason == "length"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 7


def test_completions_streaming(client: OpenAI) -> None:
    stream = client.completions.create(
        model=MODEL, prompt="Streaming completion", max_tokens=9, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = list(stream)
    content = [c for c in chunks if c.choices]
    assert len(content) == 9
    assert content[-1].choices[0].finish_reason == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 9
    whole = client.completions.create(
        model=MODEL, prompt="Streaming completion", max_tokens=9, extra_body={"ignore_eos": True}
    )
    assert "".join(c.choices[0].text for c in content) == whole.choices[0].text


@pytest.mark.parametrize("max_tokens", [1, 17, 64], ids=["one", "seventeen", "sixty-four"])
def test_max_tokens_exact_with_ignore_eos(client: OpenAI, max_tokens: int) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=_messages(f"count to {max_tokens}"), max_tokens=max_tokens,  # type: ignore[arg-type]
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert resp.usage is not None
    assert resp.usage.completion_tokens == max_tokens
    assert resp.choices[0].finish_reason == "length"


def test_natural_end_without_ignore_eos(client: OpenAI) -> None:
    resp = client.chat.completions.create(
        model=MODEL,
        messages=_messages("stop when you like"),
        max_tokens=2000,  # type: ignore[arg-type]
    )
    assert resp.usage is not None
    assert 1 <= resp.usage.completion_tokens <= 2000
    if resp.usage.completion_tokens < 2000:
        assert resp.choices[0].finish_reason == "stop"


def test_same_prompt_same_text_on_both_replicas(main_fleet: Fleet) -> None:
    texts = []
    for url in main_fleet.urls:
        c = openai_client(url)
        resp = c.chat.completions.create(
            model=MODEL, messages=_messages("determinism across replicas"), max_tokens=20,  # type: ignore[arg-type]
            seed=1234, extra_body={"ignore_eos": True},
        )  # fmt: skip
        texts.append(resp.choices[0].message.content)
    assert texts[0]
    assert texts[0] == texts[1]


def test_stop_string_cuts_text(client: OpenAI) -> None:
    msgs = _messages("a sentence to cut short")
    full = client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=30, extra_body={"ignore_eos": True},  # type: ignore[arg-type]
    ).choices[0].message.content  # fmt: skip
    assert full
    words = full.split()
    stop = words[len(words) // 2]
    expected = full[: full.find(stop)]
    cut = client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=30, stop=[stop], extra_body={"ignore_eos": True},  # type: ignore[arg-type]
    )  # fmt: skip
    assert cut.choices[0].message.content == expected
    assert cut.choices[0].finish_reason == "stop"
    # vLLM names the stop string that matched.
    assert cut.choices[0].model_extra is not None
    assert cut.choices[0].model_extra["stop_reason"] == stop
    stream = client.chat.completions.create(
        model=MODEL, messages=msgs, max_tokens=30, stop=stop, stream=True,  # type: ignore[arg-type]
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert (chunks[-1].choices[0].model_extra or {})["stop_reason"] == stop


def test_cached_tokens_grow_on_repeated_prefix(main_fleet: Fleet) -> None:
    c = openai_client(main_fleet.urls[1])
    msgs = _messages("first question about the rules", SYSTEM_PROMPT)
    first = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4)  # type: ignore[arg-type]
    assert first.usage is not None
    n = first.usage.prompt_tokens
    assert n > 300
    assert first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    second = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4)  # type: ignore[arg-type]
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    # vLLM never serves the last prompt token from cache; hits are whole blocks.
    assert second.usage.prompt_tokens_details.cached_tokens == (n - 1) // 16 * 16

    # A different question after the same system prompt hits the shared whole blocks.
    other = _messages("a different question", SYSTEM_PROMPT)
    ids_a = post(main_fleet.urls[1], "/tokenize", {"model": MODEL, "messages": msgs}).json()
    ids_b = post(main_fleet.urls[1], "/tokenize", {"model": MODEL, "messages": other}).json()
    common = 0
    for a, b in zip(ids_a["tokens"], ids_b["tokens"], strict=False):
        if a != b:
            break
        common += 1
    third = c.chat.completions.create(model=MODEL, messages=other, max_tokens=4)  # type: ignore[arg-type]
    assert third.usage is not None and third.usage.prompt_tokens_details is not None
    cached = third.usage.prompt_tokens_details.cached_tokens
    assert cached == min(common // 16, (third.usage.prompt_tokens - 1) // 16) * 16
    assert 0 < cached < third.usage.prompt_tokens


def test_cached_tokens_streamed_usage(main_fleet: Fleet) -> None:
    c = openai_client(main_fleet.urls[0])
    msgs = _messages("streamed cache question", SYSTEM_PROMPT + " Streamed.")
    for attempt in range(2):
        chunks = list(
            c.chat.completions.create(
                model=MODEL, messages=msgs, max_tokens=3, stream=True,  # type: ignore[arg-type]
                stream_options={"include_usage": True},
            )
        )  # fmt: skip
        usage = chunks[-1].usage
        assert usage is not None and usage.prompt_tokens_details is not None
        expected = 0 if attempt == 0 else (usage.prompt_tokens - 1) // 16 * 16
        assert usage.prompt_tokens_details.cached_tokens == expected


def test_no_prompt_tokens_details_without_flag(array_fleet: Fleet) -> None:
    c = openai_client(array_fleet.url)
    msgs = _messages("details off", SYSTEM_PROMPT)
    for _ in range(2):
        resp = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=2)  # type: ignore[arg-type]
        assert resp.usage is not None
        assert resp.usage.prompt_tokens_details is None


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_x_request_id_echoed(main_fleet: Fleet, stream: bool) -> None:
    rid = f"test-req-{int(stream)}-abc"
    c = openai_client(main_fleet.url)
    raw = c.chat.completions.with_raw_response.create(
        model=MODEL, messages=_messages("request id"), max_tokens=2, stream=stream,  # type: ignore[arg-type]
        extra_headers={"x-request-id": rid},
    )  # fmt: skip
    assert raw.headers.get("x-request-id") == rid
    parsed = raw.parse()
    if stream:
        ids = {chunk.id for chunk in parsed}  # type: ignore[union-attr]
        assert ids == {f"chatcmpl-{rid}"}
    else:
        assert parsed.id == f"chatcmpl-{rid}"  # type: ignore[union-attr]


def test_models_lists_served_name(client: OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == [MODEL]


def test_continuous_usage_stats_on_every_chunk(main_fleet: Fleet) -> None:
    body = {
        "model": MODEL,
        "messages": _messages("usage on every chunk"),
        "max_tokens": 4,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    resp = post(main_fleet.url, "/v1/chat/completions", body)
    assert resp.status == 200
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    with_choices = [c for c in chunks if c["choices"]]
    # The role chunk first (no tokens yet), then one chunk per token.
    assert with_choices[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["usage"]["completion_tokens"] for c in with_choices] == [0, 1, 2, 3, 4]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
