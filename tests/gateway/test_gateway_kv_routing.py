"""KV-aware routing end to end, against `headway sim` fleets publishing KV events:

* DIFFERENTIAL: a shared-prefix workload through the gateway (official `openai`
  client); once quiet, the gateway's KV-event index agrees with each replica's
  /debug/cache on >= 99% of blocks, and the predicted cached tokens (index x block
  size) equal the engine-reported `cached_tokens`;
* `x-headway-route` (opt-in) and the prediction metrics;
* session stickiness (x-session-id, x-session-token, a configured header);
* `POST /reset_prefix_cache` fanned out to the fleet (200; 502 naming a dead endpoint);
* `--kv-events` quick form and the embedded default fleet (KV events, kv-aware).
"""

from __future__ import annotations

import argparse
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MODEL, KvFleets
from gateway_harness import InProcessGateway, closed_port_url, start_serve
from prometheus_client.parser import text_string_to_metric_families
from sim_harness import get, openai_client, poll, post

from headway.gateway.cli import CliError, add_arguments, config_from_args

DEBUG = {"x-headway-debug": "1"}


def route_of(headers: Any) -> dict[str, str]:
    raw = headers.get("x-headway-route")
    assert raw, "x-headway-route missing"
    return dict(part.split("=", 1) for part in raw.split("; "))


def sim_blocks(url: str) -> set[int]:
    return set(get(url, "/debug/cache").json()["block_hashes"])


