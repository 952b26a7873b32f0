"""vLLM's worker endpoints and the SGLang-style ones the Rust routers probe."""

from __future__ import annotations

from typing import Any

import pytest
from sim_harness import MODEL, Fleet, chat_body, connectable, get, poll, post

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Tokenize me, please."},
]


def test_health(main_fleet: Fleet) -> None:
    for url in main_fleet.urls:
        assert get(url, "/health").status == 200


def test_version(main_fleet: Fleet) -> None:
    resp = get(main_fleet.url, "/version")
    assert resp.status == 200
    version = resp.json()["version"]
    assert isinstance(version, str) and version[0].isdigit()


def test_load(main_fleet: Fleet) -> None:
    resp = get(main_fleet.url, "/load")
    assert resp.status == 200
    assert resp.json() == {"server_load": 0}


def test_get_load(main_fleet: Fleet) -> None:
    resp = get(main_fleet.url, "/get_load")
    assert resp.status == 200
    (entry,) = resp.json()
    assert entry["dp_rank"] == 0
    assert entry["num_reqs"] == 0
    assert entry["num_waiting_reqs"] == 0


def test_tokenize_prompt_form(main_fleet: Fleet) -> None:
    resp = post(main_fleet.url, "/tokenize", {"model": MODEL, "prompt": "Hello world, again."})
    assert resp.status == 200, resp.text
    body = resp.json()
    assert body["count"] == len(body["tokens"]) > 0
    assert all(isinstance(t, int) for t in body["tokens"])
    assert body["max_model_len"] == 4096


def test_tokenize_messages_form_matches_chat_usage(main_fleet: Fleet) -> None:
    tok = post(main_fleet.url, "/tokenize", {"model": MODEL, "messages": MESSAGES}).json()
    assert tok["count"] == len(tok["tokens"]) > 0
    chat = post(
        main_fleet.url,
        "/v1/chat/completions",
        {"model": MODEL, "messages": MESSAGES, "max_tokens": 1},
    )
    assert chat.status == 200, chat.text
    assert chat.json()["usage"]["prompt_tokens"] == tok["count"]


def test_tokenize_return_token_strs(main_fleet: Fleet) -> None:
    body = post(
        main_fleet.url, "/tokenize", {"prompt": "abc def", "return_token_strs": True}
    ).json()
    assert len(body["token_strs"]) == body["count"]


def test_tokenize_unknown_model_is_404(main_fleet: Fleet) -> None:
    resp = post(main_fleet.url, "/tokenize", {"model": "nope", "prompt": "x"})
    assert resp.status == 404
    assert resp.json()["error"]["param"] == "model"


def test_detokenize_round_trip(main_fleet: Fleet) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    tokens = post(main_fleet.url, "/tokenize", {"model": MODEL, "prompt": text}).json()["tokens"]
    resp = post(main_fleet.url, "/detokenize", {"model": MODEL, "tokens": tokens})
    assert resp.status == 200, resp.text
    assert resp.json()["prompt"].strip() == text


def test_kv_event_sources(main_fleet: Fleet) -> None:
    for i, url in enumerate(main_fleet.urls):
        body = get(url, "/kv_event_sources").json()
        assert set(body) == {"0"}
        src = body["0"]
        # A wildcard bind is reported with an address clients can dial.
        assert connectable(src["endpoint"]) == main_fleet.kv_endpoint(i)
        assert connectable(src["replay_endpoint"]) == main_fleet.replay_endpoint(i)
        assert "0.0.0.0" not in src["endpoint"] and "*" not in src["endpoint"]
        assert src["topic"] == ""
        assert src["publisher"] == "zmq"


def test_kv_event_sources_topic(array_fleet: Fleet) -> None:
    src = get(array_fleet.url, "/kv_event_sources").json()["0"]
    assert src["topic"] == "arr"
    assert src["endpoint"].startswith("tcp://")


