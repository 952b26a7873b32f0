"""The front-end overhead: virtual time between a call's send and its routing, part of
its TTFT, and validated at config time; as a constant, or as a measured distribution
(each call draws one sample, seeded, from its own stream)."""

from __future__ import annotations

import pytest

from headway.cluster.simulation import (
    ClusterConfig,
    ClusterConfigError,
    ClusterRun,
    ClusterSimulation,
    ReplicaGroup,
)
from headway.core.costmodel import SeqWork
from headway.core.engine_factory import EngineSpec
from headway.core.workloads import Call, ChatMessage, Session, Stage
from headway.resources.catalog import load_catalog
from headway.resources.tokenizer import HfTokenizer, default_tokenizer

SPEC = EngineSpec(model="llama-3.1-8b", gpu="h100", num_gpu_blocks_override=2000)


@pytest.fixture(scope="module")
def tokenizer() -> HfTokenizer:
    return default_tokenizer()


def _sim(tokenizer: HfTokenizer, overhead_s: float, replicas: int = 1) -> ClusterSimulation:
    cfg = ClusterConfig(groups=(ReplicaGroup(SPEC, replicas),), frontend_overhead_s=overhead_s)
    return ClusterSimulation(cfg, load_catalog(), tokenizer, tokenizer.word_token_ids())


def _session(i: int, text: str, max_tokens: int = 3, num_stages: int = 1) -> Session:
    stages = tuple(
        Stage(0.0, (Call(f"c{i}-{k}", (ChatMessage("user", text),), max_tokens, 0, ()),))
        for k in range(num_stages)
    )
    return Session(f"s{i}", stages)


@pytest.mark.parametrize("overhead_s", [0.0, 0.004, 0.015], ids=["none", "4ms", "15ms"])
def test_lone_request_ttft_is_overhead_plus_prefill(
    tokenizer: HfTokenizer, overhead_s: float
) -> None:
    sim = _sim(tokenizer, overhead_s)
    run = sim.run([(1.0, _session(0, "hello there " * 50))])
    (rec,) = run.records
    assert rec.sent_at == 1.0 and rec.first_choice_at is not None
    n = rec.prompt_tokens
    assert n is not None
    prefill_s = sim._replicas[0].resolved.cost_model.step_time_s([SeqWork(n, 0)])
    assert rec.first_choice_at - rec.sent_at == pytest.approx(overhead_s + prefill_s, rel=1e-9)


def test_each_stage_pays_the_overhead_again(tokenizer: HfTokenizer) -> None:
    def span(run: ClusterRun) -> float:
        recs = sorted(run.records, key=lambda r: r.sent_at)
        assert recs[-1].last_token_at is not None
        return recs[-1].last_token_at - recs[0].sent_at

    session = _session(0, "plan the work " * 30, num_stages=3)
    base = span(_sim(tokenizer, 0.0).run([(0.0, session)]))
    slow = span(_sim(tokenizer, 0.01).run([(0.0, session)]))
    assert slow - base == pytest.approx(3 * 0.01, rel=1e-6)


@pytest.mark.parametrize("bad", [-0.001, float("nan"), float("inf")], ids=["neg", "nan", "inf"])
def test_bad_overhead_names_the_field(bad: float) -> None:
    with pytest.raises(ClusterConfigError, match="frontend_overhead_s"):
        ClusterConfig(groups=(ReplicaGroup(SPEC),), frontend_overhead_s=bad)


# -- a measured distribution (frontend_overhead_samples_s) --------------------------
def _sim_sampled(
    tokenizer: HfTokenizer,
    samples_s: tuple[float, ...],
    seed: int = 0,
    routing: dict[str, str] | None = None,
    replicas: int = 1,
) -> ClusterSimulation:
    cfg = ClusterConfig(
        groups=(ReplicaGroup(SPEC, replicas),),
        routing=routing or {"preset": "round-robin"},
        frontend_overhead_samples_s=samples_s,
        seed=seed,
    )
    return ClusterSimulation(cfg, load_catalog(), tokenizer, tokenizer.word_token_ids())


