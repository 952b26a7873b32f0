"""Invariants every workload keeps: exact prompt token counts, reproducible from a seed,
different across seeds, unique call ids, answer_of pointing at earlier calls."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

import pytest

from headway.core.tokenizer import ChatTemplate
from headway.core.workloads import (
    WORKLOAD_NAMES,
    Session,
    ShareGptRecord,
    TraceRecord,
    build_workload,
    text_factory,
)
from headway.resources.tokenizer import HfTokenizer, default_tokenizer

TRACE = [TraceRecord(10.0 + i, 700 + 37 * i, 20 + i, (1, 2, 3 + i % 2)) for i in range(8)]
SHAREGPT = [
    ShareGptRecord(
        str(i), " ".join(["tell me about the replica"] * (i + 1)), "sure thing " * (i + 2)
    )
    for i in range(8)
]
SMALL: dict[str, Mapping[str, object]] = {
    "synthetic": {"input_len": "uniform:300", "output_len": 16, "prefix_tokens": 20},
    "shared-prefix": {"num_groups": 3, "prompts_per_group": 2, "system_prompt_tokens": 200},
    "multi-turn": {"num_turns": 3, "system_prompt_tokens": 50, "user_tokens": "uniform:40"},
    "agentic": {
        "system_prompt_tokens": 100,
        "num_tool_rounds": 2,
        "num_subagents": 2,
        "tool_result_tokens": 80,
    },
    "long-context": {"num_documents": 2, "document_tokens": 1500},
    "trace": {"records": TRACE, "block_tokens": 128},
    "sharegpt": {"records": SHAREGPT},
}


@pytest.fixture(scope="module")
def tokenizer() -> HfTokenizer:
    return default_tokenizer()


def make(name: str, tokenizer: HfTokenizer, seed: int, num: int = 6) -> list[Session]:
    return list(build_workload(name, SMALL[name], tokenizer).sessions(num, seed))


def test_every_workload_is_covered() -> None:
    assert set(SMALL) == set(WORKLOAD_NAMES)


@pytest.mark.parametrize("name", WORKLOAD_NAMES)
def test_prompt_tokens_are_exact(name: str, tokenizer: HfTokenizer) -> None:
    template = ChatTemplate()
    calls = [c for s in make(name, tokenizer, 1) for c in s.calls]
    assert calls
    for call in calls:
        rendered = template.render([m.as_dict() for m in call.messages])
        assert len(tokenizer.encode(rendered)) == call.prompt_tokens, call.call_id
        assert call.max_tokens >= 1


@pytest.mark.parametrize("name", WORKLOAD_NAMES)
def test_reproducible_and_seed_dependent(name: str, tokenizer: HfTokenizer) -> None:
    a, b, other = make(name, tokenizer, 5), make(name, tokenizer, 5), make(name, tokenizer, 6)
    assert a == b
    assert a != other


@pytest.mark.parametrize("name", WORKLOAD_NAMES)
def test_call_ids_unique_and_answers_refer_to_earlier_calls(
    name: str, tokenizer: HfTokenizer
) -> None:
    sessions = make(name, tokenizer, 2)
    ids = [c.call_id for s in sessions for c in s.calls]
    assert len(ids) == len(set(ids))
    assert len({s.session_id for s in sessions}) == len(sessions)
    factory = text_factory(tokenizer)
    for s in sessions:
        earlier: dict[str, int] = {}
        for stage in s.stages:
            assert stage.delay_s >= 0.0
            for call in stage.calls:
                for m in call.messages:
                    if m.answer_of is not None:
                        # scripted answers stand for an earlier stage's call, at its length
                        assert m.answer_of in earlier
                        assert factory.count(m.content) == earlier[m.answer_of]
            earlier.update({c.call_id: c.max_tokens for c in stage.calls})


@pytest.mark.parametrize("name", WORKLOAD_NAMES)
def test_params_are_json_ready(name: str, tokenizer: HfTokenizer) -> None:
    params = build_workload(name, SMALL[name], tokenizer).params()
    json.dumps(dict(params))


def test_first_sessions_do_not_depend_on_how_many_are_asked(tokenizer: HfTokenizer) -> None:
    for name in ("synthetic", "multi-turn", "agentic", "long-context", "shared-prefix"):
        assert make(name, tokenizer, 3, num=2) == make(name, tokenizer, 3, num=5)[:2], name


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("nope", {}, "workload: unknown name"),
        ("synthetic", {"input_length": 5}, r"synthetic: unknown parameter\(s\) \['input_length'\]"),
        ("synthetic", {"input_len": "gauss:10"}, "synthetic.input_len.kind"),
        ("synthetic", {"output_len": 0}, "synthetic.output_len.mean"),
        ("shared-prefix", {"num_groups": 0}, "shared-prefix.num_groups: must be >= 1"),
        ("shared-prefix", {"num_groups": "many"}, "shared-prefix.num_groups: not a number"),
        ("multi-turn", {"think_time_s": -1.0}, "multi-turn.think_time_s.mean_s"),
        ("agentic", {"num_tool_rounds": 0}, "agentic.num_tool_rounds"),
        ("agentic", {"tool_result_role": "robot"}, "agentic.tool_result_role"),
        ("long-context", {"num_documents": 1.5}, "long-context.num_documents: must be an integer"),
        ("trace", {}, "trace.records"),
        ("trace", {"records": [], "time_scale": 1.0}, "trace.records: the trace is empty"),
        ("trace", {"records": TRACE, "time_scale": -1}, "trace.time_scale"),
        ("sharegpt", {"records": [{"prompt": "x"}]}, "sharegpt.records"),
    ],
    ids=[
        "unknown-name",
        "unknown-param",
        "bad-kind",
        "zero-length",
        "zero-groups",
        "not-a-number",
        "negative-delay",
        "agent-without-work",
        "bad-role",
        "fractional",
        "no-records",
        "empty-trace",
        "negative-scale",
        "raw-records",
    ],
)
def test_bad_params_name_the_field(
    name: str, params: Mapping[str, object], match: str, tokenizer: HfTokenizer
) -> None:
    with pytest.raises(ValueError, match=match):
        build_workload(name, params, tokenizer)


def test_string_params_from_the_command_line(tokenizer: HfTokenizer) -> None:
    wl = build_workload("shared-prefix", {"num_groups": "2", "prompts_per_group": "3"}, tokenizer)
    assert wl.params()["num_groups"] == 2


def test_text_factory_is_additive_for_the_shipped_tokenizer(tokenizer: HfTokenizer) -> None:
    factory = text_factory(tokenizer)
    assert factory.is_additive
    assert factory is text_factory(tokenizer)  # the vocabulary is scanned once


class MergingTokenizer:
    """A toy tokenizer that is not additive: a word repeated right after itself is one
    token, so a text's count depends on its neighbours."""

    def __init__(self) -> None:
        from headway.core.tokenizer import SPECIAL_TOKENS

        words = [f" w{chr(97 + i)}{chr(97 + j)}" for i in range(6) for j in range(6)]
        self._pieces = [*SPECIAL_TOKENS, "\n", *words, *[w + w for w in words]]
        letters = [chr(c) for c in range(32, 127)]
        self._pieces += [c for c in letters if c not in self._pieces]
        self._ids = {p: i for i, p in enumerate(self._pieces)}
        pattern = "|".join(re.escape(p) for p in sorted(self._pieces, key=len, reverse=True))
        self._re = re.compile(pattern)

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    @property
    def eos_token_id(self) -> int:
        return 4

    def encode(self, text: str) -> list[int]:
        return [self._ids[m.group(0)] for m in self._re.finditer(text)]

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(self._pieces[i] for i in token_ids if i >= 5)


@pytest.mark.parametrize("name", ["synthetic", "multi-turn", "agentic"])
def test_non_additive_tokenizer_still_gets_exact_prompt_tokens(name: str) -> None:
    tokenizer = MergingTokenizer()
    assert not text_factory(tokenizer).is_additive
    template = ChatTemplate()
    for s in build_workload(name, SMALL[name], tokenizer).sessions(3, 0):
        for call in s.calls:
            rendered = template.render([m.as_dict() for m in call.messages])
            assert len(tokenizer.encode(rendered)) == call.prompt_tokens
