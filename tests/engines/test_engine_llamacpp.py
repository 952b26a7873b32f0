"""Engine tier: two llama.cpp `llama-server` replicas (the tiny Llama as GGUF) behind
`headway serve` with a metrics-based profile (`running-requests` + `queue-depth`,
which read the `llamacpp:` series the gateway scrapes).

Needs `build-llamacpp` (`make test-engines` runs it). To iterate against running
replicas, set `HEADWAY_LLAMACPP_STATE` to a `start-llamacpp` state file.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "engines"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sim"))

import headway_engines as he
from gateway_harness import ServeProcess, start_serve
from sim_harness import get, poll, post, scrape

from headway.gateway.config import EngineKind
from headway.gateway.engines import ADAPTERS, filter_page

pytestmark = [pytest.mark.engine, pytest.mark.timeout(300)]

MODEL = he.MODEL_NAME
ROUTE_HEADER = "x-headway-route"
NO_EOS = {"ignore_eos": True}  # random weights may sample EOS early; llama-server honours it
METRICS_PROFILE = {
    "profiles": {
        "metrics": {
            "filters": ["healthy", "serves-model"],
            "scorers": [
                {"type": "running-requests", "weight": 1.0},
                {"type": "queue-depth", "weight": 1.0},
            ],
        }
    }
}


@dataclass
class LlamaStack:
    replicas: he.ReplicaSet
    gateway: ServeProcess
    client: OpenAI
    nonce: str

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas.replicas]


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaStack]:
    tmp = tmp_path_factory.mktemp("llamacpp")
    attached = os.environ.get("HEADWAY_LLAMACPP_STATE")
    if attached:
        rs = he.ReplicaSet.from_json(Path(attached).read_text())
    else:
        if not he.llama_server_bin().exists():
            pytest.fail("llama-server not built: run `make test-engines` (it builds it)")
        gguf = he.make_gguf(he.make_model(he.default_model_dir(), he.DEFAULT_SEED))
        rs = he.start_llamacpp(gguf, 2, tmp / "logs")
    config = {
        "collectors": {"scrape_interval_s": 0.1},
        "observability": {"route_header": True},
        "access_log": {"enabled": False},
        "pools": [
            {
                "model": MODEL,
                "engine": "llamacpp",
                "endpoints": [r.url for r in rs.replicas],
                "routing": METRICS_PROFILE,
            }
        ],
    }
    (tmp / "gw.yaml").write_text(json.dumps(config))
    gateway = None
    try:
        gateway = start_serve(tmp / "gw", "--config", str(tmp / "gw.yaml"))
        client = OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)
        yield LlamaStack(rs, gateway, client, f"[run {uuid.uuid4().hex[:12]}] ")
    finally:
        if gateway is not None:
            gateway.stop()
        if not attached:
            he.stop(rs)


def _route(raw: str | None) -> dict[str, str]:
    assert raw, f"no {ROUTE_HEADER} header"
    return dict(part.split("=", 1) for part in raw.split("; "))


def _engine_samples(url: str) -> dict[str, float]:
    return scrape(url)


def test_engine_llamacpp_metric_names_the_adapter_reads(llama: LlamaStack) -> None:
    """The queue and running series the gateway's llama.cpp adapter reads exist on a
    real llama-server (pinned llama-cpp-python sdist); it exports no KV-usage gauge,
    so the adapter's `kv_cache_usage` stays None (the routing test below shows the
    gateway acting on `requests_processing`)."""
    for url in llama.urls:
        names = _engine_samples(url)
        assert "llamacpp:requests_processing" in names, sorted(names)
        assert "llamacpp:requests_deferred" in names, sorted(names)
        assert "llamacpp:kv_cache_usage_ratio" not in names, "adapter may read KV usage now"


def test_engine_llamacpp_collector_reports_kv_usage_unknown(llama: LlamaStack) -> None:
    """The gateway's llama.cpp adapter, reading a real `/metrics` page while a request
    runs: the counts it reads are there, and the KV usage it cannot read is None
    (unknown), not 0 (an empty cache)."""
    adapter = ADAPTERS[EngineKind.LLAMACPP]
    url = llama.urls[1]
    body = {"prompt": llama.nonce + "Go on.", "n_predict": 2000, "ignore_eos": True}
    thread = threading.Thread(target=lambda: post(url, "/completion", body, timeout_s=120))
    thread.start()
    try:
        metrics = poll(
            lambda: adapter.read(filter_page(adapter.line_filter(), get(url, "/metrics").body)),
            lambda m: m.num_running_requests == 1,
            deadline_s=10,
            what="the adapter reads the running request",
        )
    finally:
        thread.join(timeout=120)
    assert metrics.num_queued_requests == 0, metrics
    assert metrics.kv_cache_usage is None, metrics


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
def test_engine_llamacpp_openai_client_through_gateway(llama: LlamaStack, stream: bool) -> None:
    messages = [{"role": "user", "content": llama.nonce + f"Hello, stream={stream}."}]
    if not stream:
        raw = llama.client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=8,
            extra_body=NO_EOS,
        )
        reply = raw.parse()
        assert _route(raw.headers.get(ROUTE_HEADER))["endpoint"] in llama.urls
        assert reply.usage is not None and reply.usage.completion_tokens == 8
        return
    chunks = list(
        llama.client.chat.completions.create(
            model=MODEL,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=8,
            extra_body=NO_EOS,
            stream=True,
        )
    )
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 1
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["length"]


def test_engine_llamacpp_routing_follows_engine_metrics(llama: LlamaStack) -> None:
    """Requests the gateway never saw keep replica A busy (sent to it directly); the
    gateway only learns that from A's `llamacpp:requests_processing`, and so sends
    its own requests to B."""
    busy, idle = llama.urls
    body = {
        "prompt": llama.nonce + "Keep talking.",
        "n_predict": 100_000,  # capped by the slot's context
        "ignore_eos": True,
        "stream": False,
    }
    threads = [
        threading.Thread(target=lambda: post(busy, "/completion", body, timeout_s=120), daemon=True)
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    poll(
        lambda: scrape(busy).get("llamacpp:requests_processing", 0.0),
        lambda n: n >= 3,
        deadline_s=10,
        what="busy replica processing 3 requests",
    )
    # Three scrape intervals (0.1 s) so the gateway's scraper has seen it: nothing
    # the gateway exposes tells when it has.
    time.sleep(0.3)
    routed = []
    for i in range(3):
        raw = llama.client.completions.with_raw_response.create(
            model=MODEL, prompt=f"{llama.nonce} q{i}", max_tokens=2
        )
        routed.append(_route(raw.headers.get(ROUTE_HEADER))["endpoint"])
    still_busy = scrape(busy).get("llamacpp:requests_processing", 0.0)
    assert still_busy >= 1, "the busy replica finished too early for the check to mean anything"
    assert routed == [idle] * 3, routed
    for t in threads:
        t.join(timeout=120)


def test_engine_llamacpp_reports_cached_prompt_tokens(llama: LlamaStack) -> None:
    """A repeated prompt on the same replica reuses its slot's cache (`--cache-prompt`)."""
    url = llama.urls[0]
    prompt = llama.nonce + " ".join(f"word{i}" for i in range(200))
    first = post(url, "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 2})
    again = post(url, "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 2})
    assert first.status == again.status == 200, again.text
    details: dict[str, Any] = again.json()["usage"].get("prompt_tokens_details") or {}
    assert details.get("cached_tokens", 0) > 100, again.json()["usage"]
    assert get(url, "/slots").status == 200
