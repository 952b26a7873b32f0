"""The runner: the plan (arrivals, bounds), closed-loop stages, parallel calls, model
answers, the duration bound, stopping with partial results, and cache resets between
arms, against an in-test aiohttp stub that logs what it saw."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from headway.bench import api
from headway.bench.api import BenchConfig, BenchTarget, run_bench
from headway.bench.client import StreamingClient
from headway.bench.runner import LoadLevel, PointRunner, cut_session, now_s, plan_sessions
from headway.core.workloads import Call, ChatMessage, Session, Stage


def call(call_id: str, *messages: ChatMessage, max_tokens: int = 2) -> Call:
    msgs = messages or (ChatMessage("user", f"question {call_id}"),)
    return Call(call_id, msgs, max_tokens, 5, headers=(("x-call-id", call_id),))


@dataclass
class ListWorkload:
    """A workload that yields copies of given sessions with fresh ids."""

    template: tuple[Stage, ...]
    name: str = "list"

    def params(self) -> Mapping[str, object]:
        return {"stages": len(self.template)}

    def sessions(self, num_sessions: int, seed: int) -> Iterator[Session]:
        for i in range(num_sessions):
            stages = tuple(
                Stage(
                    s.delay_s,
                    tuple(
                        Call(
                            f"{c.call_id}.{i}",
                            tuple(
                                ChatMessage(
                                    m.role,
                                    m.content,
                                    None if m.answer_of is None else f"{m.answer_of}.{i}",
                                )
                                for m in c.messages
                            ),
                            c.max_tokens,
                            c.prompt_tokens,
                            (("x-call-id", f"{c.call_id}.{i}"),),
                        )
                        for c in s.calls
                    ),
                )
                for s in self.template
            )
            yield Session(f"s{i}", stages)


SINGLE = ListWorkload((Stage(0.0, (call("a"),)),))
ALL_AT_ONCE = LoadLevel()


@dataclass
class Server:
    url: str
    log: list[tuple[str, str, float]] = field(default_factory=list)  # (event, call id, time)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    resets: list[float] = field(default_factory=list)
    reset_status: int = 200
    hold_s: float = 0.0
    barrier: dict[str, int] = field(default_factory=dict)  # call prefix -> callers to wait for
    arrived: dict[str, int] = field(default_factory=dict)
    is_hanging: bool = False

    def calls(self) -> list[str]:
        return [cid for ev, cid, _ in self.log if ev == "start"]

    def at(self, event: str, call_id: str) -> float:
        return next(t for ev, cid, t in self.log if ev == event and cid == call_id)


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def start_server() -> tuple[Server, web.AppRunner]:
    server = Server("")

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        cid = request.headers["x-call-id"]
        server.bodies[cid] = body
        server.log.append(("start", cid, now_s()))
        prefix = cid.split(".")[0]
        if prefix in server.barrier:
            # Parallel calls of one stage: answer only once all of them are here, so a
            # client that sent them one after the other would time out instead.
            server.arrived[prefix + cid[len(prefix) :]] = 1
            deadline = now_s() + 5
            while (
                sum(1 for k in server.arrived if k.split(".")[0] in server.barrier)
                < (server.barrier[prefix])
                and now_s() < deadline
            ):
                await asyncio.sleep(0.005)
        if server.is_hanging:
            await asyncio.sleep(30)
        if server.hold_s:
            await asyncio.sleep(server.hold_s)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        u = {"prompt_tokens": 5, "completion_tokens": 1}
        await resp.write(sse({"choices": [{"delta": {"content": f"ANSWER-{cid}"}}], "usage": u}))
        await resp.write(sse({"choices": [], "usage": u}))
        await resp.write(b"data: [DONE]\n\n")
        server.log.append(("end", cid, now_s()))
        await resp.write_eof()
        return resp

    async def reset(request: web.Request) -> web.Response:
        server.resets.append(now_s())
        server.log.append(("reset", "", now_s()))
        return web.json_response({"success": True}, status=server.reset_status)

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": "stub"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/reset_prefix_cache", reset)
    app.router.add_get("/version", version)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    return server, runner


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    s, runner = await start_server()
    try:
        yield s
    finally:
        await runner.cleanup()


async def run_plan(
    server: Server,
    workload: ListWorkload,
    level: LoadLevel = ALL_AT_ONCE,
    *,
    num_requests: int | None = None,
    duration_s: float | None = None,
    use_model_answers: bool = False,
) -> tuple[PointRunner, Any]:
    plan = plan_sessions(workload, level, seed=0, num_requests=num_requests, duration_s=duration_s)
    async with StreamingClient(server.url, "m", max_connections=0) as client:
        runner = PointRunner(
            client, level, duration_s=duration_s, use_model_answers=use_model_answers
        )
        run = await runner.run(plan, now_s())
    return runner, run


# -- the plan (pure) ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("level", "num_requests", "duration_s", "expected_calls"),
    [
        (LoadLevel(), 5, None, [2, 2, 1]),  # the last session is cut after call 5
        (LoadLevel(), 4, None, [2, 2]),
        (LoadLevel(request_rate=10.0), 1000, 0.35, None),  # arrivals decide
    ],
    ids=["num-requests-cuts-a-session", "num-requests-exact", "duration-bounds-arrivals"],
)
def test_plan_bounds(
    level: LoadLevel, num_requests: int, duration_s: float | None, expected_calls: list[int] | None
) -> None:
    workload = ListWorkload((Stage(0.0, (call("a"),)), Stage(0.0, (call("b"),))))
    plan = list(
        plan_sessions(workload, level, seed=3, num_requests=num_requests, duration_s=duration_s)
    )
    if expected_calls is not None:
        assert [len(s.session.calls) for s in plan] == expected_calls
        assert all(s.offset_s == 0.0 for s in plan)
    else:
        assert plan and all(s.offset_s < 0.35 for s in plan)
        offsets = [s.offset_s for s in plan]
        assert offsets == sorted(offsets) and offsets[0] > 0
        # The same seed gives the same arrivals.
        again = plan_sessions(workload, level, seed=3, num_requests=1000, duration_s=0.35)
        assert [s.offset_s for s in again] == offsets


def test_cut_session_keeps_whole_sessions_identical() -> None:
    session = next(iter(ListWorkload((Stage(0.0, (call("a"), call("b"))),)).sessions(1, 0)))
    assert cut_session(session, 2) is session
    assert [c.call_id for c in cut_session(session, 1).calls] == ["a.0"]


# -- execution -----------------------------------------------------------------------
async def test_stages_are_closed_loop_and_parallel_calls_go_together(server: Server) -> None:
    workload = ListWorkload(
        (
            Stage(0.0, (call("a"),)),
            Stage(0.05, (call("b"), call("c"))),
            Stage(0.02, (call("d"),)),
        )
    )
    server.barrier = {"b": 2, "c": 2}
    server.hold_s = 0.01
    runner, run = await run_plan(server, workload, num_requests=4)
    assert all(r.error is None for r in run.records), run.records
    assert sorted(server.calls()) == ["a.0", "b.0", "c.0", "d.0"]
    for later in ("b.0", "c.0"):
        assert server.at("start", later) >= server.at("end", "a.0") + 0.05
    assert server.at("start", "d.0") >= max(server.at("end", "b.0"), server.at("end", "c.0"))
    assert len(runner.lags_s) == 4 and all(lag >= 0 for lag in runner.lags_s)


async def test_model_answers_replace_scripted_turns(server: Server) -> None:
    scripted = ChatMessage("assistant", "scripted text", answer_of="a")
    workload = ListWorkload(
        (
            Stage(0.0, (call("a"),)),
            Stage(0.0, (call("b", ChatMessage("user", "q"), scripted, ChatMessage("user", "q2")),)),
        )
    )
    for use, expected in ((False, "scripted text"), (True, "ANSWER-a.0")):
        server.bodies.clear()
        await run_plan(server, workload, num_requests=2, use_model_answers=use)
        assert server.bodies["b.0"]["messages"][1] == {"role": "assistant", "content": expected}


async def test_concurrency_cap_holds_sessions_in_flight(server: Server) -> None:
    server.hold_s = 0.03
    _, run = await run_plan(server, SINGLE, LoadLevel(max_concurrency=2), num_requests=6)
    events = sorted((t, ev) for ev, _, t in server.log)
    in_flight = peak = 0
    for _, ev in events:
        in_flight += 1 if ev == "start" else -1
        peak = max(peak, in_flight)
    assert peak == 2
    assert len(run.records) == 6


async def test_duration_bounds_issuing_not_in_flight_calls(server: Server) -> None:
    # Stage 2 is due after the duration: never sent. Stage 1 is in flight at the
    # deadline: it completes.
    server.hold_s = 0.3
    workload = ListWorkload((Stage(0.0, (call("a"),)), Stage(0.5, (call("b"),))))
    _, run = await run_plan(server, workload, LoadLevel(max_concurrency=1), duration_s=0.2)
    assert server.calls() == ["a.0"]
    assert [r.error for r in run.records] == [None]


async def test_stop_cancels_in_flight_calls_and_keeps_partial_results(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        api, "build_workload_and_tokenizer", lambda name, params, path: (SINGLE, None)
    )
    server.is_hanging = True
    stop = asyncio.Event()
    config = BenchConfig(
        targets=(BenchTarget(server.url, "a"), BenchTarget(server.url + "/", "b")),
        model="m",
        workload="list",
        num_requests=3,
        show_progress=False,
    )
    task = asyncio.ensure_future(run_bench(config, stop_event=stop))
    while len(server.calls()) < 3:
        await asyncio.sleep(0.01)
    stop.set()
    results = await asyncio.wait_for(task, 10)
    assert results["metadata"]["is_partial"] is True
    assert [arm["label"] for arm in results["arms"]] == ["a"]  # arm b never started
    point = results["arms"][0]["points"][0]
    assert point["client"]["is_partial"] is True
    assert [r["error"] for r in point["requests"]] == ["cancelled"] * 3
    assert point["summary"]["failures_by_kind"] == {"cancelled": 3}


async def test_cache_is_reset_before_each_arm_and_a_failed_reset_warns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        api, "build_workload_and_tokenizer", lambda name, params, path: (SINGLE, None)
    )
    (a, ra), (b, rb), (engine, re) = [await start_server() for _ in range(3)]
    engine.reset_status = 404
    try:
        config = BenchConfig(
            targets=(BenchTarget(a.url, "A"), BenchTarget(b.url, "B", reset_urls=(engine.url,))),
            model="m",
            workload="list",
            num_requests=2,
            reset_cache=True,
            show_progress=False,
        )
        results = await run_bench(config)
    finally:
        for r in (ra, rb, re):
            await r.cleanup()
    assert len(a.resets) == len(b.resets) == len(engine.resets) == 1
    a_calls = [t for ev, _, t in a.log if ev == "start"]
    b_calls = [t for ev, _, t in b.log if ev == "start"]
    assert a.resets[0] < min(a_calls)
    assert max(t for ev, _, t in a.log if ev == "end") < b.resets[0] < min(b_calls)
    assert engine.resets[0] < min(b_calls)
    warnings = results["metadata"]["warnings"]
    assert len(warnings) == 1 and "404" in warnings[0] and engine.url in warnings[0]
    assert [arm["label"] for arm in results["arms"]] == ["A", "B"]
    resets = results["arms"][1]["points"][0]["cache_reset"]
    assert [(r["url"], r["status"], r["is_reset"]) for r in resets] == [
        (b.url + "/reset_prefix_cache", 200, True),
        (engine.url + "/reset_prefix_cache", 404, False),
    ]
    # The same seeded plan for both arms.
    ids = [[r["call_id"] for r in arm["points"][0]["requests"]] for arm in results["arms"]]
    assert sorted(ids[0]) == sorted(ids[1]) == ["a.0", "a.1"]
    assert results["arms"][0]["target"]["versions"]["version"] == {"version": "stub"}