def _rendered_ids(rendered: dict[str, Any]) -> list[int]:
    # vLLM 0.32 answers a GenerateRequest (`token_ids`); older ones `prompt_token_ids`.
    ids = rendered.get("token_ids", rendered.get("prompt_token_ids"))
    assert isinstance(ids, list), rendered
    return ids


def test_chat_render_matches_tokenize(main_fleet: Fleet) -> None:
    resp = post(
        main_fleet.url,
        "/v1/chat/completions/render",
        {"model": MODEL, "messages": MESSAGES, "max_tokens": 7},
        headers={"x-request-id": "render-1"},
    )
    assert resp.status == 200, resp.text
    rendered = resp.json()
    tok = post(main_fleet.url, "/tokenize", {"model": MODEL, "messages": MESSAGES}).json()
    assert _rendered_ids(rendered) == tok["tokens"]
    assert "render-1" in rendered["request_id"]
    assert rendered["sampling_params"]["max_tokens"] == 7


def test_completions_render_matches_tokenize(main_fleet: Fleet) -> None:
    prompt = "Render this completion prompt."
    rendered = post(
        main_fleet.url, "/v1/completions/render", {"model": MODEL, "prompt": prompt}
    ).json()
    if isinstance(rendered, list):  # one GenerateRequest per prompt
        (rendered,) = rendered
    tok = post(main_fleet.url, "/tokenize", {"model": MODEL, "prompt": prompt}).json()
    assert _rendered_ids(rendered) == tok["tokens"]


def test_render_unknown_model_is_404(main_fleet: Fleet) -> None:
    resp = post(main_fleet.url, "/v1/chat/completions/render", {"model": "x", "messages": MESSAGES})
    assert resp.status == 404
    assert resp.json()["error"]["param"] == "model"


@pytest.mark.parametrize("path", ["/get_server_info", "/server_info"])
def test_server_info(main_fleet: Fleet, path: str) -> None:
    resp = get(main_fleet.url, path)
    assert resp.status == 200
    info = resp.json()
    assert info["block_size"] == 16
    assert info["max_model_len"] == 4096


def test_get_model_info(main_fleet: Fleet) -> None:
    info = get(main_fleet.url, "/get_model_info").json()
    assert info["is_generation"] is True
    assert info["served_model_name"] == MODEL
    assert info["model_path"]


def _cache(url: str) -> dict[str, Any]:
    resp = get(url, "/debug/cache")
    assert resp.status == 200
    return dict(resp.json())


def test_debug_cache_lists_hashes_after_request(main_fleet: Fleet) -> None:
    url = main_fleet.urls[0]
    before = set(_cache(url)["block_hashes"])
    body = chat_body("debug cache listing " * 10, max_tokens=2, ignore_eos=True)
    n_prompt = post(url, "/v1/chat/completions", body).json()["usage"]["prompt_tokens"]
    after = _cache(url)
    new = set(after["block_hashes"]) - before
    assert len(new) >= n_prompt // 16
    assert all(isinstance(h, int) and 0 <= h < 2**64 for h in after["block_hashes"])
    assert after["num_cached_blocks"] == len(after["block_hashes"])
    assert after["block_size"] == 16


def test_reset_prefix_cache(main_fleet: Fleet) -> None:
    url = main_fleet.urls[1]
    body = chat_body("reset the prefix cache " * 12, max_tokens=2, ignore_eos=True)
    assert post(url, "/v1/chat/completions", body).status == 200
    assert _cache(url)["num_cached_blocks"] > 0
    # vLLM answers {"success": false} while blocks are held; none should be now.
    poll(
        lambda: post(url, "/reset_prefix_cache"),
        lambda r: r.status == 200 and r.json().get("success", True) is True,
        what="prefix cache reset",
    )
    cache = _cache(url)
    assert cache["block_hashes"] == []
    assert cache["num_cached_blocks"] == 0
    again = post(url, "/v1/chat/completions", body).json()
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    # ...and the cache works again afterwards.
    third = post(url, "/v1/chat/completions", body).json()
    assert third["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
