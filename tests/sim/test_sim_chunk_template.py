"""The streamed chunk's pre-encoded template (`ChunkTemplate`, `TextAssembler.token_json`)
and the per-token ITL histogram (`TokenHistogram`) give the same bytes as the general
paths they shortcut: msgspec's encoding of the chunk dict, prometheus_client's Histogram."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from headway.core.engine import TokenOutput
from headway.core.sequence import FinishReason
from headway.sim.completions import (
    ChunkTemplate,
    CompletionWriter,
    RequestState,
    StreamSink,
    TextAssembler,
)
from headway.sim.metrics import ITL_BUCKETS_S, TokenHistogram
from headway.sim.protocol import ParsedRequest
from headway.sim.replica import RequestHandle

MODEL = "llama-3.1-8b"
EOS = 0
# Token texts that JSON must escape, or that look like the template's holes.
TEXTS = {
    1: "plain",
    2: '"quoted"',
    3: "back\\slash",
    4: "\x00\x01\x1f\n\r\t\x7f",
    5: "é漢字😀",
    6: "",
    7: "\u2028\u2029</script>",
    8: "@@headway:text@@",
    9: "@@headway:scheduled_at@@",
    10: " a token",
}


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.written.append(data)


class FakeResponse:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.written.append(data)


class FakeReplica:
    index = 0

    def finish(self, request_id: str, reason: FinishReason) -> None:
        pass


def _parsed(is_chat: bool, **kw: Any) -> ParsedRequest:
    fields: dict[str, Any] = {
        "is_chat": is_chat, "model": MODEL, "prompt_token_ids": (1, 2, 3), "max_tokens": 99,
        "stream": True, "include_usage": False, "continuous_usage_stats": False,
        "stop": (), "stop_token_ids": frozenset(), "ignore_eos": True, "cache_salt": None,
        "echo_prompt": "", "debug_timing": True, "priority": 0,
    }  # fmt: skip
    fields.update(kw)
    return ParsedRequest(**fields)


def _sink(
    parsed: ParsedRequest, request_id: str, use_template: bool, model: str = MODEL
) -> StreamSink:
    assembler = TextAssembler(TEXTS.__getitem__, eos_token_id=EOS)
    writer = CompletionWriter(FakeReplica(), assembler, True, lambda s: None, lambda s: None)  # type: ignore[arg-type]
    handle = RequestHandle(request_id, 0.0)
    state = RequestState(parsed, "chatcmpl-" + request_id, 1764398726, model)
    sink = writer.attach_stream(handle, state, None)
    if not use_template:  # the same stream, every chunk encoded from its dict
        sink = StreamSink(writer, handle, state, None, sink._head, None)
    return sink


def _stream(sink: StreamSink, tokens: list[int], is_chunked: bool) -> bytes:
    """Every byte the sink writes for `tokens` (the last one finishes the request)."""
    resp, transport = FakeResponse(), FakeTransport()
    sink.open(resp, transport, is_chunked)  # type: ignore[arg-type]
    for n, token in enumerate(tokens, 1):
        finish = FinishReason.LENGTH if n == len(tokens) else None
        out = TokenOutput("r", (token,), 3, n, 2, finish)
        # Times whose shortest repr varies in length.
        sink.prepare(out, 1764398726.0 + n / 7)
        sink.emit()
    return b"".join(resp.written) + b"".join(transport.written)


def _expected_chunk(is_chat: bool, request_id: str, text: str, scheduled_at: float) -> bytes:
    """A token chunk as msgspec encodes vLLM's chunk dict (written out independently)."""
    choice: dict[str, Any] = {"index": 0}
    choice.update({"delta": {"content": text}} if is_chat else {"text": text})
    choice.update({"logprobs": None, "finish_reason": None, "stop_reason": None})
    chunk = {
        "id": "chatcmpl-" + request_id,
        "object": "chat.completion.chunk" if is_chat else "text_completion",
        "created": 1764398726,
        "model": MODEL,
        "choices": [choice],
        "headway_debug": {"scheduled_at": scheduled_at},
    }
    return b"data: " + msgspec.json.encode(chunk) + b"\n\n"


@pytest.mark.parametrize("is_chat", [False, True], ids=["completion", "chat"])
@pytest.mark.parametrize("token_id", sorted(TEXTS), ids=[f"t{t}" for t in sorted(TEXTS)])
def test_template_fills_in_what_msgspec_would_encode(is_chat: bool, token_id: int) -> None:
    assembler = TextAssembler(TEXTS.__getitem__, eos_token_id=EOS)
    writer = CompletionWriter(FakeReplica(), assembler, False, lambda s: None, lambda s: None)  # type: ignore[arg-type]
    state = RequestState(_parsed(is_chat), "chatcmpl-abc", 1764398726, MODEL)
    template = writer.attach_stream(RequestHandle("abc", 0.0), state, None)._template
    assert template is not None
    t = 1764398726.1 + token_id / 3
    text_json = assembler.token_json(token_id)
    assert text_json is not None
    data = template.data(text_json, writer.scheduled_at_json(t))
    assert data == _expected_chunk(is_chat, "abc", TEXTS[token_id], t)
    frame = template.frame(text_json, writer.scheduled_at_json(t))
    assert frame == b"%x\r\n%b\r\n" % (len(data), data)