def gauge(url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    text = get(url, "/metrics").text
    return {
        tuple(sorted(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name
    }


@pytest.fixture(scope="module")
def kv_gateway(kv_fleets: KvFleets) -> Iterator[InProcessGateway]:
    """The default routing of a vLLM pool: KV events discovered, kv-aware."""
    gw = InProcessGateway(
        {
            "pools": [{"model": MODEL, "endpoints": kv_fleets.map.urls}],
            "collectors": {"scrape_interval_s": 0.05},
        }
    ).start()
    try:
        assert gw.config.pools[0].routing == "kv-aware"
        yield gw
    finally:
        gw.stop()


def wait_synced(gw: InProcessGateway, urls: list[str]) -> None:
    sub = gw.gateway.kv_subscriber
    assert sub is not None
    pool = gw.config.pools[0]
    poll(
        lambda: [sub.is_synced(u) for u in urls] + [gw.gateway.router.block_size(pool)],
        lambda v: all(v[:-1]) and v[-1] == 16,
        what="KV events discovered, synced, block size known",
    )


def test_differential_index_agrees_with_the_sims(
    kv_gateway: InProcessGateway, kv_fleets: KvFleets
) -> None:
    urls = kv_fleets.map.urls
    assert post(kv_gateway.url, "/reset_prefix_cache").status == 200
    wait_synced(kv_gateway, urls)
    client = openai_client(kv_gateway.url)
    run = uuid.uuid4().hex[:8]
    docs = [f"{run} document {d}: " + " ".join(f"w{(d * 7 + i) % 50}" for i in range(160)) for d in range(4)]  # fmt: skip
    rows = []
    for q in range(8):
        for d, doc in enumerate(docs):
            messages = [
                {"role": "system", "content": doc},
                {"role": "user", "content": f"question {q} about document {d}?"},
            ]
            if q % 2:
                stream = client.chat.completions.with_raw_response.create(
                    model=MODEL, messages=messages, max_tokens=3, stream=True,
                    stream_options={"include_usage": True}, extra_headers=DEBUG,
                )  # fmt: skip
                usage = [c.usage for c in stream.parse() if c.usage][-1]
                raw = stream
            else:
                raw = client.chat.completions.with_raw_response.create(
                    model=MODEL, messages=messages, max_tokens=3, extra_headers=DEBUG
                )
                usage = raw.parse().usage
            route = route_of(raw.headers)
            assert route["profile"] == "kv-aware" and route["pool"] == MODEL
            rows.append(
                (
                    d,
                    q,
                    route["endpoint"],
                    int(route.get("predicted_cached_tokens", -1)),
                    usage.prompt_tokens_details.cached_tokens,
                )
            )
    # Predictions: index x block size, the last-token rule applied, equal the engine's.
    exact = sum(1 for *_, predicted, cached in rows if predicted == cached)
    assert exact >= 0.9 * len(rows), rows
    # Affinity: after a document's first request, its prefix is served from cache.
    later = [r for r in rows if r[1] > 0]
    assert sum(1 for r in later if r[4] >= 160) >= 0.9 * len(later), rows
    # Quiescence, then the index equals each replica's cache on >= 99% of blocks.
    index = kv_gateway.gateway.kv_index
    assert index is not None

    def agreement() -> list[float]:
        out = []
        for url in urls:
            mine, theirs = index.blocks_of(url), sim_blocks(url)
            union = mine | theirs
            out.append(len(mine & theirs) / len(union) if union else 1.0)
        return out

    def diagnose() -> str:
        sub = kv_gateway.gateway.kv_subscriber
        assert sub is not None
        return repr(
            [
                (len(index.blocks_of(u)), len(sim_blocks(u)), index.is_stale(u), sub.sources(u))
                for u in urls
            ]
        )

    try:
        final = poll(agreement, lambda a: min(a) >= 0.99, what="index agrees with /debug/cache")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {diagnose()}") from None
    assert sum(index.num_blocks(u) for u in urls) > 40, final
    # The prediction counters show the same.
    # (counted when the gateway's handler ends, which may be just after the client's
    # last byte)
    outcomes = poll(
        lambda: {
            dict(k)["outcome"]: v
            for k, v in gauge(kv_gateway.url, "headway_gateway_cache_predictions_total").items()
        },
        lambda o: sum(o.values()) == len(rows),
        what="every request's prediction counted",
    )
    assert outcomes.get("exact", 0) == exact
    blocks = gauge(kv_gateway.url, "headway_gateway_kv_index_blocks")
    assert {dict(k)["endpoint"]: v for k, v in blocks.items()} == {
        u: float(index.num_blocks(u)) for u in urls
    }
    stale = gauge(kv_gateway.url, "headway_gateway_kv_index_stale")
    assert {dict(k)["endpoint"]: v for k, v in stale.items()} == dict.fromkeys(urls, 0.0)


def test_route_header_is_opt_in(kv_gateway: InProcessGateway) -> None:
    client = openai_client(kv_gateway.url)
    messages = [{"role": "user", "content": "hello"}]
    plain = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, max_tokens=2
    )
    assert "x-headway-route" not in plain.headers
    debug = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, max_tokens=2, extra_headers=DEBUG
    )
    route = route_of(debug.headers)
    assert route["endpoint"] in kv_gateway.config.pools[0].endpoints
    scores = dict(s.split("=", 1) for s in route["scores"].split(",")[:1])  # first URL=score
    assert scores and all(0.0 <= float(v) <= 1.0 for v in scores.values())


def test_in_flight_load_is_charged_net_of_the_expected_cache_hit(
    kv_gateway: InProcessGateway, kv_fleets: KvFleets
) -> None:
    """A request whose prefix the chosen replica holds loads it by its new tokens only:
    the tracker's in-flight tokens are prompt + max_tokens - predicted cached tokens."""
    wait_synced(kv_gateway, kv_fleets.map.urls)
    client = openai_client(kv_gateway.url)
    doc = f"{uuid.uuid4().hex} " + " ".join(f"w{i % 37}" for i in range(300))
    messages = [{"role": "system", "content": doc}, {"role": "user", "content": "first?"}]

    def warm() -> dict[str, str]:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages, max_tokens=1, extra_headers=DEBUG
        )
        return route_of(raw.headers)

    poll(warm, lambda r: int(r.get("predicted_cached_tokens", 0)) >= 256, what="prefix indexed")
    tracker = kv_gateway.gateway.tracker
    max_tokens = 400
    stream = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, max_tokens=max_tokens, stream=True,
        stream_options={"include_usage": True}, extra_headers=DEBUG,
    )  # fmt: skip
    route = route_of(stream.headers)
    predicted = int(route["predicted_cached_tokens"])
    chunks = iter(stream.parse())
    next(chunks)  # streaming: the request is in flight
    charged = tracker.load(route["endpoint"]).num_tokens
    usage = [c.usage for c in chunks if c.usage][-1]
    assert usage.prompt_tokens_details.cached_tokens == predicted > 0
    assert charged == usage.prompt_tokens + max_tokens - predicted
    poll(lambda: tracker.load(route["endpoint"]).num_tokens, lambda n: n == 0, what="released")


