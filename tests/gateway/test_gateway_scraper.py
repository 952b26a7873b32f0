"""The metrics scraper: canned pages of every engine kind, line filtering equal to a
full parse, strictness, staleness on a fake clock, and scrapes of a real simulator
(and of a stopped endpoint)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from aiohttp import web
from gateway_harness import InProcessGateway, ThreadedUpstream, closed_port_url, pool
from prometheus_client.parser import text_string_to_metric_families
from sim_harness import get, poll

from headway.gateway.config import CollectorsConfig, EngineKind
from headway.gateway.engines import ADAPTERS, EngineMetrics, filter_page
from headway.gateway.scraper import MetricsScraper, scrape_interval_s

VLLM_PAGE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 7.0
vllm:num_requests_waiting{engine="1",model_name="m"} 1.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.25
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="32",cache_dtype="auto",engine="",num_gpu_blocks="4096"} 1.0
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql",waiting_lora_adapters=""} 1.7e9
vllm:lora_requests_info{max_lora="4",running_lora_adapters="a,b",waiting_lora_adapters="c"} 1.8e9
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="m"} 4.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="m"} 4.0
vllm:num_requests_waiting_by_reason{engine="0",reason="x"} 99.0
"""

SGLANG_PAGE = """\
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="m"} 4.0
sglang:num_running_reqs{model_name="m"} 9.0
sglang:token_usage{model_name="m"} 0.75
sglang:cache_config_info{page_size="64",num_pages="1000"} 1.0
sglang:gen_throughput{model_name="m"} 123.0
"""

TRTLLM_PAGE = """\
trtllm_num_requests_waiting 2
trtllm_num_requests_running 5
trtllm_kv_cache_utilization 0.125
trtllm_kv_cache_hit_rate 0.5
"""

LLAMACPP_PAGE = """\
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 1
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 6
llamacpp:prompt_tokens_total 1234
"""

OLD_VLLM_PAGE = """\
vllm:num_requests_running{model_name="m"} 1.0
vllm:num_requests_waiting{model_name="m"} 0.0
vllm:gpu_cache_usage_perc{model_name="m"} 1.5
"""

CANNED = {
    "vllm-dp2-lora": (
        EngineKind.VLLM,
        VLLM_PAGE,
        EngineMetrics(7 + 1, 3 + 2, 0.375, 32, 4096, frozenset({"a", "b", "c"}), 4),
    ),
    "vllm-old-names-clamped": (
        EngineKind.VLLM,
        OLD_VLLM_PAGE,
        EngineMetrics(0, 1, 1.0),
    ),
    "sglang": (EngineKind.SGLANG, SGLANG_PAGE, EngineMetrics(4, 9, 0.75, 64, 1000)),
    "trtllm": (EngineKind.TRTLLM, TRTLLM_PAGE, EngineMetrics(2, 5, 0.125)),
    "llamacpp": (EngineKind.LLAMACPP, LLAMACPP_PAGE, EngineMetrics(6, 1, None)),
}


@pytest.mark.parametrize(("kind", "page", "expected"), CANNED.values(), ids=CANNED.keys())
def test_canned_pages(kind: EngineKind, page: str, expected: EngineMetrics) -> None:
    adapter = ADAPTERS[kind]
    assert adapter.read(filter_page(adapter.line_filter(), page.encode())) == expected


@pytest.mark.parametrize("kind", [EngineKind.VLLM, EngineKind.SGLANG], ids=["vllm", "sglang"])
def test_filtered_parse_equals_full_parse(kind: EngineKind) -> None:
    page = VLLM_PAGE + SGLANG_PAGE
    adapter = ADAPTERS[kind]
    kept = filter_page(adapter.line_filter(), page.encode())
    # Only the wanted series are kept, and reading them equals reading the whole page.
    names = {s.name for fam in text_string_to_metric_families(kept) for s in fam.samples}
    assert names <= set(adapter.names)
    assert adapter.read(kept) == adapter.read(page)


def test_openai_kind_is_not_scraped() -> None:
    scraper = MetricsScraper(
        {"http://a": EngineKind.OPENAI, "http://b": EngineKind.VLLM}, CollectorsConfig()
    )
    assert scraper.endpoints == ("http://b",)
    assert scraper.view("http://a") is None


