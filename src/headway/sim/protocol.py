"""Parsing and validating OpenAI completion requests as vLLM's server does.

Only the fields the simulator acts on are read; unknown fields are accepted and
ignored, as vLLM does. Every rejection names the offending parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from headway.core.tokenizer import ChatTemplate, ChatTemplateError, Tokenizer
from headway.openai_errors import ApiError


@dataclass(frozen=True)
class ParsedRequest:
    """A validated completion request, tokenized."""

    is_chat: bool
    model: str
    prompt_token_ids: tuple[int, ...]
    max_tokens: int | None
    stream: bool
    include_usage: bool
    continuous_usage_stats: bool
    stop: tuple[str, ...]
    stop_token_ids: frozenset[int]
    ignore_eos: bool
    cache_salt: str | None
    echo_prompt: str
    debug_timing: bool
    priority: int


def _opt_int(data: Mapping[str, Any], key: str, minimum: int) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{key}: must be an integer", key)
    if value < minimum:
        raise ApiError(400, f"{key}: must be at least {minimum}, got {value}", key)
    return value


def _opt_number(
    data: Mapping[str, Any], key: str, lo: float, hi: float | None = None
) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, f"{key}: must be a number", key)
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ApiError(400, f"{key}: must be {bound}, got {value}", key)
    return float(value)


def _bool(data: Mapping[str, Any], key: str, default: bool = False) -> bool:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ApiError(400, f"{key}: must be a boolean", key)
    return value


def _stop(data: Mapping[str, Any]) -> tuple[str, ...]:
    stop = data.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,) if stop else ()
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return tuple(s for s in stop if s)
    raise ApiError(400, "stop: must be a string or a list of strings", "stop")


def _prompt_ids(
    data: Mapping[str, Any], tokenizer: Tokenizer
) -> tuple[tuple[int, ...], str | None]:
    """The prompt's token ids, and its text when it came as text (None for ids)."""
    prompt = data.get("prompt")
    if prompt is None:
        raise ApiError(400, "prompt: field required", "prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise ApiError(400, "prompt: must not be empty", "prompt")
        return tuple(tokenizer.encode(prompt)), prompt
    # Token ids are ints, not bools (type() is exact); checked in C, not per token.
    if isinstance(prompt, list) and prompt and set(map(type, prompt)) == {int}:
        vocab_size = tokenizer.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab_size:
            raise ApiError(400, f"prompt: token ids must be in [0, {vocab_size})", "prompt")
        return tuple(prompt), None
    if isinstance(prompt, list) and len(prompt) > 1:
        raise ApiError(400, "prompt: batched prompts are not supported; send one", "prompt")
    raise ApiError(400, "prompt: must be a string or a list of token ids", "prompt")


def render_chat(
    data: Mapping[str, Any], template: ChatTemplate, add_generation_prompt: bool = True
) -> str:
    messages = data.get("messages")
    if messages is None:
        raise ApiError(400, "messages: field required", "messages")
    if not isinstance(messages, list):
        raise ApiError(400, "messages: must be a list", "messages")
    try:
        return template.render(messages, add_generation_prompt=add_generation_prompt)
    except ChatTemplateError as exc:
        raise ApiError(400, str(exc), "messages") from None


def parse_completion(
    data: Mapping[str, Any],
    *,
    is_chat: bool,
    tokenizer: Tokenizer,
    template: ChatTemplate,
) -> ParsedRequest:
    """Validate `data` (a decoded JSON body) and tokenize its prompt."""
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model: field required (a string)", "model")
    if is_chat:
        text = render_chat(data, template, _bool(data, "add_generation_prompt", True))
        prompt_ids = tuple(tokenizer.encode(text))
        echo = ""
    else:
        prompt_ids, prompt_text = _prompt_ids(data, tokenizer)
        echo = ""
        if _bool(data, "echo"):
            echo = prompt_text if prompt_text is not None else tokenizer.decode(prompt_ids)
    max_tokens = _opt_int(data, "max_completion_tokens", 1) if is_chat else None
    if max_tokens is None:
        max_tokens = _opt_int(data, "max_tokens", 1)
    n = _opt_int(data, "n", 1)
    if n is not None and n > 1:
        raise ApiError(400, "n: only n=1 is supported by the simulator", "n")
    _opt_number(data, "temperature", 0.0, 2.0)
    _opt_number(data, "top_p", 0.0, 1.0)
    _opt_number(data, "presence_penalty", -2.0, 2.0)
    _opt_number(data, "frequency_penalty", -2.0, 2.0)
    stream = _bool(data, "stream")
    opts = data.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise ApiError(400, "stream_options: must be an object", "stream_options")
    opts = opts or {}
    if opts and not stream:
        raise ApiError(400, "stream_options: only allowed when stream is true", "stream_options")
    stop_ids = data.get("stop_token_ids") or []
    if not isinstance(stop_ids, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in stop_ids
    ):
        raise ApiError(400, "stop_token_ids: must be a list of integers", "stop_token_ids")
    salt = data.get("cache_salt")
    if salt is not None and (not isinstance(salt, str) or not salt):
        raise ApiError(400, "cache_salt: must be a non-empty string", "cache_salt")
    priority = _opt_int(data, "priority", -(2**31)) or 0
    return ParsedRequest(
        is_chat=is_chat,
        model=model,
        prompt_token_ids=prompt_ids,
        max_tokens=max_tokens,
        stream=stream,
        include_usage=_bool(opts, "include_usage"),
        continuous_usage_stats=_bool(opts, "continuous_usage_stats"),
        stop=_stop(data),
        stop_token_ids=frozenset(stop_ids),
        ignore_eos=_bool(data, "ignore_eos"),
        cache_salt=salt,
        echo_prompt=echo,
        debug_timing=_bool(data, "headway_debug_timing"),
        priority=priority,
    )