def test_gateway_counts_first_block_hash_checks(
    kv_gateway: InProcessGateway, kv_fleets: KvFleets
) -> None:
    """The subscriber re-hashes chain starts with the gateway's hasher: against the
    simulator (same seed and scheme) every check matches."""
    wait_synced(kv_gateway, kv_fleets.map.urls)
    client = openai_client(kv_gateway.url)
    messages = [{"role": "user", "content": f"{uuid.uuid4().hex} " + "hash check " * 40}]
    client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1)
    name = "headway_gateway_kv_event_hash_checks_total"
    matches = poll(
        lambda: sum(gauge(kv_gateway.url, name).get(k, 0.0) for k in gauge(kv_gateway.url, name) if ("result", "match") in k),
        lambda n: n >= 1,
        what="hash checks counted",
    )  # fmt: skip
    mismatches = [v for k, v in gauge(kv_gateway.url, name).items() if ("result", "mismatch") in k]
    assert matches >= 1 and not any(mismatches)


def test_session_stickiness(kv_fleets: KvFleets) -> None:
    gw = InProcessGateway(
        {
            "pools": [
                {"model": MODEL, "endpoints": kv_fleets.map.urls, "routing": "session-sticky"}
            ],
            "prompt": {"session_header": "X-Conversation"},
            "observability": {"route_header": True},
        }
    ).start()
    try:
        client = openai_client(gw.url)
        placed: dict[str, set[str]] = {}
        for header in ("x-session-id", "x-session-token", "x-conversation"):
            for s in range(4):
                session = f"{header}-{s}"
                for turn in range(4):
                    raw = client.chat.completions.with_raw_response.create(
                        model=MODEL,
                        messages=[{"role": "user", "content": f"turn {turn}"}],
                        max_tokens=2,
                        extra_headers={header: session},
                    )
                    placed.setdefault(session, set()).add(route_of(raw.headers)["endpoint"])
        assert all(len(v) == 1 for v in placed.values()), placed
        # Twelve sessions over two endpoints: both get some.
        assert len(Counter(next(iter(v)) for v in placed.values())) == 2, placed
    finally:
        gw.stop()


def test_reset_prefix_cache_fans_out(kv_fleets: KvFleets) -> None:
    dead = closed_port_url()
    gw = InProcessGateway(
        {
            "pools": [
                {"model": MODEL, "endpoints": kv_fleets.map.urls, "routing": "round-robin"},
                {"model": "array-model", "endpoints": [kv_fleets.array.url, dead],
                 "routing": "round-robin"},
            ]
        }
    ).start()  # fmt: skip
    try:
        resp = post(gw.url, "/reset_prefix_cache")
        assert resp.status == 502, resp.text
        body = resp.json()
        assert body["success"] is False and dead in body["error"]["message"]
        assert set(body["endpoints"]) == {*kv_fleets.map.urls, kv_fleets.array.url, dead}
        assert body["endpoints"][kv_fleets.array.url] == "ok"
        assert "unreachable" in body["endpoints"][dead]
        for url in kv_fleets.map.urls:
            assert get(url, "/debug/cache").json()["num_cached_blocks"] == 0
    finally:
        gw.stop()