def _sessions(n: int, spacing_s: float = 1.0) -> list[tuple[float, Session]]:
    # Far apart and distinct (no prefix hits): TTFT = overhead + a full prefill.
    return [
        (
            i * spacing_s,
            Session(
                f"s{i}",
                (
                    Stage(
                        0.0,
                        (
                            Call(
                                f"c{i}",
                                (ChatMessage("user", f"call {i}: " + "hi " * 40),),
                                2,
                                0,
                                (),
                            ),
                        ),
                    ),
                ),
            ),
        )
        for i in range(n)
    ]


def _overheads_s(sim: ClusterSimulation, run: ClusterRun) -> list[float]:
    out = []
    for rec in sorted(run.records, key=lambda r: r.sent_at):
        assert rec.first_choice_at is not None and rec.prompt_tokens is not None
        prefill_s = sim._replicas[0].resolved.cost_model.step_time_s(
            [SeqWork(rec.prompt_tokens, 0)]
        )
        out.append(rec.first_choice_at - rec.sent_at - prefill_s)
    return out


@pytest.mark.parametrize(
    "samples_s",
    [(0.002,), (0.001, 0.004), (0.0, 0.003, 0.010)],
    ids=["one", "two", "with-zero"],
)
def test_each_call_pays_one_of_the_samples(
    tokenizer: HfTokenizer, samples_s: tuple[float, ...]
) -> None:
    sim = _sim_sampled(tokenizer, samples_s)
    got = _overheads_s(sim, sim.run(_sessions(40)))
    for x in got:
        assert min(abs(x - s) for s in samples_s) < 1e-9
    # Uniform draws: with 40 calls every sample shows up.
    assert {min(samples_s, key=lambda s: abs(x - s)) for x in got} == set(samples_s)


def test_draws_follow_the_seed(tokenizer: HfTokenizer) -> None:
    samples_s = (0.001, 0.002, 0.004, 0.008)

    def draws(seed: int) -> list[float]:
        sim = _sim_sampled(tokenizer, samples_s, seed=seed)
        return [round(x, 9) for x in _overheads_s(sim, sim.run(_sessions(20)))]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


def test_the_routing_stream_is_untouched(tokenizer: HfTokenizer) -> None:
    # power-of-two draws its candidates from the routing rng (idle replicas tie): the
    # replicas chosen follow the seed, and not the overhead samples drawn.
    def picks(samples_s: tuple[float, ...], seed: int = 0) -> dict[str, int]:
        sim = _sim_sampled(
            tokenizer, samples_s, seed=seed, routing={"preset": "power-of-two"}, replicas=4
        )
        return dict(sim.run(_sessions(30)).decisions)

    assert picks((0.001,)) == picks((0.001, 0.003, 0.009, 0.0, 0.02))
    assert picks((0.001,)) != picks((0.001,), seed=1)  # the check can fail


@pytest.mark.parametrize(
    ("samples_s", "overhead_s", "match"),
    [
        ((0.001, -0.001), 0.0, r"frontend_overhead_samples_s\[1\]"),
        ((float("nan"),), 0.0, r"frontend_overhead_samples_s\[0\]"),
        ((float("inf"),), 0.0, r"frontend_overhead_samples_s\[0\]"),
        ((0.001,), 0.002, "not both"),
    ],
    ids=["negative", "nan", "inf", "both"],
)
def test_bad_samples_name_the_field(
    samples_s: tuple[float, ...], overhead_s: float, match: str
) -> None:
    with pytest.raises(ClusterConfigError, match=match):
        ClusterConfig(
            groups=(ReplicaGroup(SPEC),),
            frontend_overhead_s=overhead_s,
            frontend_overhead_samples_s=samples_s,
        )
