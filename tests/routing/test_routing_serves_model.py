"""serves-model filter: the request's base model, and its LoRA adapter if it names one
(an endpoint listing no adapters is unknown, so kept)."""

from __future__ import annotations

import pytest
from routing_helpers import ctx, snap

from headway.routing import RequestScratch
from headway.routing.plugins.serves_model import ServesModelFilter, ServesModelParams

ENDPOINTS = (
    snap("base", models=frozenset({"llama"})),
    snap("both", models=frozenset({"llama", "qwen"})),
    snap("lora", models=frozenset({"llama"}), lora_adapters=frozenset({"sql"})),
    snap("qwen-lora", models=frozenset({"qwen"}), lora_adapters=frozenset({"sql", "chat"})),
    snap("nothing", models=frozenset()),
)


@pytest.mark.parametrize(
    ("model", "adapter", "expected"),
    [
        ("llama", None, ["base", "both", "lora"]),
        ("qwen", None, ["both", "qwen-lora"]),
        ("llama", "sql", ["base", "both", "lora"]),
        ("qwen", "chat", ["both", "qwen-lora"]),
        ("llama", "chat", ["base", "both"]),
        ("mistral", None, []),
        ("mistral", "sql", []),
    ],
    ids=[
        "model",
        "other-model",
        "adapter-listed-or-unknown",
        "adapter-elsewhere",
        "listed-without-the-adapter-dropped",
        "unknown-model",
        "adapter-never-saves-a-missing-model",
    ],
)
def test_serves_model(model: str, adapter: str | None, expected: list[str]) -> None:
    kept = ServesModelFilter(ServesModelParams()).filter(
        ctx(model=model, lora_adapter=adapter), ENDPOINTS, RequestScratch(0.0)
    )
    assert [e.endpoint_id for e in kept] == expected
