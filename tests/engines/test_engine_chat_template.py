"""The tiny model's Jinja chat template renders exactly what the gateway renders
(`headway.core.tokenizer.ChatTemplate`), for the message shapes the gateway accepts.

Rendered the way transformers renders chat templates (a sandboxed Jinja environment
with `trim_blocks` and `lstrip_blocks`). No engine needed; in the engine tier because
the template belongs to the engine tooling (test_engine_vllm.py checks the same
equality end to end against vLLM's `/tokenize` for string contents).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "engines"))

import headway_engines as he

from headway.core.tokenizer import BEGIN_OF_TEXT, ChatTemplate

pytestmark = pytest.mark.engine


def _render_like_transformers(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(he.CHAT_TEMPLATE)
    return template.render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=BEGIN_OF_TEXT
    )


CASES: list[tuple[str, list[dict[str, Any]], bool]] = [
    ("one-user", [{"role": "user", "content": "Hello world!"}], True),
    (
        "system-user-assistant-user",
        [
            {"role": "system", "content": "Be terse.\n\nAlways."},
            {"role": "user", "content": "  leading and trailing spaces  "},
            {"role": "assistant", "content": "Sure."},
            {"role": "user", "content": "Again?"},
        ],
        True,
    ),
    ("no-generation-prompt", [{"role": "user", "content": "x"}], False),
    (
        "content-parts",
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "part one, "},
                    {"type": "image_url", "image_url": {"url": "data:,"}},
                    {"type": "text", "text": "part two"},
                ],
            }
        ],
        True,
    ),
    (
        "none-content",
        [{"role": "assistant", "content": None}, {"role": "user", "content": "q"}],
        True,
    ),
    ("empty-string", [{"role": "user", "content": ""}], True),
    ("tool-role", [{"role": "tool", "content": '{"ok": true}'}], True),
]


@pytest.mark.parametrize(
    ("messages", "add_generation_prompt"),
    [(m, g) for _, m, g in CASES],
    ids=[name for name, _, _ in CASES],
)
def test_engine_chat_template_matches_gateway(
    messages: list[dict[str, Any]], add_generation_prompt: bool
) -> None:
    expected = ChatTemplate().render(messages, add_generation_prompt=add_generation_prompt)
    assert _render_like_transformers(messages, add_generation_prompt) == expected
