"""The shape of each workload: prefix sharing, turn growth, the agent call graph,
documents, trace replay and ShareGPT sampling."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from itertools import pairwise

import numpy as np
import pytest

from headway.core.tokenizer import ChatTemplate
from headway.core.workloads import (
    RUN_HEADER,
    SESSION_HEADER,
    Call,
    LengthDist,
    LengthKind,
    Session,
    ShareGptRecord,
    TraceRecord,
    build_workload,
    parse_delay_dist,
    parse_length_dist,
    text_factory,
)
from headway.resources.tokenizer import HfTokenizer, default_tokenizer

TEMPLATE = ChatTemplate()


@pytest.fixture(scope="module")
def tokenizer() -> HfTokenizer:
    return default_tokenizer()


def sessions(
    name: str, params: Mapping[str, object], tokenizer: HfTokenizer, num: int, seed: int = 0
) -> list[Session]:
    return list(build_workload(name, params, tokenizer).sessions(num, seed))


def rendered(call: Call) -> str:
    return TEMPLATE.render([m.as_dict() for m in call.messages])


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def test_synthetic_lengths_and_shared_prefix(tokenizer: HfTokenizer) -> None:
    params = {
        "input_len": "uniform:200:spread=0.5",
        "output_len": "uniform:50",
        "prefix_tokens": 30,
    }
    ss = sessions("synthetic", params, tokenizer, 30)
    factory = text_factory(tokenizer)
    contents = [s.calls[0].messages[0].content for s in ss]
    for s, content in zip(ss, contents, strict=True):
        (call,) = s.calls
        assert [m.role for m in call.messages] == ["user"]
        assert 30 + 100 <= factory.count(content) <= 30 + 300
        assert 25 <= call.max_tokens <= 75
    ids = [tokenizer.encode(c) for c in contents]
    assert all(i[:30] == ids[0][:30] for i in ids)  # the shared prefix
    assert len({tuple(i[30:]) for i in ids}) == len(ids)  # the rest is fresh


def test_shared_prefix_groups_share_identical_leading_tokens(tokenizer: HfTokenizer) -> None:
    params = {
        "num_groups": 4,
        "prompts_per_group": 3,
        "system_prompt_tokens": 64,
        "question_tokens": 16,
    }
    ss = sessions("shared-prefix", params, tokenizer, 24)
    by_system: dict[str, list[Call]] = {}
    for s in ss:
        (call,) = s.calls
        assert [m.role for m in call.messages] == ["system", "user"]
        by_system.setdefault(call.messages[0].content, []).append(call)
    assert len(by_system) == 4
    assert sorted(len(v) for v in by_system.values()) == [6, 6, 6, 6]  # two blocks of 4 x 3
    # same group: identical token ids at least through the system prompt and template
    min_shared = 64 + 1 + 5  # system content + BOS + system header/footer
    groups = list(by_system.values())
    for calls in groups:
        ids = [tokenizer.encode(rendered(c)) for c in calls]
        for other in ids[1:]:
            assert common_prefix(ids[0], other) >= min_shared
    # different groups diverge right after the system header
    a, b = (tokenizer.encode(rendered(g[0])) for g in groups[:2])
    assert common_prefix(a, b) < min_shared


def test_shared_prefix_order_is_shuffled_across_groups(tokenizer: HfTokenizer) -> None:
    params = {
        "num_groups": 4,
        "prompts_per_group": 4,
        "system_prompt_tokens": 8,
        "question_tokens": 4,
    }
    systems = [
        s.calls[0].messages[0].content for s in sessions("shared-prefix", params, tokenizer, 16)
    ]
    first_seen = {text: systems.index(text) for text in systems}
    # a sorted order would put each group's four prompts next to each other
    runs = sum(1 for x, y in pairwise(systems) if x != y)
    assert runs > 3
    assert Counter(systems).most_common(1)[0][1] == 4
    assert len(first_seen) == 4


def test_multi_turn_context_grows_and_starts_with_the_previous_prompt(
    tokenizer: HfTokenizer,
) -> None:
    params = {
        "num_turns": 4,
        "user_tokens": 20,
        "output_tokens": "uniform:30",
        "think_time_s": "uniform:2.0",
    }
    for s in sessions("multi-turn", params, tokenizer, 3):
        calls = s.calls
        assert len(calls) == 4 and len(s.stages) == 4
        assert s.stages[0].delay_s == 0.0
        assert all(1.0 <= st.delay_s <= 3.0 for st in s.stages[1:])
        for prev, cur in pairwise(calls):
            assert rendered(cur).startswith(rendered(prev))
            prev_ids, cur_ids = tokenizer.encode(rendered(prev)), tokenizer.encode(rendered(cur))
            assert cur_ids[: len(prev_ids)] == prev_ids
            assert cur.prompt_tokens > prev.prompt_tokens
            # the new part: the scripted answer to the previous call, then a user turn
            new = cur.messages[len(prev.messages) :]
            assert [m.role for m in new] == ["assistant", "user"]
            assert new[0].answer_of == prev.call_id
        assert all(dict(c.headers)[SESSION_HEADER] == s.session_id for c in calls)


def test_multi_turn_with_a_system_prompt_shares_it_across_sessions(tokenizer: HfTokenizer) -> None:
    ss = sessions("multi-turn", {"num_turns": 1, "system_prompt_tokens": 40}, tokenizer, 3)
    systems = {s.calls[0].messages[0].content for s in ss}
    assert len(systems) == 1
    assert ss[0].calls[0].messages[0].role == "system"


def test_agent_call_graph(tokenizer: HfTokenizer) -> None:
    params = {
        "system_prompt_tokens": 64,
        "num_tool_rounds": 3,
        "num_subagents": 3,
        "tool_latency_s": 0.25,
        "think_time_s": 0.75,
        "tool_result_tokens": 40,
    }
    for s in sessions("agentic", params, tokenizer, 3):
        names = [[c.call_id.split("/")[1] for c in st.calls] for st in s.stages]
        assert names == [
            ["plan"],
            ["tool0"],
            ["tool1"],
            ["tool2"],
            ["sub0", "sub1", "sub2"],
            ["final"],
        ]
        assert [st.delay_s for st in s.stages] == [0.0, 0.25, 0.25, 0.25, 0.75, 0.75]
        for call in s.calls:
            headers = dict(call.headers)
            assert headers[SESSION_HEADER] == headers[RUN_HEADER] == s.session_id
        calls = s.calls
        # each parent call extends the previous parent call's prompt
        parents = [calls[0], calls[1], calls[2], calls[3], calls[-1]]
        for prev, cur in pairwise(parents):
            assert rendered(cur).startswith(rendered(prev))
        # tool rounds: answer to the previous call, then the tool result
        for prev, cur in pairwise(parents[:4]):
            new = cur.messages[len(prev.messages) :]
            assert [(m.role, m.answer_of) for m in new] == [
                ("assistant", prev.call_id),
                ("tool", None),
            ]
        # sub-agents: the parent's context + dispatch answer, then their own task
        subs = s.stages[4].calls
        parent_ctx = subs[0].messages[:-1]
        assert parent_ctx[: len(calls[3].messages)] == calls[3].messages
        assert parent_ctx[-1].answer_of == calls[3].call_id
        for sub in subs:
            assert sub.messages[:-1] == parent_ctx
            assert sub.messages[-1].role == "user"
        assert len({sub.messages[-1].content for sub in subs}) == 3
        # the final answer sees every sub-agent's result
        final = calls[-1]
        results = final.messages[len(parent_ctx) :]
        assert [(m.role, m.answer_of) for m in results] == [("tool", sub.call_id) for sub in subs]


def test_agent_without_subagents_answers_after_the_last_tool(tokenizer: HfTokenizer) -> None:
    params = {"num_tool_rounds": 2, "tool_result_role": "user", "system_prompt_tokens": 0}
    (s,) = sessions("agentic", params, tokenizer, 1)
    assert [c.call_id.split("/")[1] for c in s.calls] == ["plan", "tool0", "final"]
    final = s.calls[-1]
    assert [m.role for m in final.messages] == ["user", "assistant", "user", "assistant", "user"]


def test_agent_runs_share_the_system_prompt(tokenizer: HfTokenizer) -> None:
    ss = sessions("agentic", {"system_prompt_tokens": 32, "num_tool_rounds": 1}, tokenizer, 4)
    assert len({s.calls[0].messages[0].content for s in ss}) == 1
    assert len({s.calls[0].messages[1].content for s in ss}) == 4  # tasks differ


def test_long_context_questions_reuse_documents(tokenizer: HfTokenizer) -> None:
    params = {"num_documents": 3, "document_tokens": 500, "question_tokens": 10}
    ss = sessions("long-context", params, tokenizer, 30)
    factory = text_factory(tokenizer)
    prefixes: Counter[tuple[int, ...]] = Counter()
    for s in ss:
        content = s.calls[0].messages[0].content
        assert factory.count(content) == 510
        ids = tokenizer.encode(content)
        prefixes[tuple(ids[:500])] += 1
    assert len(prefixes) == 3
    assert sum(prefixes.values()) == 30


def test_trace_replays_timestamps_lengths_and_hash_blocks(tokenizer: HfTokenizer) -> None:
    records = [
        TraceRecord(100.0, 300, 10, (7, 8, 9)),
        TraceRecord(100.5, 250, 20, (7, 8, 5)),
        TraceRecord(102.0, 120, 30, (4,)),
        TraceRecord(101.0, 90, 40, None),
    ]
    ss = sessions(
        "trace", {"records": records, "block_tokens": 100, "time_scale": 0.5}, tokenizer, 10
    )
    assert len(ss) == 4  # a trace is finite
    assert [s.arrival_s for s in ss] == [0.0, 0.25, 0.5, 1.0]  # timestamp order, scaled
    assert [s.calls[0].prompt_tokens for s in ss] == [300, 250, 90, 120]
    assert [s.calls[0].max_tokens for s in ss] == [10, 20, 40, 30]
    a, b = (tokenizer.encode(s.calls[0].messages[0].content) for s in ss[:2])
    assert common_prefix(a, b) == 200  # hash ids 7, 8 shared, then 9 vs 5 differ


def test_trace_hash_blocks_are_the_same_across_records(tokenizer: HfTokenizer) -> None:
    records = [TraceRecord(0.0, 400, 5, (1, 2)), TraceRecord(1.0, 400, 5, (3, 2))]
    ss = sessions("trace", {"records": records, "block_tokens": 64}, tokenizer, 2)
    a, b = (tokenizer.encode(s.calls[0].messages[0].content) for s in ss)
    assert a[64:128] == b[64:128]  # block 2 at the same place
    assert a[:64] != b[:64]


def test_sharegpt_sampling_like_vllm(tokenizer: HfTokenizer) -> None:
    records = [
        ShareGptRecord("short", "hi", "hello there my friend"),  # prompt < 4 tokens: skipped
        ShareGptRecord("long", "word " * 2000, "ok ok ok ok ok"),  # prompt > 1024: skipped
    ] + [
        ShareGptRecord(f"ok{i}", f"please explain item {i} " * 3, "an answer " * (i + 3))
        for i in range(5)
    ]
    ss = sessions("sharegpt", {"records": records}, tokenizer, 10)
    assert len(ss) == 5
    by_prompt = {r.prompt: r for r in records}
    for s in ss:
        (call,) = s.calls
        record = by_prompt[call.messages[0].content]
        assert call.max_tokens == len(tokenizer.encode(record.completion))
    fixed = sessions("sharegpt", {"records": records, "output_tokens": 7}, tokenizer, 2)
    assert [s.calls[0].max_tokens for s in fixed] == [7, 7]


@pytest.mark.parametrize(
    ("dist", "tolerance"),
    [
        (LengthDist(200, LengthKind.LOGNORMAL, sigma=0.8), 0.05),
        (LengthDist(200, LengthKind.ZIPF), 0.05),
        (LengthDist(200, LengthKind.ZIPF, min_len=50, max_len=1000), 0.05),
    ],
    ids=["lognormal", "zipf", "zipf-bounded"],
)
def test_length_distribution_means(dist: LengthDist, tolerance: float) -> None:
    rng = np.random.default_rng(11)
    draws = np.array([dist.sample(rng) for _ in range(20_000)])
    assert draws.mean() == pytest.approx(dist.mean, rel=tolerance)
    assert draws.min() >= dist.min_len
    if dist.max_len is not None:
        assert draws.max() <= dist.max_len


def test_zipf_is_heavy_tailed() -> None:
    rng = np.random.default_rng(12)
    zipf = np.array([LengthDist(100, LengthKind.ZIPF).sample(rng) for _ in range(20_000)])
    assert np.median(zipf) < 100 < np.percentile(zipf, 99) / 4


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (64, LengthDist(64, LengthKind.CONSTANT)),
        ("uniform:64", LengthDist(64, LengthKind.UNIFORM)),
        ("uniform:64:spread=0.25", LengthDist(64, LengthKind.UNIFORM, spread=0.25)),
        (
            "lognormal:64:sigma=1.5,max_len=512",
            LengthDist(64, LengthKind.LOGNORMAL, sigma=1.5, max_len=512),
        ),
        (
            {"mean": 64, "kind": "zipf", "max_len": 300},
            LengthDist(64, LengthKind.ZIPF, max_len=300),
        ),
    ],
    ids=["number", "kind", "spread", "several-fields", "mapping"],
)
def test_length_spellings(value: object, expected: LengthDist) -> None:
    assert parse_length_dist(value, "x") == expected


@pytest.mark.parametrize(
    ("value", "expected_mean_s"),
    [
        (2, 2.0),
        ("exponential:2", 2.0),
        ("uniform:2:spread=0.5", 2.0),
        ("lognormal:2:sigma=0.3", 2.0),
    ],
    ids=["constant", "exponential", "uniform", "lognormal"],
)
def test_delay_means(value: object, expected_mean_s: float) -> None:
    dist = parse_delay_dist(value, "x")
    rng = np.random.default_rng(5)
    draws = np.array([dist.sample(rng) for _ in range(20_000)])
    assert draws.min() >= 0.0
    assert draws.mean() == pytest.approx(expected_mean_s, rel=0.05)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("uniform", "expected 'kind:mean"),
        ("uniform:abc", "x: not a number"),
        ("uniform:10:spread", "expected field=value"),
        (12.5, "must be an integer"),
        (True, "expected a length"),
        ("zipf:10:max_len=12", "x.mean: a zipf length"),
    ],
    ids=["no-mean", "bad-mean", "no-equals", "fraction", "bool", "zipf-mean-out-of-range"],
)
def test_bad_length_spellings(value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_length_dist(value, "x")