@pytest.mark.parametrize(
    ("parsed", "request_id", "model"),
    [
        (_parsed(False), "r1", MODEL),
        (_parsed(True), "r1", MODEL),
        (_parsed(False, debug_timing=False), "r1", MODEL),
        (_parsed(True, debug_timing=False, include_usage=True), "r1", MODEL),
        (_parsed(False), "r-eos", MODEL),  # EOS mid-stream (ignore_eos): no text
        (_parsed(True, continuous_usage_stats=True), "r1", MODEL),  # no template
        (_parsed(False), 'r-"@@headway:text@@"', MODEL),  # escaped: still a template
        (_parsed(False), "r1", "@@headway:text@@"),  # a field is a hole: no template
        (_parsed(True), "r1", "@@headway:scheduled_at@@"),
    ],
    ids=[
        "completion", "chat", "no-debug", "chat-usage", "eos", "continuous-usage",
        "hole-in-id", "model-is-text-hole", "model-is-time-hole",
    ],
)  # fmt: skip
@pytest.mark.parametrize("is_chunked", [True, False], ids=["framed", "unframed"])
def test_templated_stream_is_byte_identical(
    parsed: ParsedRequest, request_id: str, model: str, is_chunked: bool
) -> None:
    tokens = [*sorted(TEXTS), EOS, 1] if request_id == "r-eos" else [*sorted(TEXTS), 1]
    fast = _stream(_sink(parsed, request_id, True, model), tokens, is_chunked)
    slow = _stream(_sink(parsed, request_id, False, model), tokens, is_chunked)
    assert fast == slow
    assert fast.count(b"data: [DONE]") == 1


@pytest.mark.parametrize(
    ("model", "debug_timing", "is_templated"),
    [
        (MODEL, True, True),
        ("@@headway:text@@", True, False),
        ("@@headway:scheduled_at@@", True, False),
        ("@@headway:scheduled_at@@", False, False),
        ("x@@headway:text@@", True, True),  # not the whole string: no clash
    ],
    ids=["plain", "text-hole", "time-hole", "time-hole-no-debug", "part-of-a-field"],
)
def test_template_refuses_a_chunk_with_a_hole_in_a_field(
    model: str, debug_timing: bool, is_templated: bool
) -> None:
    sink = _sink(_parsed(False, debug_timing=debug_timing), "r1", True, model)
    assert (sink._template is not None) is is_templated


def test_token_json_is_cached_and_never_eos() -> None:
    calls: list[int] = []

    def token_text(token_id: int) -> str:
        calls.append(token_id)
        return TEXTS[token_id]

    assembler = TextAssembler(token_text, eos_token_id=EOS)
    assert assembler.token_json(EOS) is None
    assert assembler.token_json(2) == assembler.token_json(2) == b'"\\"quoted\\""'
    assert calls == [2] and EOS not in assembler.token_json_cache


def test_template_of_a_chunk_without_debug_timing() -> None:
    chunk = {"id": "x", "choices": [{"text": "@@headway:text@@"}]}
    template = ChunkTemplate.cut(chunk)
    assert template is not None and template.before_scheduled_at is None
    assert template.data(b'"hi"', b"") == b'data: {"id":"x","choices":[{"text":"hi"}]}\n\n'


def _exposition(registry: CollectorRegistry) -> list[str]:
    # `_created` is the construction time: it differs between the two.
    return [
        line for line in generate_latest(registry).decode().splitlines() if "_created{" not in line
    ]


@pytest.mark.parametrize(
    "values",
    [
        [],
        [0.0, -1.0, 0.01, 0.0100001, 80.0, 80.5, 1e9],  # bounds, below, above the last
        [random.Random(7).expovariate(30.0) for _ in range(2000)],
    ],
    ids=["empty", "edges", "many"],
)
def test_token_histogram_scrapes_as_prometheus_histogram(values: list[float]) -> None:
    labels = {"model_name": MODEL, "engine": "0"}
    name, doc = "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds."
    ours, theirs = CollectorRegistry(auto_describe=False), CollectorRegistry(auto_describe=False)
    fast = TokenHistogram(name, doc, labels, ITL_BUCKETS_S, ours)
    reference = Histogram(name, doc, list(labels), registry=theirs, buckets=ITL_BUCKETS_S)
    for v in values:
        fast.observe(v)
        reference.labels(**labels).observe(v)
    if not values:
        reference.labels(**labels)  # a labelled histogram shows once it has the child
    assert _exposition(ours) == _exposition(theirs)
    created = [line for line in generate_latest(ours).decode().splitlines() if "_created{" in line]
    assert len(created) == 1
