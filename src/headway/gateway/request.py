"""What the gateway reads from a completion request: only what routing and accounting
need (model, stream, stream_options.include_usage, a size estimate). Everything else
passes through to the upstream untouched.

The upstream body is the client's bytes, except when the gateway must change them:
a streamed request without `stream_options.include_usage` gets it set (the gateway
wants usage for accounting and strips the extra chunk again), and a model alias is
replaced by the pool's model name (the upstream serves that name).
"""

from __future__ import annotations

from typing import Any

import msgspec

from headway.openai_errors import ApiError, decode_json_object


class CompletionRequest(msgspec.Struct, frozen=True):
    """A parsed completion request (a frozen struct: built per request, so cheaper
    than a frozen dataclass)."""

    model: str
    is_chat: bool
    is_stream: bool
    client_wants_usage: bool  # stream_options.include_usage as the client sent it
    max_tokens: int | None
    data: dict[str, Any]  # the decoded body (read only)

    @property
    def must_strip_usage(self) -> bool:
        return self.is_stream and not self.client_wants_usage


def parse_completion(body: bytes, *, is_chat: bool) -> CompletionRequest:
    data = decode_json_object(body)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model: field required (a non-empty string)", "model")
    if is_chat:
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages: field required (a non-empty list)", "messages")
    else:
        prompt = data.get("prompt")
        if prompt is None or prompt == "" or prompt == []:
            raise ApiError(400, "prompt: field required", "prompt")
        if not isinstance(prompt, str | list):
            raise ApiError(400, "prompt: must be a string or a list", "prompt")
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, "stream: must be a boolean", "stream")
    opts = data.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise ApiError(400, "stream_options: must be an object", "stream_options")
    include_usage = (opts or {}).get("include_usage", False)
    if not isinstance(include_usage, bool | None):
        raise ApiError(400, "stream_options.include_usage: must be a boolean", "stream_options")
    max_tokens = data.get("max_completion_tokens") if is_chat else None
    if max_tokens is None:
        max_tokens = data.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int | None):
        max_tokens = None  # the upstream validates it; routing only estimates
    return CompletionRequest(
        model=model,
        is_chat=is_chat,
        is_stream=stream,
        client_wants_usage=bool(include_usage),
        max_tokens=max_tokens,
        data=data,
    )


def upstream_body(original: bytes, req: CompletionRequest, upstream_model: str) -> bytes:
    """The bytes to send upstream (the original ones unless something must change)."""
    rename = req.model != upstream_model
    if not rename and not req.must_strip_usage:
        return original
    data = dict(req.data)
    if rename:
        data["model"] = upstream_model
    if req.must_strip_usage:
        data["stream_options"] = {**(data.get("stream_options") or {}), "include_usage": True}
    return msgspec.json.encode(data)
