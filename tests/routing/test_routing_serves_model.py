"""serves-model filter: the request's base model, and its LoRA adapter if it names one."""

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
        ("llama", "sql", ["lora"]),
        ("qwen", "chat", ["qwen-lora"]),
        ("llama", "chat", []),
        ("mistral", None, []),
    ],
    ids=["model", "other-model", "model-and-adapter", "adapter-elsewhere", "no-adapter", "unknown"],
)
def test_serves_model(model: str, adapter: str | None, expected: list[str]) -> None:
    kept = ServesModelFilter(ServesModelParams()).filter(
        ctx(model=model, lora_adapter=adapter), ENDPOINTS, RequestScratch(0.0)
    )
    assert [e.endpoint_id for e in kept] == expected
