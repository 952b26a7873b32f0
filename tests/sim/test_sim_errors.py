"""Rejections: OpenAI-style JSON errors with the right status, never a traceback;
and `headway sim` flag errors."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from sim_harness import MODEL, Fleet, chat_body, post, request, sim_command

CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hello"}]


def _assert_error_shape(status: int, body: bytes, expected: int) -> dict[str, Any]:
    text = body.decode(errors="replace")
    assert status == expected, text
    assert "Traceback" not in text
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    assert err["code"] == expected
    return dict(err)


ERROR_CASES: list[tuple[str, str, str, Any, int, str | None]] = [
    # id, method, path, body, status, param
    ("malformed-json", "POST", CHAT, "{not json", 400, None),
    ("empty-body", "POST", CHAT, "", 400, None),
    ("body-is-array", "POST", CHAT, [1, 2], 400, None),
    ("body-is-string", "POST", CHAT, '"hello"', 400, None),
    ("missing-model", "POST", CHAT, {"messages": MSG}, 400, "model"),
    ("model-not-string", "POST", CHAT, {"model": 3, "messages": MSG}, 400, "model"),
    ("missing-messages", "POST", CHAT, {"model": MODEL}, 400, "messages"),
    ("messages-not-list", "POST", CHAT, {"model": MODEL, "messages": "hi"}, 400, "messages"),
    ("unknown-model", "POST", CHAT, {"model": "no-such-model", "messages": MSG}, 404, "model"),
    ("n-2", "POST", CHAT, chat_body("hi", n=2), 400, "n"),
    ("temperature-high", "POST", CHAT, chat_body("hi", temperature=5), 400, "temperature"),
    ("temperature-negative", "POST", CHAT, chat_body("hi", temperature=-1), 400, "temperature"),
    ("temperature-string", "POST", CHAT, chat_body("hi", temperature="hot"), 400, "temperature"),
    ("top-p-high", "POST", CHAT, chat_body("hi", top_p=1.5), 400, "top_p"),
    ("max-tokens-0", "POST", CHAT, chat_body("hi", max_tokens=0), 400, "max_tokens"),
    ("max-tokens-negative", "POST", CHAT, chat_body("hi", max_tokens=-3), 400, "max_tokens"),
    ("max-tokens-float", "POST", CHAT, chat_body("hi", max_tokens=1.5), 400, "max_tokens"),
    ("max-tokens-beyond-context", "POST", CHAT, chat_body("hi", max_tokens=4096), 400, "max_tokens"),
    ("stream-not-bool", "POST", CHAT, chat_body("hi", stream="yes"), 400, "stream"),
    ("stop-not-strings", "POST", CHAT, chat_body("hi", stop=[1, 2]), 400, "stop"),
    ("stream-options-without-stream", "POST", CHAT,
     chat_body("hi", stream_options={"include_usage": True}), 400, "stream_options"),
    ("completions-missing-prompt", "POST", "/v1/completions", {"model": MODEL}, 400, "prompt"),
    ("completions-empty-prompt", "POST", "/v1/completions", {"model": MODEL, "prompt": ""}, 400, "prompt"),
    ("completions-bad-token-id", "POST", "/v1/completions",
     {"model": MODEL, "prompt": [1, -5]}, 400, "prompt"),
    ("completions-bool-token-id", "POST", "/v1/completions",
     {"model": MODEL, "prompt": [1, True]}, 400, "prompt"),
    ("completions-float-token-id", "POST", "/v1/completions",
     {"model": MODEL, "prompt": [1, 2.0]}, 400, "prompt"),
    ("completions-unknown-model", "POST", "/v1/completions",
     {"model": "nope", "prompt": "hi"}, 404, "model"),
    ("unknown-route", "GET", "/v1/nothing-here", None, 404, None),
    ("unknown-route-post", "POST", "/v2/chat/completions", chat_body("hi"), 404, None),
    ("wrong-method", "GET", CHAT, None, 405, None),
    ("tokenize-no-prompt", "POST", "/tokenize", {"model": MODEL}, 400, "prompt"),
    ("detokenize-bad-tokens", "POST", "/detokenize", {"model": MODEL, "tokens": "abc"}, 400, "tokens"),
    ("admin-faults-unknown-field", "POST", "/admin/faults", {"explode": True}, 400, None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"),
    [c[1:] for c in ERROR_CASES],
    ids=[c[0] for c in ERROR_CASES],
)
def test_error_responses(
    main_fleet: Fleet, method: str, path: str, body: Any, status: int, param: str | None
) -> None:
    resp = request(main_fleet.url, method, path, body)
    err = _assert_error_shape(resp.status, resp.body, status)
    if param is not None:
        assert err["param"] == param, err


def test_prompt_plus_max_tokens_beyond_max_model_len(main_fleet: Fleet) -> None:
    long_prompt = "word " * 1500  # ~3000 tokens
    resp = post(main_fleet.url, CHAT, chat_body(long_prompt, max_tokens=2000))
    err = _assert_error_shape(resp.status, resp.body, 400)
    assert "4096" in err["message"]
    # Within the limit the same prompt is served.
    ok = post(main_fleet.url, CHAT, chat_body(long_prompt, max_tokens=2, ignore_eos=True))
    assert ok.status == 200, ok.text


def test_body_over_max_body_bytes_is_413(main_fleet: Fleet) -> None:
    resp = post(main_fleet.url, CHAT, chat_body("x" * 70_000, max_tokens=1))
    err = _assert_error_shape(resp.status, resp.body, 413)
    assert err["type"]


def test_admin_faults_unknown_field_is_named(main_fleet: Fleet) -> None:
    resp = post(main_fleet.url, "/admin/faults", {"explode": True})
    err = _assert_error_shape(resp.status, resp.body, 400)
    assert "explode" in err["message"]


def test_unknown_extra_fields_are_accepted(main_fleet: Fleet) -> None:
    body = chat_body(
        "extra fields",
        max_tokens=2,
        some_future_field={"nested": [1, 2]},
        guided_json=None,
        user="someone",
        logit_bias={},
    )
    resp = post(main_fleet.url, CHAT, body)
    assert resp.status == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] <= 2


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("--replicas", "0"), "--replicas"),
        (("--kv-events-config", "{bad"), "--kv-events-config"),
        (("--kv-events-config", "[1, 2]"), "--kv-events-config"),
        (("--time-scale", "0"), "--time-scale"),
        (("--fault-error-rate", "2"), "--fault-error-rate"),
        (("--fault-replicas", "a,b"), "--fault-replicas"),
        (("--model", "no-such-model"), "no-such-model"),
    ],
    ids=[
        "replicas-0",
        "kv-config-bad-json",
        "kv-config-not-object",
        "time-scale-0",
        "error-rate-2",
        "fault-replicas-junk",
        "unknown-model",
    ],
)
def test_cli_errors_exit_2_naming_the_flag(tmp_path: Any, args: tuple[str, ...], flag: str) -> None:
    proc = subprocess.run(
        sim_command("--port", "0", "--ready-file", str(tmp_path / "r.json"), *args),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    assert flag in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r.json").exists()
