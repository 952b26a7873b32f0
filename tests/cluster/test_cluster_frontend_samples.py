"""The front-end overhead as a measured distribution: each call draws one sample
(seeded, its own stream), part of its TTFT; validated at config time."""

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


def _sim(
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
    sim = _sim(tokenizer, samples_s)
    got = _overheads_s(sim, sim.run(_sessions(40)))
    for x in got:
        assert min(abs(x - s) for s in samples_s) < 1e-9
    # Uniform draws: with 40 calls every sample shows up.
    assert {min(samples_s, key=lambda s: abs(x - s)) for x in got} == set(samples_s)


def test_draws_follow_the_seed(tokenizer: HfTokenizer) -> None:
    samples_s = (0.001, 0.002, 0.004, 0.008)

    def draws(seed: int) -> list[float]:
        sim = _sim(tokenizer, samples_s, seed=seed)
        return [round(x, 9) for x in _overheads_s(sim, sim.run(_sessions(20)))]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


def test_the_routing_stream_is_untouched(tokenizer: HfTokenizer) -> None:
    # power-of-two draws its candidates from the routing rng (idle replicas tie): the
    # replicas chosen follow the seed, and not the overhead samples drawn.
    def picks(samples_s: tuple[float, ...], seed: int = 0) -> dict[str, int]:
        sim = _sim(tokenizer, samples_s, seed=seed, routing={"preset": "power-of-two"}, replicas=4)
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