def test_malformed_kept_line_is_a_failed_scrape() -> None:
    scraper = MetricsScraper({"http://a": EngineKind.VLLM}, CollectorsConfig())
    with pytest.raises(ValueError):
        scraper.parse("http://a", b'vllm:num_requests_running{engine="0" 3.0\n')


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stale_transitions_on_a_fake_clock(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    changes: list[tuple[str, bool]] = []
    cfg = CollectorsConfig(scrape_interval_s=0.25, stale_after_intervals=4)  # stale after 1 s
    scraper = MetricsScraper(
        {"http://a": EngineKind.VLLM},
        cfg,
        clock=clock,
        on_stale_change=lambda u, s: changes.append((u, s)),
    )
    view = scraper.view("http://a")
    assert view is not None and not view.is_stale and view.metrics is None
    clock.now += 1.01  # never scraped since start, one stale period over
    with caplog.at_level(logging.INFO, logger="headway.gateway.scraper"):
        for _ in range(3):  # logged and reported once per transition
            scraper.record_failure("http://a", "connection refused")
            assert scraper.view("http://a").is_stale  # type: ignore[union-attr]
    assert changes == [("http://a", True)]
    assert sum("stale" in r.message for r in caplog.records) == 1
    metrics = EngineMetrics(1, 2, 0.5, 16, 100)
    scraper.record_success("http://a", metrics)
    view = scraper.view("http://a")
    assert view is not None and not view.is_stale and view.metrics == metrics
    assert view.updated_at == clock.now
    assert changes == [("http://a", True), ("http://a", False)]
    clock.now += 0.99
    assert not scraper.view("http://a").is_stale  # type: ignore[union-attr]
    version = scraper.view("http://a").version  # type: ignore[union-attr]
    clock.now += 0.02
    stale = scraper.view("http://a")
    assert stale is not None and stale.is_stale
    assert stale.metrics == metrics  # last good values kept while stale
    assert stale.version != version  # snapshot caches see the transition
    assert changes[-1] == ("http://a", True)


def test_view_is_reused_only_while_nothing_changed() -> None:
    """`view` hands out the same object while the endpoint's state is unchanged, and
    a fresh one when a scrape brings new values or only a new time."""
    clock = FakeClock()
    cfg = CollectorsConfig(scrape_interval_s=0.25, stale_after_intervals=4)
    scraper = MetricsScraper({"http://a": EngineKind.VLLM}, cfg, clock=clock)
    metrics = EngineMetrics(1, 2, 0.5, 16, 100)
    scraper.record_success("http://a", metrics)
    first = scraper.view("http://a")
    assert first is not None and scraper.view("http://a") is first
    clock.now += 0.25
    scraper.record_success("http://a", metrics)  # same values, a later scrape
    again = scraper.view("http://a")
    assert again is not None and again is not first
    assert (again.updated_at, again.version) == (clock.now, first.version)
    scraper.record_success("http://a", EngineMetrics(3, 2, 0.5, 16, 100))  # new values
    newer = scraper.view("http://a")
    assert newer is not None and newer.version == again.version + 1
    assert newer.metrics is not None and newer.metrics.num_queued_requests == 3


def test_scrape_real_sim_and_a_stopped_endpoint(fleets) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    dead = closed_port_url()
    live = fleets.main.urls[0]
    scraper = MetricsScraper(
        {live: EngineKind.VLLM, dead: EngineKind.VLLM},
        CollectorsConfig(scrape_timeout_s=2.0),
        clock=clock,
    )

    async def run() -> tuple[bool, bool]:
        try:
            return await scraper.scrape_once(live), await scraper.scrape_once(dead)
        finally:
            await scraper.stop()

    ok_live, ok_dead = asyncio.run(run())
    assert ok_live and not ok_dead
    info = get(live, "/debug/cache").json()
    view = scraper.view(live)
    assert view is not None and view.metrics is not None
    assert view.metrics.block_size == info["block_size"] == 16
    assert view.metrics.num_gpu_blocks == info["num_blocks"]
    assert view.metrics.num_queued_requests == 0
    assert view.metrics.kv_cache_usage is not None
    clock.now += 5.0
    dead_view = scraper.view(dead)
    assert dead_view is not None and dead_view.is_stale and dead_view.metrics is None


def test_gateway_reports_stale_endpoints_in_metrics(fleets, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dead = closed_port_url()
    gw = InProcessGateway(
        {
            "pools": [pool("llama-3.1-8b", [fleets.main.urls[0], dead], routing="round-robin")],
            "collectors": {"scrape_interval_s": 0.05, "stale_after_intervals": 2},
        }
    ).start()
    try:

        def gauges() -> dict[str, float]:
            text = get(gw.url, "/metrics").text
            return {
                s.labels["endpoint"]: s.value
                for fam in text_string_to_metric_families(text)
                for s in fam.samples
                if s.name == "headway_gateway_endpoint_metrics_stale"
            }

        poll(gauges, lambda g: g.get(dead) == 1.0, deadline_s=10, what="dead endpoint stale")
        assert gauges().get(fleets.main.urls[0], 0.0) == 0.0
        live_view = gw.gateway.scraper.view(fleets.main.urls[0])
        assert live_view is not None and live_view.metrics is not None
        snapshots = gw.gateway.router.pool_router("llama-3.1-8b").snapshots()
        by_id = {s.endpoint_id: s for s in snapshots}
        assert by_id[dead].is_metrics_stale
        assert not by_id[fleets.main.urls[0]].is_metrics_stale
        assert by_id[fleets.main.urls[0]].block_size == 16
        assert by_id[fleets.main.urls[0]].num_gpu_blocks == live_view.metrics.num_gpu_blocks
    finally:
        gw.stop()


class BigPage(ThreadedUpstream):
    """Serves a page far larger than one read, the wanted series at its very end."""

    PAGE = ("# filler\n" * 40_000 + VLLM_PAGE).encode()

    def add_routes(self, app: web.Application) -> None:
        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=self.PAGE, content_type="text/plain")

        app.router.add_get("/metrics", metrics)


def test_large_page_is_read_whole() -> None:
    upstream = BigPage().start()
    scraper = MetricsScraper({upstream.url: EngineKind.VLLM}, CollectorsConfig())

    async def run() -> bool:
        try:
            return await scraper.scrape_once(upstream.url)
        finally:
            await scraper.stop()

    try:
        assert len(BigPage.PAGE) > 300_000
        assert asyncio.run(run())
        view = scraper.view(upstream.url)
        assert view is not None and view.metrics == CANNED["vllm-dp2-lora"][2]
    finally:
        upstream.stop()


class NamedPages(ThreadedUpstream):
    """A metrics endpoint that records each request's `name[]` list and answers as told:
    `restricts` (only those series, as prometheus_client does), `ignores` (the whole page
    whatever was asked, like llama.cpp), or `empties` (nothing when asked by name, like
    a registry that cannot restrict)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.asked: list[list[str]] = []

    def add_routes(self, app: web.Application) -> None:
        async def metrics(request: web.Request) -> web.Response:
            names = request.query.getall("name[]", [])
            self.asked.append(names)
            page = VLLM_PAGE
            if names and self.mode == "restricts":
                page = "".join(
                    line + "\n"
                    for line in VLLM_PAGE.splitlines()
                    if line.split("{")[0].split(" ")[0] in names
                )
            elif names and self.mode == "empties":
                page = ""
            return web.Response(text=page, content_type="text/plain")

        app.router.add_get("/metrics", metrics)


@pytest.mark.parametrize(
    ("mode", "asked_by_name"),
    [("restricts", [True, True]), ("ignores", [True, True]), ("empties", [True, False, False])],
    ids=["restricts", "ignores-the-query", "cannot-restrict"],
)
def test_scrapes_ask_for_the_adapters_series_by_name(mode: str, asked_by_name: list[bool]) -> None:
    upstream = NamedPages(mode).start()
    scraper = MetricsScraper({upstream.url: EngineKind.VLLM}, CollectorsConfig())

    async def run() -> list[bool]:
        try:
            return [await scraper.scrape_once(upstream.url) for _ in range(2)]
        finally:
            await scraper.stop()

    try:
        assert asyncio.run(run()) == [True, True]
        view = scraper.view(upstream.url)
        assert view is not None and view.metrics == CANNED["vllm-dp2-lora"][2]
        assert [bool(names) for names in upstream.asked] == asked_by_name
        assert set(upstream.asked[0]) == set(ADAPTERS[EngineKind.VLLM].names)
    finally:
        upstream.stop()


@pytest.mark.parametrize(
    ("share", "cost_s", "expected_s"),
    [
        (0.01, None, 0.25),  # no scrape measured yet: the configured interval
        (0.01, 0.001, 0.25),  # a cheap page (1 ms: 0.1 s at 1%) keeps the interval
        (0.01, 0.0084, 0.84),  # vLLM-CPU's page: 8.4 ms, so 1% of its time
        (0.01, 0.05, 2.0),  # capped at max_scrape_interval_s
        (0.0, 0.05, 0.25),  # share 0: the fixed cadence
    ],
    ids=["unknown", "cheap", "vllm-cpu", "capped", "off"],
)
def test_scrape_interval_follows_what_a_scrape_costs(
    share: float, cost_s: float | None, expected_s: float
) -> None:
    cfg = CollectorsConfig(scrape_interval_s=0.25, max_scrape_share=share, max_scrape_interval_s=2)
    assert scrape_interval_s(cfg, cost_s) == pytest.approx(expected_s)


def test_stale_after_counts_the_endpoints_own_intervals() -> None:
    """An endpoint scraped every 1 s (its scrapes cost 10 ms, 1% allowed) goes stale after
    4 of its own intervals, not 4 x scrape_interval_s; the moving average follows, and
    a small page's response time counts as no cost."""
    clock = FakeClock()
    cfg = CollectorsConfig(scrape_interval_s=0.25, stale_after_intervals=4)
    scraper = MetricsScraper({"http://a": EngineKind.VLLM}, cfg, clock=clock)
    scraper.record_cost("http://a", 0.010)
    assert scraper.interval_s("http://a") == pytest.approx(1.0)
    scraper.record_cost("http://a", 0.020)  # 0.7 x 10 + 0.3 x 20 ms = 13 ms
    assert scraper.interval_s("http://a") == pytest.approx(1.3)
    scraper.record_cost("http://a", 0.5, page_bytes=2048)  # small page: waiting, no cost
    assert scraper.interval_s("http://a") == pytest.approx(0.7 * 1.3)
    scraper.record_success("http://a", EngineMetrics(1, 2, 0.5, 16, 100))
    clock.now += 3.6  # 4 x 0.25 s would have been stale long ago
    assert not scraper.view("http://a").is_stale  # type: ignore[union-attr]
    clock.now += 0.1  # past 4 x 0.91 s
    assert scraper.view("http://a").is_stale  # type: ignore[union-attr]


class TimedPage(ThreadedUpstream):
    """A vLLM page (`padded`: grown past 16 KiB with comments, as large as a real
    one's rendering costs) that takes `delay_s` to answer; counts the scrapes it got."""

    def __init__(self, delay_s: float, padded: bool = True) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.page = ("# filler\n" * 3000 if padded else "") + VLLM_PAGE
        self.num_scrapes = 0

    def add_routes(self, app: web.Application) -> None:
        async def metrics(request: web.Request) -> web.Response:
            self.num_scrapes += 1
            await asyncio.sleep(self.delay_s)
            return web.Response(text=self.page, content_type="text/plain")

        app.router.add_get("/metrics", metrics)


def test_a_slow_endpoint_is_scraped_less_often_than_a_fast_one() -> None:
    """All at a 0.05 s cadence, scrapes allowed 20% of an endpoint's time: the one
    answering its large page in 0.1 s moves to ~0.5 s; the fast one, and a slow one
    whose page is small (its time is waiting, not rendering), stay at 0.05 s."""
    slow, fast = TimedPage(0.1).start(), TimedPage(0.0).start()
    slow_small = TimedPage(0.1, padded=False).start()
    cfg = CollectorsConfig(scrape_interval_s=0.05, max_scrape_share=0.2, max_scrape_interval_s=5)
    urls = (slow.url, fast.url, slow_small.url)
    scraper = MetricsScraper(dict.fromkeys(urls, EngineKind.VLLM), cfg)

    async def run() -> None:
        scraper.start()
        try:
            await asyncio.sleep(1.2)
        finally:
            await scraper.stop()

    try:
        asyncio.run(run())
        assert 0.45 <= scraper.interval_s(slow.url) <= 1.5
        assert scraper.interval_s(fast.url) < 0.2
        assert scraper.interval_s(slow_small.url) == 0.05
        # The slow one: its first scrape, then one every ~0.6 s (answer + interval).
        assert slow.num_scrapes <= 4 < 6 <= slow_small.num_scrapes
        assert fast.num_scrapes >= 8
        for url in urls:
            view = scraper.view(url)
            assert view is not None and view.metrics == CANNED["vllm-dp2-lora"][2]
    finally:
        for upstream in (slow, fast, slow_small):
            upstream.stop()
