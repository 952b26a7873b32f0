"""The streaming relay's SSE filter: events pass as soon as they are complete, the
usage-only chunk is stripped only when asked, [DONE] and usage are noted."""

from __future__ import annotations

import json

import pytest

from headway.gateway.sse import MAX_PENDING_BYTES, SseRelayFilter


def event(obj: object, sep: bytes = b"\n\n") -> bytes:
    return b"data: " + json.dumps(obj).encode() + sep


TOKEN = event({"choices": [{"index": 0, "delta": {"content": "hi"}}]})
USAGE = event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
DONE = b"data: [DONE]\n\n"


def relay(f: SseRelayFilter, chunks: list[bytes]) -> bytes:
    return b"".join(f.feed(c) for c in chunks)


@pytest.mark.parametrize("strip", [True, False], ids=["strip", "keep"])
def test_usage_chunk_stripped_only_when_asked(strip: bool) -> None:
    f = SseRelayFilter(strip_usage=strip)
    out = relay(f, [TOKEN, TOKEN + USAGE, DONE])
    assert out == (TOKEN + TOKEN + DONE if strip else TOKEN + TOKEN + USAGE + DONE)
    assert f.is_done
    assert f.usage == {"prompt_tokens": 3, "completion_tokens": 2}


def test_events_split_across_chunks_wait_for_their_end() -> None:
    f = SseRelayFilter(strip_usage=True)
    stream = TOKEN + USAGE + DONE
    outs = [f.feed(stream[i : i + 7]) for i in range(0, len(stream), 7)]
    assert b"".join(outs) == TOKEN + DONE
    assert f.is_done and f.pending == b""
    assert outs[0] == b""  # nothing goes out before the first event is complete


def test_token_chunk_with_usage_is_kept() -> None:
    # continuous_usage_stats: usage on every chunk that has choices; never stripped.
    chunk = event({"choices": [{"index": 0, "text": "a"}], "usage": {"completion_tokens": 1}})
    f = SseRelayFilter(strip_usage=True)
    assert f.feed(chunk) == chunk
    assert f.usage == {"completion_tokens": 1}


def test_crlf_streams() -> None:
    f = SseRelayFilter(strip_usage=True)
    usage = event({"choices": [], "usage": {"completion_tokens": 1}}, b"\r\n\r\n")
    token = event({"choices": [{"text": "a"}]}, b"\r\n\r\n")
    assert relay(f, [token, usage, b"data: [DONE]\r\n\r\n"]) == token + b"data: [DONE]\r\n\r\n"
    assert f.is_done


def test_unterminated_stream_is_not_buffered_without_bound() -> None:
    f = SseRelayFilter(strip_usage=False)
    blob = b"data: " + b"x" * (MAX_PENDING_BYTES + 10) + b"\n"
    assert f.feed(blob) == blob
    assert not f.is_done
