"""Operations on the admin port: endpoint state, cordon / uncordon / drain, config
reload (admin route and SIGHUP on a real `headway serve`), over real `headway sim`
replicas."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import MODEL, Fleets, KvFleets
from gateway_harness import InProcessGateway, pool, start_serve
from sim_harness import Response, get, poll, post, scrape

from headway.gateway.config import GatewayConfig, config_from_mapping


def _admin(url: str, action: str, endpoint: str, query: str = "") -> Response:
    return post(url, f"/admin/endpoints/{quote(endpoint, safe='')}/{action}{query}", timeout_s=20)


def _states(admin_url: str) -> dict[str, dict[str, Any]]:
    resp = get(admin_url, "/admin/endpoints")
    assert resp.status == 200, resp.text
    return {e["url"]: e for e in resp.json()["endpoints"]}


def _routed_to(gw_url: str, max_tokens: int = 2, stream: bool = False) -> str:
    """Where one request went (x-headway-route), asserting it succeeded."""
    body = {"model": MODEL, "prompt": "x", "max_tokens": max_tokens, "ignore_eos": True, "stream": stream}  # fmt: skip
    resp = post(gw_url, "/v1/completions", body, headers={"x-headway-debug": "1"}, timeout_s=20)
    assert resp.status == 200, resp.text
    return resp.headers["x-headway-route"].split(";")[0].removeprefix("endpoint=")


def _in_thread(target: Any, *args: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        out["value"] = target(*args)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


@pytest.fixture
def gw(fleets: Fleets) -> Iterator[InProcessGateway]:
    g = InProcessGateway(
        {"pools": [pool(MODEL, fleets.main.urls, routing="round-robin")]}, admin=True
    ).start()
    yield g
    g.stop()


def test_endpoints_cordon_uncordon(gw: InProcessGateway, fleets: Fleets) -> None:
    a, b = fleets.main.urls
    states = _states(gw.admin_url)
    assert {u: s["state"] for u, s in states.items()} == {a: "healthy", b: "healthy"}
    assert states[a]["num_in_flight"] == 0 and states[a]["pools"] == [MODEL]
    resp = _admin(gw.admin_url, "cordon", a)
    assert resp.status == 200 and resp.json()["state"] == "cordoned"
    assert {_routed_to(gw.url) for _ in range(6)} == {b}  # cordon honoured by routing
    assert _admin(gw.admin_url, "cordon", b).status == 200
    resp = post(gw.url, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 1})
    assert resp.status == 503  # every endpoint cordoned: none to offer
    assert _admin(gw.admin_url, "uncordon", a).json()["state"] == "healthy"
    assert _admin(gw.admin_url, "uncordon", b).status == 200
    assert {_routed_to(gw.url) for _ in range(6)} == {a, b}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/admin/endpoints/" + quote("http://127.0.0.1:1", safe="") + "/cordon", 404),
        ("/admin/reload", 409),  # started without a config file to re-read
    ],
    ids=["unknown-endpoint", "reload-without-file"],
)
def test_admin_errors(gw: InProcessGateway, path: str, status: int) -> None:
    resp = post(gw.admin_url, path)
    assert resp.status == status
    assert resp.json()["error"]["message"]


def test_admin_routes_not_on_public_port(gw: InProcessGateway) -> None:
    assert get(gw.url, "/admin/endpoints").status == 404


def test_drain_waits_for_in_flight(gw: InProcessGateway, fleets: Fleets) -> None:
    a, b = fleets.main.urls
    _admin(gw.admin_url, "cordon", b)  # the long stream goes to a
    stream, out = _in_thread(_routed_to, gw.url, 1500, True)  # ~0.3 s upstream
    poll(lambda: _states(gw.admin_url)[a]["num_in_flight"], lambda n: n == 1, what="stream on a")
    _admin(gw.admin_url, "uncordon", b)
    short = _admin(gw.admin_url, "drain", a, "?timeout_s=0")
    assert short.status == 504 and short.json()["is_drained"] is False
    resp = _admin(gw.admin_url, "drain", a, "?timeout_s=15")
    assert resp.status == 200, resp.text
    body = resp.json()
    assert body["is_drained"] is True and body["num_in_flight"] == 0
    assert body["state"] == "cordoned"
    stream.join(20)
    assert out["value"] == a  # the in-flight stream finished normally
    assert {_routed_to(gw.url) for _ in range(4)} == {b}


def test_drain_bad_timeout(gw: InProcessGateway, fleets: Fleets) -> None:
    resp = _admin(gw.admin_url, "drain", fleets.main.urls[0], "?timeout_s=soon")
    assert resp.status == 400 and "timeout_s" in resp.json()["error"]["message"]


def _loader(holder: dict[str, Any]) -> GatewayConfig:
    return config_from_mapping(holder["config"])


def test_reload_adds_and_removes_endpoints(fleets: Fleets) -> None:
    a, b = fleets.main.urls
    holder = {"config": {"pools": [pool(MODEL, [a], routing="round-robin")]}}
    gw = InProcessGateway(holder["config"], admin=True).start()
    gw.gateway.config_loader = lambda: _loader(holder)
    try:
        assert {_routed_to(gw.url) for _ in range(3)} == {a}
        holder["config"] = {"pools": [pool(MODEL, [a, b], routing="round-robin")]}
        resp = post(gw.admin_url, "/admin/reload")
        assert resp.status == 200 and resp.json()["endpoints"] == [a, b]
        assert {_routed_to(gw.url) for _ in range(4)} == {a, b}
        # Removing `a` while a stream runs on it: the stream finishes, new requests avoid it.
        _admin(gw.admin_url, "cordon", b)
        stream, out = _in_thread(_routed_to, gw.url, 1500, True)
        poll(lambda: gw.gateway.tracker.load(a).num_requests, lambda n: n == 1, what="stream")
        holder["config"] = {"pools": [pool(MODEL, [b], routing="least-request")]}
        assert post(gw.admin_url, "/admin/reload").status == 200
        assert set(_states(gw.admin_url)) == {b}
        assert _states(gw.admin_url)[b]["is_cordoned"] is True  # a reload keeps cordons
        _admin(gw.admin_url, "uncordon", b)
        assert {_routed_to(gw.url) for _ in range(3)} == {b}
        stream.join(20)
        assert out["value"] == a
        # The slot is released just after the last bytes went out.
        poll(lambda: gw.gateway.tracker.load(a).num_requests, lambda n: n == 0, what="released")
    finally:
        gw.stop()


def test_bad_reload_rejected_old_config_serves(fleets: Fleets) -> None:
    a = fleets.main.urls[0]
    holder = {"config": {"pools": [pool(MODEL, [a])]}}
    gw = InProcessGateway(holder["config"], admin=True).start()
    gw.gateway.config_loader = lambda: _loader(holder)
    try:
        holder["config"] = {"pools": [pool(MODEL, ["ftp://nope"])]}
        resp = post(gw.admin_url, "/admin/reload")
        assert resp.status == 400
        err = resp.json()["error"]
        assert "pools[0].endpoints[0]" in err["message"] and err["param"] == "pools[0].endpoints[0]"
        assert _routed_to(gw.url) == a
        assert set(_states(gw.admin_url)) == {a}
    finally:
        gw.stop()


def test_reload_moves_queued_requests(fleets: Fleets) -> None:
    a, b = fleets.main.urls
    one = pool(MODEL, [a], max_in_flight_per_endpoint=1, routing="round-robin")
    holder = {"config": {"pools": [one]}}
    gw = InProcessGateway(holder["config"], admin=True).start()
    gw.gateway.config_loader = lambda: _loader(holder)
    # a's steps 4x slower: the long request (~1.6 s at full speed) must outlast the
    # reload even on a loaded machine, or its slot frees and the third request may go
    # to a.
    assert post(a, "/admin/faults", {"slowdown": 4}).status == 200
    try:
        long, long_out = _in_thread(_routed_to, gw.url, 8000, True)  # ~6.5 s on a
        poll(lambda: gw.gateway.tracker.load(a).num_requests, lambda n: n == 1, what="long")
        queued, queued_out = _in_thread(_routed_to, gw.url, 2)
        poll(
            lambda: scrape(gw.url).get("headway_gateway_queued_requests", 0.0),
            lambda n: n == 1,
            what="one queued",
        )
        # A third request arrives while the second waits; both move on the reload.
        third, third_out = _in_thread(_routed_to, gw.url, 2)
        poll(
            lambda: scrape(gw.url).get("headway_gateway_queued_requests", 0.0),
            lambda n: n == 2,
            what="two queued",
        )
        holder["config"] = {"pools": [{**one, "endpoints": [a, b]}]}
        assert post(gw.admin_url, "/admin/reload").status == 200
        queued.join(10)
        third.join(10)
        assert third_out["value"] == b
        assert scrape(gw.url)["headway_gateway_queued_requests"] == 0
        assert queued_out["value"] == b  # served by the new endpoint, not after the long one
        assert long.is_alive() or long_out["value"] == a
        long.join(30)
        assert long_out["value"] == a
    finally:
        assert post(a, "/admin/faults", {"slowdown": 1}).status == 200
        gw.stop()


def _write(path: Path, endpoints: list[str]) -> None:
    path.write_text(json.dumps({"pools": [pool(MODEL, endpoints, routing="round-robin")]}))


def test_sighup_reloads_real_process(fleets: Fleets, tmp_path: Path) -> None:
    a, b = fleets.main.urls
    config = tmp_path / "gateway.yaml"  # JSON is YAML
    _write(config, [a])
    access = tmp_path / "access.log"
    gw = start_serve(
        tmp_path, "--config", str(config), "--admin-port", "0", "--access-log", str(access)
    )
    try:
        admin = gw.info["admin_url"]
        assert set(_states(admin)) == {a}
        _write(config, [a, b])
        gw.proc.send_signal(signal.SIGHUP)
        poll(lambda: set(_states(admin)), lambda s: s == {a, b}, what="SIGHUP reload")
        assert {_routed_to(gw.url) for _ in range(4)} == {a, b}
        config.write_text(json.dumps({"pools": [{"model": MODEL, "endpoints": [a], "retry": {"max_attempts": 0}}]}))  # fmt: skip
        gw.proc.send_signal(signal.SIGHUP)
        poll(gw.stderr, lambda s: "reload rejected" in s, what="rejection logged")
        assert "pools[0].retry.max_attempts" in gw.stderr()
        assert set(_states(admin)) == {a, b}  # the old config keeps serving
        _write(config, [b])
        assert post(admin, "/admin/reload").status == 200
        assert {_routed_to(gw.url) for _ in range(2)} == {b}
        lines = poll(  # access lines are written in batches, up to 0.1 s later
            lambda: [json.loads(x) for x in access.read_text().splitlines()],
            lambda xs: len(xs) >= 6,
            what="six access lines",
        )
        assert len(lines) == 6 and all(x["status"] == 200 for x in lines)
    finally:
        assert gw.stop() == 0, gw.stderr()
    assert "Traceback" not in gw.stderr()


def test_reload_with_kv_events(kv_fleets: KvFleets) -> None:
    """A new KV-event source set gets a new, synced index; an unchanged one is kept."""
    m0, m1 = kv_fleets.map.urls
    holder = {"config": {"pools": [{"model": MODEL, "endpoints": [m0]}]}}  # discovered
    gw = InProcessGateway(holder["config"], admin=True).start()
    gw.gateway.config_loader = lambda: _loader(holder)
    try:
        first = gw.gateway.kv_subscriber
        assert first is not None
        poll(lambda: first.is_synced(m0), bool, what="m0 synced")
        holder["config"] = {"pools": [{"model": MODEL, "endpoints": [m0, m1]}]}
        assert post(gw.admin_url, "/admin/reload").status == 200
        second = gw.gateway.kv_subscriber
        assert second is not None and second is not first
        poll(lambda: [second.is_synced(u) for u in (m0, m1)], all, what="both synced")
        assert gw.gateway.router.pool_router(MODEL).kv_index is gw.gateway.kv_index
        # Same endpoints, another profile: the subscriber and its index stay.
        holder["config"] = {"pools": [{"model": MODEL, "endpoints": [m0, m1], "routing": "least-request"}]}  # fmt: skip
        assert post(gw.admin_url, "/admin/reload").status == 200
        assert gw.gateway.kv_subscriber is second
        assert gw.gateway.router.pool_router(MODEL).profile_names == ("least-request",)
        body = {"model": MODEL, "prompt": "hello there", "max_tokens": 2}
        assert post(gw.url, "/v1/completions", body).status == 200
    finally:
        gw.stop()