def args_of(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


KV_FLAG_ERRORS = {
    "length-mismatch": (
        ("--endpoints", "http://a:1,http://b:2", "--model", "m", "--kv-events", "tcp://a:5"),
        "--kv-events: 1 address(es) for 2 --endpoints",
    ),
    "bad-address": (
        ("--endpoints", "http://a:1", "--model", "m", "--kv-events", "http://a:5"),
        "--kv-events[0]: must be a tcp://HOST:PORT",
    ),
    "without-endpoints": (("--kv-events", "tcp://a:5"), "--kv-events: only with --endpoints"),
    "precise-without-kv": (
        (
            "--endpoints",
            "http://a:1",
            "--model",
            "m",
            "--engine",
            "sglang",
            "--profile",
            "kv-aware",
        ),
        "--profile: precise-prefix needs the KV-event index",
    ),
}


@pytest.mark.parametrize(("argv", "message"), KV_FLAG_ERRORS.values(), ids=KV_FLAG_ERRORS.keys())
def test_kv_events_flag_errors(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(CliError) as exc:
        config_from_args(args_of(*argv))
    assert str(exc.value).startswith(message), str(exc.value)


def test_kv_events_flag_quick_form() -> None:
    config, _ = config_from_args(
        args_of(
            "--endpoints", "http://a:1,http://b:2", "--model", "m",
            "--kv-events", "tcp://a:5557,tcp://*:5558", "--no-kv-events-discovery",
        )
    )  # fmt: skip
    pool = config.pools[0]
    assert pool.has_kv_events and pool.routing == "kv-aware"
    assert [pool.kv_events[u].endpoint for u in pool.endpoints] == ["tcp://a:5557", "tcp://*:5558"]
    assert not config.collectors.discover_kv_events
    other, _ = config_from_args(
        args_of("--endpoints", "http://a:1", "--model", "m", "--engine", "sglang")
    )
    assert not other.pools[0].has_kv_events and other.pools[0].routing == "kv-aware-approx"


def test_embedded_fleet_routes_on_kv_events(tmp_path: Path) -> None:
    gw = start_serve(tmp_path)
    try:
        (pool,) = gw.info["pools"]
        assert pool["routing"] == "kv-aware" and pool["kv_events"] is True
        client = openai_client(gw.url)
        messages = [{"role": "user", "content": "embedded " + "lorem ipsum " * 80}]

        def ask() -> dict[str, str]:
            raw = client.chat.completions.with_raw_response.create(
                model=pool["model"], messages=messages, max_tokens=2, extra_headers=DEBUG
            )
            return route_of(raw.headers)

        first = ask()
        assert first["profile"] == "kv-aware"
        again = poll(ask, lambda r: int(r.get("predicted_cached_tokens", 0)) >= 160,
                     what="the repeat predicted as cached")  # fmt: skip
        assert again["endpoint"] == first["endpoint"]
    finally:
        assert gw.stop() == 0, gw.stderr()
    assert "Traceback" not in gw.stderr()


def test_serve_quick_form_with_kv_events(kv_fleets: KvFleets, tmp_path: Path) -> None:
    fleet = kv_fleets.map
    gw = start_serve(
        tmp_path,
        "--endpoints", ",".join(fleet.urls),
        "--kv-events", ",".join(fleet.kv_endpoint(i) for i in range(2)),
        "--no-kv-events-discovery",
    )  # fmt: skip
    try:
        (pool,) = gw.info["pools"]
        assert pool["routing"] == "kv-aware" and pool["kv_events"] is True
        client = openai_client(gw.url)
        messages = [{"role": "user", "content": f"{uuid.uuid4().hex} " + "quick form " * 60}]

        def ask() -> dict[str, str]:
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=messages, max_tokens=2, extra_headers=DEBUG
            )
            return route_of(raw.headers)

        def reset_then_repeat() -> dict[str, str]:
            # No replay socket given: the index is trusted once a cache reset
            # (AllBlocksCleared) reaches the subscriber, which may join late (ZMQ).
            post(gw.url, "/reset_prefix_cache")
            ask()
            return ask()

        poll(reset_then_repeat, lambda r: int(r.get("predicted_cached_tokens", 0)) >= 100,
             what="the repeat predicted as cached")  # fmt: skip
    finally:
        assert gw.stop() == 0, gw.stderr()
    assert "Traceback" not in gw.stderr()


def test_approximate_mode_keeps_shared_prefixes_together(kv_fleets: KvFleets) -> None:
    """kv-aware-approx (no KV events used): the gateway's own chunk-hash index sends a
    document's follow-ups where its prefix is cached."""
    gw = InProcessGateway(
        {
            "pools": [{"model": MODEL, "endpoints": kv_fleets.map.urls}],
            "collectors": {"discover_kv_events": False},
            "observability": {"route_header": True},
        }
    ).start()
    try:
        assert gw.config.pools[0].routing == "kv-aware-approx"
        assert gw.gateway.kv_subscriber is None
        client = openai_client(gw.url)
        run = uuid.uuid4().hex[:8]
        docs = [f"{run} doc {d}: " + " ".join(f"v{(d * 11 + i) % 40}" for i in range(150)) for d in range(4)]  # fmt: skip
        placed: dict[int, set[str]] = {}
        cached: list[int] = []
        for q in range(5):
            for d, doc in enumerate(docs):
                raw = client.chat.completions.with_raw_response.create(
                    model=MODEL,
                    messages=[
                        {"role": "system", "content": doc},
                        {"role": "user", "content": f"q{q}"},
                    ],
                    max_tokens=2,
                )
                placed.setdefault(d, set()).add(route_of(raw.headers)["endpoint"])
                usage = raw.parse().usage
                assert "predicted_cached_tokens" not in route_of(raw.headers)
                if q:
                    cached.append(usage.prompt_tokens_details.cached_tokens)
        assert all(len(v) == 1 for v in placed.values()), placed
        assert all(c >= 150 for c in cached), cached
    finally:
        gw.stop()
