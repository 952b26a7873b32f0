"""The gateway's HTTP front door: OpenAI-compatible endpoints relayed to upstream
engines chosen by `headway.routing`.

Accounting invariant: a request holds an admission slot (an in-flight lease on its
endpoint) from the routing decision until its handler ends, however it ends (success,
error, client disconnect = handler cancellation); the slot is released exactly once
in `finally`, which hands it to the head of the pool's admission queue, if any. A
request that waits in the queue and is cancelled leaves it at once (admission.py).
An upstream exchange that did not finish is closed, so the engine aborts it.

Failure isolation: every upstream attempt reports its outcome to the outlier
detector (outlier.py). An attempt that fails before anything reached the client
(connect error, upstream 5xx, timeout or broken connection before the first relayed
byte) is retried on the next-best endpoint not tried yet, up to the pool's
`retry.max_attempts` and while its retry budget allows; the retry takes a free slot
at once or not at all. Once a byte reached the client nothing is retried.

Reload (`Gateway.reload`: SIGHUP, the admin port, a polled discovery provider): the
new router and admission are built, then swapped in at once; a request uses the
router and admission it started with to its end (its slot goes back where it came
from, and from there also serves the new queues); queued requests move to the new
queues in order (admission.py). State keyed by endpoint URL (in-flight tracker,
outlier state, scraped metrics, cordons) carries over for endpoints still listed.
Each request ends in exactly one accounting record (accounting.py).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import Any, NamedTuple, TypeVar

import msgspec

from headway.gateway.accounting import TENANT_HEADERS, AccessLog, RequestRecord, outcome_of
from headway.gateway.admission import Admission, NoEndpoint, Rejected, Slot
from headway.gateway.background import stop_tasks
from headway.gateway.config import EngineKind, GatewayConfig, KvEventSource, PoolConfig
from headway.gateway.discovery import (
    DiscoveredEndpoint,
    DiscoveryProvider,
    apply_endpoints,
    make_discovery,
)
from headway.gateway.h1_server import H1Server, HttpRequest, ResponseStream
from headway.gateway.h1_transport import SchemeTransport
from headway.gateway.health import HealthChecker
from headway.gateway.kv_metrics import KvEventMetrics
from headway.gateway.kv_subscriber import FirstBlockCheck, KvEventSubscriber
from headway.gateway.metrics import GatewayMetrics
from headway.gateway.outlier import OutlierDetector, RetryBudget
from headway.gateway.prompt_blocks import PromptInfo, PromptReader
from headway.gateway.request import CompletionRequest, parse_completion, upstream_body
from headway.gateway.routing import Route, Router
from headway.gateway.scraper import MetricsScraper
from headway.gateway.sse import SseRelayFilter
from headway.gateway.tracker import InFlightTracker
from headway.gateway.transport import (
    PushingResponse,
    Transport,
    UpstreamConnectError,
    UpstreamReadError,
    UpstreamResponse,
)
from headway.openai_errors import ApiError, error_body, sse_error_event
from headway.resources.tokenizer import default_tokenizer, load_tokenizer
from headway.routing import PRESETS, Headers, KvBlockIndex, RequestContext

log = logging.getLogger(__name__)
_T = TypeVar("_T")

REQUEST_ID = "x-request-id"
ROUTE_HEADER = "x-headway-route"
DEBUG_HEADER = "x-headway-debug"
SESSION_HEADERS = ("x-session-id", "x-session-token")
_NO_PROMPT = PromptInfo(None, (), (), 0)
_RESET_TIMEOUT_S = 10.0
_FORWARD_REQUEST_HEADERS = ("traceparent", "tracestate", "accept")
# Not relayed from upstream responses: hop-by-hop, or rewritten by the gateway.
_DROP_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "date",
        "server",
        "proxy-authenticate",
        "trailer",
        "upgrade",
        REQUEST_ID,
    }
)
_DRAIN_POLL_S = 0.02
# Generated request ids: 128 random bits from a generator seeded from os.urandom (again
# in a forked child), not a system call per request; ids need to be unique, not secret.
_request_ids = random.Random()
os.register_at_fork(after_in_child=_request_ids.seed)
# A stream's inter-chunk gaps wait for the end of the request in a list of at most
# this many (then they go to the histogram early).
_MAX_PENDING_GAPS = 512
# Config sections a reload cannot change (they need a restart).
RESTART_FIELDS = ("listen", "admin", "prompt", "collectors", "access_log", "discovery", "limits")
_MAX_UPSTREAM_ERROR_BYTES = 64 * 1024
_MAX_UPSTREAM_BODY_BYTES = 256 * 1024 * 1024


class _UpstreamTimeout(Exception):
    pass


class _AttemptFailed(Exception):
    """An upstream attempt failed before anything reached the client: retryable."""

    def __init__(self, error: ApiError, reason: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.reason = reason  # connect_error, upstream_5xx, timeout, read_error


class _Attempt:
    """One upstream attempt's outcome for outlier detection: `success` (the upstream
    answered, < 500, to the end), `failure`, or `neutral` (nothing learned, e.g. the
    client went away)."""

    __slots__ = ("outcome", "started_at", "task")

    def __init__(self, started_at: float, task: asyncio.Task[Any] | None) -> None:
        self.outcome = "neutral"
        self.started_at = started_at  # `timeouts.ttft_s` counts from here
        self.task = task  # the handler's (its deadline cancels it)


class _ClientGone(Exception):
    """The client's connection broke while the gateway was writing to it."""


class _DeadlineTimer:
    """One loop timer for many `_Deadline`s (a gateway's): armed for the earliest
    queued deadline; when it fires it hands each due entry to its deadline (which
    expires, or queues itself again if it moved later) and re-arms for the next.
    A request's deadline then costs a heap push, not a loop timer armed and
    cancelled per request (uvloop: a libuv timer handle each, ~5 us).

    Entries of closed deadlines, or superseded by a newer entry of theirs, are
    skipped when due and dropped whenever the heap has doubled since it was last
    compacted, so the heap stays within twice the live deadlines (plus a constant)."""

    __slots__ = ("_compact_at", "_entries", "_handle", "_handle_at", "_loop", "_seq")

    def __init__(self) -> None:
        self._entries: list[tuple[float, int, _Deadline]] = []
        self._seq = itertools.count()  # ties: first queued, first due
        self._handle: asyncio.TimerHandle | None = None
        self._handle_at = math.inf  # the deadline the armed timer is for
        self._loop: asyncio.AbstractEventLoop | None = None
        self._compact_at = _MIN_COMPACT_ENTRIES

    def add(self, deadline: _Deadline, at: float, loop: asyncio.AbstractEventLoop) -> None:
        entries = self._entries
        if len(entries) >= self._compact_at:
            entries[:] = [e for e in entries if e[2].queued_at == e[0]]
            heapq.heapify(entries)
            self._compact_at = max(_MIN_COMPACT_ENTRIES, 2 * len(entries))
        heapq.heappush(entries, (at, next(self._seq), deadline))
        deadline.queued_at = at
        if at < self._handle_at or loop is not self._loop:
            self._arm(at, loop)

    def _arm(self, at: float, loop: asyncio.AbstractEventLoop) -> None:
        if self._handle is not None and self._loop is not None and not self._loop.is_closed():
            self._handle.cancel()
        self._loop = loop
        # Deadlines are on time.monotonic(); the loop may count from another origin.
        delay_s = max(0.0, at - time.monotonic())
        self._handle = loop.call_at(loop.time() + delay_s, self._on_timer)
        self._handle_at = at

    def _on_timer(self) -> None:
        self._handle = None
        self._handle_at = math.inf
        entries = self._entries
        now = time.monotonic()
        while entries and entries[0][0] <= now:
            at, _, deadline = heapq.heappop(entries)
            if deadline.queued_at == at:  # its newest entry, and it is still open
                deadline.queued_at = None
                deadline.on_due(now)
        if entries and self._loop is not None and not self._loop.is_closed():
            self._arm(entries[0][0], self._loop)


_MIN_COMPACT_ENTRIES = 64


class _Deadline:
    """The moving deadline of one upstream attempt.

    `wait(awaitable)` awaits it and raises `_UpstreamTimeout` if the deadline `at`
    (time.monotonic(); None: none) passes meanwhile, as `asyncio.timeout_at` would.
    Only time spent waiting on the upstream counts: a deadline that passes while the
    relay writes to the client expires at the next `wait` (unless what it awaits is
    ready at once). Moving `at` costs an attribute store: the deadline is queued on
    the shared `_DeadlineTimer` for the earliest `at` once and, when that comes early
    (the deadline moved later since), queued again for the current one, instead of a
    timer armed and cancelled per chunk. `close` when the attempt ends."""

    __slots__ = (
        "_cancelling",
        "_is_expired",
        "_is_waiting",
        "_task",
        "_timers",
        "at",
        "queued_at",
    )

    def __init__(
        self,
        at: float | None,
        task: asyncio.Task[Any] | None = None,
        timers: _DeadlineTimer | None = None,
    ) -> None:
        self.at = at
        self._task = task  # the task that waits (default: the first `wait`'s)
        self._timers = timers if timers is not None else _DeadlineTimer()
        self.queued_at: float | None = None  # the `at` of its entry on the timer
        self._is_waiting = False
        self._is_expired = False
        self._cancelling = 0

    async def wait(self, awaitable: Awaitable[_T]) -> _T:
        at = self.at
        if at is None:
            return await awaitable
        task = self._task
        if task is None:
            task = self._task = asyncio.current_task()
            assert task is not None
        queued_at = self.queued_at
        if queued_at is None or at < queued_at:
            self._arm(at)
        self._cancelling = task.cancelling()
        self._is_waiting = True
        try:
            result = await awaitable
        except asyncio.CancelledError:
            if self._is_expired:
                self._is_expired = False
                if task.uncancel() <= self._cancelling:
                    raise _UpstreamTimeout from None
            raise
        finally:
            self._is_waiting = False
        if self._is_expired:  # expired as the awaitable finished anyway: keep its result
            self._is_expired = False
            task.uncancel()
        return result

    def _arm(self, at: float) -> None:
        assert self._task is not None
        self._timers.add(self, at, self._task.get_loop())

    def on_due(self, now: float) -> None:
        """Its entry on the timer came due (called by `_DeadlineTimer`)."""
        at = self.at
        if at is None:
            return
        if now < at:  # moved later since it was queued
            self._arm(at)
        elif self._is_waiting and self._task is not None:
            self._is_expired = True
            self._task.cancel()
        # else: passed between waits; the next `wait` queues it again (due at once)

    def close(self) -> None:
        self.queued_at = None  # its entry, if any, is skipped (and dropped) later
        self.at = None


def _nothing() -> None:
    pass


class _SseRelay:
    """One streamed response's relay state: what `feed` does with each upstream piece
    (SSE filtering, token counting, inter-chunk gaps, the idle deadline, the write to
    the client), whether it is called by the relay's loop or, pushed, from the
    upstream connection's protocol callback (`on_pushed`, which never raises: a
    failure stops the push and `raise_failure` re-raises it in the relay's task)."""

    __slots__ = (
        "_failure",
        "_gateway",
        "_request",
        "_route",
        "deadline",
        "idle_s",
        "is_counted",
        "last_at",
        "must_drain",
        "rec",
        "reply_headers",
        "resp",
        "sse",
        "stop_push",
        "total_deadline",
    )

    def __init__(
        self,
        gateway: Gateway,
        request: HttpRequest,
        route: Route,
        rec: RequestRecord,
        sse: SseRelayFilter,
        reply_headers: Mapping[str, str],
        deadline: _Deadline,
        total_deadline: float | None,
        idle_s: float | None,
    ) -> None:
        self._gateway = gateway
        self._request = request
        self._route = route
        self.rec = rec
        self.sse = sse
        self.reply_headers = reply_headers
        self.deadline = deadline
        self.total_deadline = total_deadline
        self.idle_s = idle_s
        self.resp: ResponseStream | None = None
        self.last_at = 0.0
        self.is_counted = False
        self.must_drain = False  # the client is not keeping up: drain before more
        self._failure: BaseException | None = None
        self.stop_push: Callable[[], None] = _nothing  # set when the upstream pushes

    def feed(self, chunk: bytes) -> None:
        """Relay one upstream piece. Raises `_ClientGone` when the client has gone."""
        sse = self.sse
        out = sse.feed(chunk)
        if sse.is_done and not self.is_counted:
            # Count before the last bytes go out, so a client that reads /metrics
            # right after its stream ended sees its tokens.
            self._gateway._count_tokens(self._route, sse.usage, self.rec)
            self.is_counted = True
        now = time.monotonic()
        if out:
            resp = self.resp
            if resp is None:
                resp = self.resp = self._request.start_stream(200, self.reply_headers)
            if self.last_at:
                gaps = self.rec.chunk_gaps_s
                gaps.append(now - self.last_at)
                if len(gaps) >= _MAX_PENDING_GAPS:  # bounded memory on long streams
                    route = self._route
                    self._gateway.metrics.itl.add((route.pool.model, route.endpoint), gaps)
                    gaps.clear()
            else:
                self.rec.first_byte_at = now
            self.last_at = now
            try:
                self.must_drain = resp.write_now(out)
            except ConnectionError:
                raise _ClientGone from None
        idle_s = self.idle_s
        self.deadline.at = (
            _earliest(self.total_deadline, now + idle_s) if idle_s else self.total_deadline
        )

    def on_pushed(self, chunk: bytes) -> None:
        """`feed` from the upstream's protocol callback; stops the push when the
        client must drain first or something failed."""
        try:
            self.feed(chunk)
        except BaseException as exc:  # re-raised in the relay's task
            self._failure = exc
            self.stop_push()
            return
        if self.must_drain:
            self.stop_push()

    def raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    async def drain(self) -> None:
        """Until the client has taken what was written (`_ClientGone` if it went)."""
        assert self.resp is not None
        try:
            await self.resp.drain()
        except ConnectionError:
            raise _ClientGone from None
        self.must_drain = False


class Gateway:
    """The gateway's state: config, router, in-flight tracker, metrics, transport."""

    def __init__(
        self,
        config: GatewayConfig,
        transport: Transport | None = None,
        worker: int | None = None,
        discovery: DiscoveryProvider | None = None,
    ) -> None:
        self.config = config
        self.discovery = discovery if discovery is not None else make_discovery(config)
        # The provider's last answer, when it is polled (applied on top of reloads).
        self._discovered: list[DiscoveredEndpoint] | None = None
        self._discovery_task: asyncio.Task[None] | None = None
        self.tracker = InFlightTracker()
        self.metrics = GatewayMetrics()
        self.outliers = OutlierDetector(config, self.metrics)
        self.health_checker = HealthChecker(config, self.outliers)
        self.retry_budgets = {p.model: RetryBudget(p.retry) for p in config.pools}
        self.scraper = self._make_scraper(config)
        self.kv_index, self.kv_subscriber = self._make_kv(config)
        # Endpoints cordoned on the admin port: no new requests (shared with the routers).
        self.cordoned: set[str] = set()
        self.router = Router(
            config,
            self.tracker,
            outliers=self.outliers,
            scraper=self.scraper,
            kv_index=self.kv_index,
            block_size_of=self._block_size_of,
            cordoned=self.cordoned,
        )
        self.prompts: PromptReader | None = None  # built at startup (loads the tokenizer)
        self._kv_batch_children: dict[str, tuple[Any, Any]] = {}
        self._reads_prompts_of: dict[str, tuple[PoolConfig, bool]] = {}
        self.admission = Admission(config, self.router, self.tracker, self.metrics)
        self.transport: Transport = transport or SchemeTransport(
            connect_timeout_s=config.timeouts.connect_s
        )
        self.started_at = int(time.time())
        self.access_log = AccessLog(config.access_log, worker)
        self._handlers: set[asyncio.Task[Any]] = set()  # completion handlers running
        self._deadline_timer = _DeadlineTimer()  # every upstream attempt's deadline
        self._is_started = False
        # The loop the app serves on (set at start-up; None: look it up per request).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reload_lock = asyncio.Lock()
        # Reads the config file again for a reload (set by `headway serve --config`).
        self.config_loader: Callable[[], GatewayConfig] | None = None
        self._routes = self._make_routes()

    def _make_scraper(self, config: GatewayConfig) -> MetricsScraper:
        return MetricsScraper(
            _scrape_targets(config),
            config.collectors,
            on_stale_change=lambda url, stale: self.metrics.metrics_stale.labels(url).set(stale),
        )

    def _make_kv(
        self, config: GatewayConfig
    ) -> tuple[KvBlockIndex | None, KvEventSubscriber | None]:
        if not any(p.has_kv_events for p in config.pools):
            return None, None
        index = KvBlockIndex()
        sources, discover, without = _kv_sources(config)
        subscriber = KvEventSubscriber(
            index,
            config.collectors,
            sources=sources,
            discover=discover,
            without_source=without,
            on_stale_change=lambda url, stale: self.metrics.kv_index_stale.labels(url).set(stale),
            on_batch=self._count_kv_batch,
            # A wrong hash seed or scheme shows at once, not as silent routing misses.
            first_block_check=FirstBlockCheck(
                config.prompt.hash_seed, KvEventMetrics.of(self.metrics.registry)
            ),
        )
        return index, subscriber

    # -- operations (admin port, SIGHUP; docs/operations.md) -----------------------
    def endpoint_urls(self) -> list[str]:
        return list(dict.fromkeys(u for p in self.config.pools for u in p.endpoints))

    def endpoint_states(self) -> list[dict[str, Any]]:
        """Every endpoint's state as `GET /admin/endpoints` shows it."""
        out = []
        for url in self.endpoint_urls():
            load = self.tracker.load(url)
            is_cordoned = url in self.cordoned
            is_ejected = self.outliers.is_ejected(url)
            view = self.scraper.view(url)
            out.append(
                {
                    "url": url,
                    "pools": [p.model for p in self.config.pools if url in p.endpoints],
                    "state": "cordoned" if is_cordoned else "ejected" if is_ejected else "healthy",
                    "is_cordoned": is_cordoned,
                    "is_ejected": is_ejected,
                    "num_in_flight": load.num_requests,
                    "num_in_flight_tokens": load.num_tokens,
                    "is_metrics_stale": None if view is None else view.is_stale,
                }
            )
        return out

    def cordon(self, url: str) -> None:
        """No new requests for `url`; those on it finish."""
        self.cordoned.add(url)

    def uncordon(self, url: str) -> None:
        self.cordoned.discard(url)
        self.admission.dispatch_all()  # queued requests may use it now

    async def drain_endpoint(self, url: str, timeout_s: float) -> bool:
        """Cordon `url` and wait until nothing is in flight on it; False when
        `timeout_s` ran out first (it stays cordoned either way)."""
        self.cordon(url)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.tracker.load(url).num_requests > 0:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(_DRAIN_POLL_S)
        return True

    async def reload(self, new: GatewayConfig) -> list[str]:
        """Swap in `new` pools (endpoints, profiles, limits) without dropping anything
        in flight: requests keep the router they started with; queued ones move to the
        new admission queues. Sections that need a restart keep their running values;
        their names are returned."""
        if self._discovered is not None:  # endpoints come from the provider, not the file
            new = apply_endpoints(new, self._discovered)
        async with self._reload_lock:
            kept = [f for f in RESTART_FIELDS if getattr(new, f) != getattr(self.config, f)]
            new = replace(new, **{f: getattr(self.config, f) for f in RESTART_FIELDS})
            old = self.config
            old_scraper, old_kv = self.scraper, self.kv_subscriber
            old_health = self.health_checker
            # First build what may fail, touching nothing that serves: a failure here
            # leaves the running config as it was.
            scraper, kv_index, kv_subscriber = old_scraper, self.kv_index, old_kv
            if _scrape_targets(new) != _scrape_targets(old):
                scraper = self._make_scraper(new)
                scraper.adopt(old_scraper)
            if _kv_sources(new) != _kv_sources(old):
                # A new index: precise-prefix matches approximately until it syncs.
                kv_index, kv_subscriber = self._make_kv(new)
            router = Router(
                new,
                self.tracker,
                outliers=self.outliers,
                scraper=scraper,
                kv_index=kv_index,
                block_size_of=self._block_size_of,
                cordoned=self.cordoned,
                previous=self.router,
            )
            health_checker = HealthChecker(new, self.outliers)
            admission = Admission(new, router, self.tracker, self.metrics)
            # Then swap, with no await in between.
            self.outliers.reconfigure(new)
            urls = {u for p in new.pools for u in p.endpoints}
            self.cordoned.intersection_update(urls)
            self.retry_budgets = {
                p.model: budget
                if (budget := self.retry_budgets.get(p.model)) is not None
                and budget.config == p.retry
                else RetryBudget(p.retry)
                for p in new.pools
            }
            self.scraper, self.kv_index, self.kv_subscriber = scraper, kv_index, kv_subscriber
            self.health_checker = health_checker
            self.config, self.router = new, router
            old_admission, self.admission = self.admission, admission
            old_admission.handover(admission)
            # The swap is done; now stop what was replaced and start the new parts.
            if self._is_started:
                await old_health.stop()
                self.health_checker.start()
                if self.scraper is not old_scraper:
                    await old_scraper.stop()
                    self.scraper.start()
                if self.kv_subscriber is not old_kv:
                    if old_kv is not None:
                        await old_kv.stop()
                    if self.kv_subscriber is not None:
                        self.kv_subscriber.start()
            log.warning(
                "config reloaded: %d pool(s), %d endpoint(s)%s",
                len(new.pools),
                len(urls),
                f"; kept running values of {', '.join(kept)} (restart to change)" if kept else "",
            )
            return kept

    async def drain(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for running completions to finish, then cancel the
        rest (which aborts them upstream); returns how many were cancelled."""
        pending = set(self._handlers)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5.0)
        return len(pending)

    def make_server(self) -> H1Server:
        """The client-facing HTTP server (docs/decisions/0004-front-server.md): every
        request goes to `handle`. Call `start` before serving and `close` after."""
        return H1Server(self.handle, max_body_bytes=self.config.limits.max_body_bytes)

    async def handle(self, request: HttpRequest) -> None:
        """Route one request. Every error the client sees is OpenAI-shaped JSON, never a
        traceback: the completion handlers answer their own errors (and count them),
        the other routes' errors are answered here; unknown paths get 404, known paths
        with another method 405 (with `Allow`)."""
        methods = self._routes.get(request.path)
        if methods is None:
            request.error(404, "Not Found")
            return
        handler = methods.get(request.method)
        if handler is None and request.method == "HEAD":
            handler = methods.get("GET")
        if handler is None:
            allowed = ", ".join(sorted({*methods, "HEAD"} if "GET" in methods else methods))
            request.error(405, "Method Not Allowed", headers={"Allow": allowed})
            return
        if request.path in _COMPLETION_PATHS:
            await handler(request)
            return
        try:
            if request.is_body_too_large:
                raise ApiError(413, _too_large_message(request, self.config.limits.max_body_bytes))
            await handler(request)
        except ApiError as exc:
            if not request.is_response_started:
                request.error(exc.status, exc.message, exc.param)

    def _make_routes(self) -> dict[str, dict[str, Callable[[HttpRequest], Awaitable[None]]]]:
        return {
            # The handler itself, not a method awaiting it: a coroutine less that every
            # resumption of the request's task passes through.
            "/v1/chat/completions": {"POST": partial(self._completion, is_chat=True)},
            "/v1/completions": {"POST": partial(self._completion, is_chat=False)},
            "/v1/models": {"GET": self.models},
            "/health": {"GET": self.health},
            "/ready": {"GET": self.ready},
            "/metrics": {"GET": self.metrics_handler},
            "/reset_prefix_cache": {"POST": self.reset_prefix_cache},
        }

    async def start(self) -> None:
        """Start the collectors (health checks, scrapes, KV events, discovery)."""
        self._loop = asyncio.get_running_loop()
        tokenizer_path = self.config.prompt.tokenizer
        tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path else default_tokenizer()
        self.prompts = PromptReader(self.config.prompt, tokenizer)
        self.health_checker.start()
        self.scraper.start()
        if self.kv_subscriber is not None:
            self.kv_subscriber.start()
        if self.discovery.poll_interval_s is not None:
            self._discovery_task = asyncio.create_task(self._poll_discovery())
        self._is_started = True

    async def _poll_discovery(self) -> None:
        """Apply the provider's endpoint list whenever it changes (as a reload)."""
        interval_s = self.discovery.poll_interval_s
        assert interval_s is not None
        while True:
            try:
                found = await self.discovery.endpoints()
                if found != self._discovered:
                    new = apply_endpoints(self.config, found)
                    self._discovered = found
                    await self.reload(new)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the last good list; try again next interval
                log.exception("endpoint discovery failed; keeping the current endpoints")
            await asyncio.sleep(interval_s)

    async def close(self) -> None:
        """Stop the collectors and close upstream connections (after `drain`)."""
        if self._discovery_task is not None:
            await stop_tasks([self._discovery_task], None)
        await self.health_checker.stop()
        await self.scraper.stop()
        if self.kv_subscriber is not None:
            await self.kv_subscriber.stop()
        if self.prompts is not None:
            self.prompts.close()
        await self.transport.close()
        self.access_log.flush()  # lines still waiting for their batch's timer

    def _block_size_of(self, url: str) -> int | None:
        view = self.scraper.view(url)
        if view is not None and view.metrics is not None and view.metrics.block_size:
            return view.metrics.block_size
        if self.kv_subscriber is not None:
            return self.kv_subscriber.block_size(url)
        return None

    def _count_kv_batch(self, url: str) -> None:
        children = self._kv_batch_children.get(url)
        if children is None:
            children = self._kv_batch_children[url] = (
                self.metrics.kv_event_batches.labels(url),
                self.metrics.kv_index_blocks.labels(url),
            )
        children[0].inc()
        if self.kv_index is not None:
            children[1].set(self.kv_index.num_blocks(url))

    # -- simple endpoints ----------------------------------------------------------
    async def models(self, request: HttpRequest) -> None:
        data = [
            {"id": name, "object": "model", "created": self.started_at, "owned_by": "headway"}
            for pool in self.config.pools
            for name in pool.names
        ]
        _json(request, {"object": "list", "data": data})

    async def health(self, request: HttpRequest) -> None:
        _json(request, {"status": "ok"})

    async def ready(self, request: HttpRequest) -> None:
        empty = [p.model for p in self.config.pools if not p.endpoints]
        if empty:
            _json(request, {"status": "not ready", "pools_without_endpoints": empty}, status=503)
            return
        _json(request, {"status": "ready"})

    async def metrics_handler(self, request: HttpRequest) -> None:
        request.respond(
            200, self.metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8"
        )

    async def reset_prefix_cache(self, request: HttpRequest) -> None:
        """vLLM's dev route, fanned out: `POST /reset_prefix_cache` on every endpoint of
        every pool (not hosted `openai` ones); 200 when all succeeded, else 502 naming
        the ones that failed."""
        urls = list(
            dict.fromkeys(
                u for p in self.config.pools if p.engine != EngineKind.OPENAI for u in p.endpoints
            )
        )
        results = await asyncio.gather(*(self._reset_one(u) for u in urls))
        failed = {u: r for u, r in zip(urls, results, strict=True) if r is not None}
        body = {
            "success": not failed,
            "endpoints": {
                u: ("ok" if r is None else r) for u, r in zip(urls, results, strict=True)
            },
        }
        if failed:
            detail = "; ".join(f"{u}: {r}" for u, r in failed.items())
            body["error"] = {
                "message": f"prefix cache reset failed on {len(failed)} of {len(urls)} endpoints: {detail}",
                "type": "BadGatewayError",
                "param": None,
                "code": 502,
            }
            _json(request, body, status=502)
            return
        _json(request, body)

    async def _reset_one(self, url: str) -> str | None:
        """None when `url` reset its prefix cache, else why not."""
        upstream: UpstreamResponse | None = None
        is_read = False
        try:
            async with asyncio.timeout(_RESET_TIMEOUT_S):
                upstream = await self.transport.open(
                    url + "/reset_prefix_cache", b"", {"Accept-Encoding": "identity"}
                )
                data = await upstream.read_all(_MAX_UPSTREAM_ERROR_BYTES)
                is_read = True
        except UpstreamConnectError as exc:
            return f"unreachable: {exc}"
        except UpstreamReadError as exc:
            return f"read error: {exc}"
        except TimeoutError:
            return f"no answer within {_RESET_TIMEOUT_S:g} s"
        finally:
            if upstream is not None:
                upstream.finish(is_complete=is_read)
        if upstream.status != 200:
            return f"HTTP {upstream.status}"
        # vLLM answers 200 with no body; the simulator says {"success": false} while
        # blocks are still in use.
        try:
            obj = msgspec.json.decode(data) if data.strip() else None
        except msgspec.DecodeError:
            obj = None
        if isinstance(obj, dict) and obj.get("success") is False:
            return "engine refused (blocks still in use)"
        return None

    # -- completions ---------------------------------------------------------------
    async def _completion(self, request: HttpRequest, *, is_chat: bool) -> None:
        # With the loop given, no running-loop lookup (on 3.11 a getpid system call).
        task = asyncio.current_task(self._loop)
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        arrived_at = time.monotonic()
        total_s = self.config.timeouts.total_s
        total_deadline = arrived_at + total_s if total_s else None
        request_id = request.headers.get(REQUEST_ID) or f"{_request_ids.getrandbits(128):032x}"
        reply_headers = {REQUEST_ID: request_id}
        rec = RequestRecord(request_id, "chat" if is_chat else "completions", arrived_at)
        rec.tenant = _tenant(request)
        rec.session = self._session_id(request)
        # A reload swaps these; a request keeps the ones it started with.
        router, admission = self.router, self.admission
        status = 500
        is_complete = True
        slot: Slot | None = None
        # A whole response goes out after the accounting below: a client that reads
        # the gateway's state right after its answer finds its slot released.
        reply: _Reply | None = None
        try:
            if request.is_body_too_large:
                raise ApiError(413, _too_large_message(request, self.config.limits.max_body_bytes))
            body = request.body
            req = parse_completion(body, is_chat=is_chat)
            rec.model = req.model
            rec.is_stream = req.is_stream
            pool = router.pool_for(req.model)
            if pool is None:
                raise ApiError(404, f"The model `{req.model}` does not exist.", "model")
            rec.pool = pool.model
            info = await self._prompt_info(pool, req, is_chat)
            num_prompt_tokens = info.num_prompt_tokens
            if num_prompt_tokens is None:
                # ~4 characters a token; the body's length when the prompt was unreadable
                num_prompt_tokens = (info.num_chars or len(body)) // 4
            ctx = RequestContext(
                request_id=request_id,
                model=pool.model,
                num_prompt_tokens_est=num_prompt_tokens,
                max_output_tokens=req.max_tokens if (req.max_tokens or 0) >= 0 else None,
                block_hashes=info.block_hashes,
                chunk_hashes=info.chunk_hashes,
                headers=_routing_headers(request),
                session_id=rec.session,
                tenant=rec.tenant,
                lora_adapter=req.model if req.model in pool.lora_adapters else None,
            )
            # In-flight token load: prompt + the most it may generate.
            num_tokens = num_prompt_tokens + max(0, req.max_tokens or 0)
            want_route = self.config.observability.route_header or (
                request.headers.get(DEBUG_HEADER) == "1"
            )
            try:
                slot = await admission.admit(pool, ctx, num_tokens)
            except NoEndpoint:
                raise ApiError(503, f"no endpoint available for model `{pool.model}`") from None
            rec.endpoint = slot.route.endpoint
            rec.pool = slot.route.pool.model
            budget = self._retry_budget(slot.route.pool)
            budget.request()
            tried = {slot.route.endpoint}
            while True:
                route = slot.route
                rec.endpoint = route.endpoint
                # The first attempt's TTFT counts from arrival (time queued included),
                # a retry's from its own start.
                attempt = _Attempt(arrived_at if len(tried) == 1 else time.monotonic(), task)
                try:
                    reply = await self._proxy(
                        request,
                        req,
                        body,
                        route,
                        request_id,
                        arrived_at,
                        attempt,
                        rec,
                        _route_header(route) if want_route else None,
                    )
                    status = reply.status if reply is not None else 200
                    is_complete = attempt.outcome != "failure"
                    break
                except _AttemptFailed as exc:
                    attempt.outcome = "failure"
                    failed = exc
                finally:
                    self._report(route.endpoint, attempt.outcome)
                retry = None
                if len(tried) < route.pool.retry.max_attempts and (
                    total_deadline is None or time.monotonic() < total_deadline
                ):
                    retry = admission.admit_now(route.pool, ctx, num_tokens, frozenset(tried))
                    if retry is not None and not budget.try_retry():
                        self.outliers.neutral(retry.route.endpoint)
                        retry.release()
                        retry = None
                if retry is None:
                    raise failed.error from None
                log.info(
                    "request %s: retrying on %s after %s on %s",
                    request_id,
                    retry.route.endpoint,
                    failed.reason,
                    route.endpoint,
                )
                self.metrics.retries.labels(route.pool.model, failed.reason).inc()
                rec.num_retries += 1
                rec.retry_reasons.append(failed.reason)
                slot.release()
                slot = retry
                tried.add(slot.route.endpoint)
        except Rejected as exc:
            status = 429
            rec.error = exc.reason
            headers = {**reply_headers, "Retry-After": str(exc.retry_after_s)}
            reply = _error_reply(429, str(exc), None, headers)
        except ApiError as exc:
            status = exc.status
            rec.error = exc.message
            reply = _error_reply(exc.status, exc.message, exc.param, reply_headers)
        except _ClientGone:
            status = 499  # the client went away mid-stream
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        except ConnectionResetError:
            raise
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            rec.error = "internal gateway error"
            if not request.is_response_started:
                reply = _error_reply(500, rec.error, None, reply_headers)
        finally:
            if slot is not None:
                slot.release()  # hands the slot to the head of the queue, if any
            rec.finished_at = time.monotonic()
            rec.status = status
            rec.outcome = outcome_of(status, is_complete)
            self.metrics.request_done(rec)
            self.access_log.emit(rec)
        if reply is not None:
            request.respond(reply.status, reply.body, reply.headers, reply.content_type)

    async def _prompt_info(
        self, pool: PoolConfig, req: CompletionRequest, is_chat: bool
    ) -> PromptInfo:
        if self.prompts is None or not self._reads_prompts(pool):
            return _NO_PROMPT
        tokenize = pool.has_kv_events
        # LoRA blocks hash with the adapter's name and path (vLLM's extra keys), which
        # the gateway does not know: no precise hashes for them, approximate matching.
        is_lora = req.model in pool.lora_adapters
        block_size = self.router.block_size(pool) if tokenize and not is_lora else None
        try:
            return await self.prompts.read(
                req.data, is_chat=is_chat, block_size=block_size, tokenize=tokenize
            )
        except Exception:  # routing inputs are best effort; the engine validates prompts
            log.warning("could not read the prompt for routing", exc_info=True)
            return _NO_PROMPT

    def _reads_prompts(self, pool: PoolConfig) -> bool:
        """Whether `pool`'s routing uses anything read from the prompt (cached per
        pool config: a reload brings new ones). A pool that does not is routed
        without reading prompts even with KV events: nothing is tokenized, and its
        requests feed no cache-prediction counters (no prediction was made)."""
        cached = self._reads_prompts_of.get(pool.model)
        if cached is not None and cached[0] is pool:
            return cached[1]
        reads = reads_prompts(pool.routing_config())
        self._reads_prompts_of[pool.model] = (pool, reads)
        return reads

    def _retry_budget(self, pool: PoolConfig) -> RetryBudget:
        budget = self.retry_budgets.get(pool.model)
        if budget is None:  # a pool added by a reload
            budget = self.retry_budgets[pool.model] = RetryBudget(pool.retry)
        return budget

    def _session_id(self, request: HttpRequest) -> str | None:
        configured = self.config.prompt.session_header
        if configured is not None:
            value = request.headers.get(configured)
            if value:
                return value
        for name in SESSION_HEADERS:
            value = request.headers.get(name)
            if value:
                return value
        return None

    def _report(self, endpoint: str, outcome: str) -> None:
        if outcome == "success":
            self.outliers.success(endpoint)
        elif outcome == "failure":
            self.outliers.failure(endpoint)
        else:
            self.outliers.neutral(endpoint)

    async def _proxy(
        self,
        request: HttpRequest,
        req: CompletionRequest,
        body: bytes,
        route: Route,
        request_id: str,
        arrived_at: float,
        attempt: _Attempt,
        rec: RequestRecord,
        route_header: str | None = None,
    ) -> _Reply | None:
        """Send the request to `route`'s endpoint; returns its whole answer for the
        client, or None when the answer was a stream (relayed as it came)."""
        timeouts = self.config.timeouts
        total_deadline = arrived_at + timeouts.total_s if timeouts.total_s else None
        headers = {
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",
            REQUEST_ID: request_id,
        }
        for name in _FORWARD_REQUEST_HEADERS:
            value = request.headers.get(name)
            if value is not None:
                headers[name] = value
        api_key = route.pool.api_key
        if api_key is not None:  # hosted `openai` pools; the client's own key is never sent
            headers["Authorization"] = f"Bearer {api_key}"
        url = route.endpoint + request.path
        payload = upstream_body(body, req, route.pool.upstream_model(req.model))
        upstream: UpstreamResponse | None = None
        is_complete = False
        first_deadline = total_deadline
        if req.is_stream and timeouts.ttft_s:
            first_deadline = _earliest(total_deadline, attempt.started_at + timeouts.ttft_s)
        deadline = _Deadline(first_deadline, attempt.task, self._deadline_timer)
        if rec.sent_at is None:
            rec.sent_at = time.monotonic()
        try:
            try:
                upstream = await deadline.wait(self.transport.open(url, payload, headers))
            except UpstreamConnectError as exc:
                raise _AttemptFailed(
                    ApiError(502, f"upstream {route.endpoint} is unreachable: {exc}"),
                    "connect_error",
                ) from None
            except _UpstreamTimeout:
                raise _AttemptFailed(
                    ApiError(504, f"upstream {route.endpoint} did not answer in time"), "timeout"
                ) from None
            if upstream.status >= 500:
                detail = _redact(await self._error_detail(upstream, total_deadline), api_key)
                raise _AttemptFailed(
                    ApiError(
                        502, f"upstream {route.endpoint} answered {upstream.status}: {detail}"
                    ),
                    "upstream_5xx",
                )
            is_sse = upstream.headers.get("Content-Type", "").startswith("text/event-stream")
            if req.is_stream and upstream.status == 200 and is_sse:
                is_complete = await self._relay_stream(
                    request,
                    req,
                    upstream,
                    route,
                    request_id,
                    arrived_at,
                    deadline,
                    rec,
                    route_header,
                )
                attempt.outcome = "success" if is_complete else "failure"
                return None
            deadline.at = total_deadline
            try:
                data = await deadline.wait(upstream.read_all(_MAX_UPSTREAM_BODY_BYTES))
            except _UpstreamTimeout:
                raise _AttemptFailed(
                    ApiError(504, f"upstream {route.endpoint} timed out"), "timeout"
                ) from None
            except UpstreamReadError as exc:
                raise _AttemptFailed(
                    ApiError(502, f"upstream {route.endpoint} failed while answering: {exc}"),
                    "read_error",
                ) from None
            is_complete = True
            attempt.outcome = "success"
            if upstream.status == 200:
                self._count_tokens(route, _usage_of(data), rec)
            elif api_key is not None and api_key.encode() in data:
                # A provider's 401 may quote the key it got; the client never sees it.
                data = data.replace(api_key.encode(), _REDACTED.encode())
            return _Reply(
                upstream.status,
                data,
                _response_headers(upstream.headers, request_id, route_header),
                None,  # the upstream's Content-Type is among its headers
            )
        finally:
            deadline.close()
            if upstream is not None:
                upstream.finish(is_complete=is_complete)

    async def _relay_stream(
        self,
        request: HttpRequest,
        req: CompletionRequest,
        upstream: UpstreamResponse,
        route: Route,
        request_id: str,
        arrived_at: float,
        deadline: _Deadline,
        rec: RequestRecord,
        route_header: str | None = None,
    ) -> bool:
        """Relay SSE bytes as they come; True when the upstream stream ended cleanly.
        The client's response starts with the first relayed bytes: an upstream that
        fails before them raises `_AttemptFailed` (retryable).

        Once the response has started, an upstream that can (`PushingResponse`) hands
        each piece over in its protocol callback and the relay writes it there: one
        task wake-up per stream instead of one per token. The relay falls back to
        reading (`read_chunk`) while the client is not keeping up (until it drains)
        and for what is left when the push ends (the end of the body, an error)."""
        timeouts = self.config.timeouts
        total_deadline = arrived_at + timeouts.total_s if timeouts.total_s else None
        relay = _SseRelay(
            self,
            request,
            route,
            rec,
            SseRelayFilter(strip_usage=req.must_strip_usage),
            _response_headers(upstream.headers, request_id, route_header),
            deadline,
            total_deadline,
            timeouts.idle_s,
        )
        push = None
        if isinstance(upstream, PushingResponse):
            push, relay.stop_push = upstream.push, upstream.stop_push
        error: tuple[int, str] | None = None
        while True:
            try:
                if push is not None and relay.resp is not None:
                    await deadline.wait(push(relay.on_pushed))
                    relay.raise_failure()
                    if relay.must_drain:
                        await relay.drain()
                chunk = await deadline.wait(upstream.read_chunk())
            except _UpstreamTimeout:
                what = "the next chunk" if relay.last_at else "the first token"
                error = (504, f"upstream {route.endpoint} timed out waiting for {what}")
                break
            except UpstreamReadError as exc:
                error = (502, f"upstream {route.endpoint} connection lost mid-stream: {exc}")
                break
            if not chunk:
                if not relay.sse.is_done:
                    error = (502, f"upstream {route.endpoint} ended the stream before it finished")
                break
            relay.feed(chunk)
            if relay.must_drain:
                await relay.drain()
        if not relay.is_counted:
            self._count_tokens(route, relay.sse.usage, rec)
        resp = relay.resp
        if error is not None and resp is None:
            reason = "timeout" if error[0] == 504 else "read_error"
            raise _AttemptFailed(ApiError(*error), reason)
        try:
            if resp is None:
                resp = request.start_stream(200, relay.reply_headers)
            if error is not None:
                log.warning("request %s: %s", request_id, error[1])
                await resp.write(sse_error_event(*error))
            await resp.end()
        except ConnectionError:
            raise _ClientGone from None
        return error is None

    async def _error_detail(self, upstream: UpstreamResponse, deadline: float | None) -> str:
        try:
            data = await _until(
                _earliest(deadline, time.monotonic() + 5.0),
                upstream.read_all(_MAX_UPSTREAM_ERROR_BYTES),
            )
        except (_UpstreamTimeout, UpstreamReadError):
            return "(no body)"
        try:
            obj = msgspec.json.decode(data)
            message = obj["error"]["message"]
            if isinstance(message, str):
                return message
        except (msgspec.DecodeError, KeyError, TypeError):
            pass
        return data[:200].decode(errors="replace") or "(no body)"

    def _count_tokens(
        self, route: Route, usage: Mapping[str, Any] | None, rec: RequestRecord
    ) -> None:
        if not usage:
            return
        rec.set_usage(usage)
        model = route.pool.model
        metrics = self.metrics
        if rec.num_prompt_tokens:
            metrics.count_tokens(model, "prompt", rec.num_prompt_tokens)
        if rec.num_cached_tokens:
            metrics.count_tokens(model, "cached", rec.num_cached_tokens)
        if rec.num_completion_tokens:
            metrics.count_tokens(model, "completion", rec.num_completion_tokens)
        cached = rec.num_cached_tokens
        predicted = route.predicted_cached_tokens
        if predicted is None or cached is None:
            return
        # A drifting KV-event index shows up as these two counters parting ways.
        metrics.predicted_cached_tokens.labels(model).inc(predicted)
        metrics.engine_cached_tokens.labels(model).inc(cached)
        outcome = "exact" if predicted == cached else ("over" if predicted > cached else "under")
        metrics.cache_predictions.labels(model, outcome).inc()


# -- helpers -------------------------------------------------------------------------
_COMPLETION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


class _Reply(NamedTuple):
    """A whole response, written once the request's accounting is done."""

    status: int
    body: bytes
    headers: Mapping[str, str] | None
    content_type: str | None


def _error_reply(
    status: int, message: str, param: str | None, headers: Mapping[str, str] | None
) -> _Reply:
    return _Reply(status, error_body(status, message, param), headers, "application/json")


_NO_HEADERS = Headers()


_REDACTED = "[redacted]"


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, _REDACTED) if secret else text


def _tenant(request: HttpRequest) -> str | None:
    for name in TENANT_HEADERS:
        value = request.headers.get(name)
        if value:
            return value
    return None


def _routing_headers(request: HttpRequest) -> Headers:
    """The request headers routing sees: `traceparent` only (names lower-case)."""
    values = request.headers.getall("traceparent", ())
    if not values:
        return _NO_HEADERS
    return Headers(tuple(("traceparent", v) for v in values))


def _too_large_message(request: HttpRequest, limit: int) -> str:
    length = request.headers.get("Content-Length")
    if length is not None and length.isdigit():
        return f"request body of {length} bytes is over the limit of {limit} bytes"
    return f"request body is over the limit of {limit} bytes"


def _response_headers(
    upstream: Mapping[str, str], request_id: str, route_header: str | None = None
) -> dict[str, str]:
    out = {k: v for k, v in upstream.items() if k.lower() not in _DROP_RESPONSE_HEADERS}
    out[REQUEST_ID] = request_id
    if route_header is not None:
        out[ROUTE_HEADER] = route_header
    return out


def _route_header(route: Route, num_scores: int = 3) -> str:
    """`x-headway-route`: where the request went and why, one header line:
    `endpoint=URL; pool=MODEL; profile=NAME; scores=URL=0.912,URL=0.5;
    predicted_cached_tokens=N`."""
    decision = route.result.decision
    scores = ",".join(f"{s.endpoint_id}={s.score:.3f}" for s in decision.top_scores[:num_scores])
    parts = [
        f"endpoint={route.endpoint}",
        f"pool={route.pool.model}",
        f"profile={decision.profile}",
        f"scores={scores}",
    ]
    if route.predicted_cached_tokens is not None:
        parts.append(f"predicted_cached_tokens={route.predicted_cached_tokens}")
    return "; ".join(parts)


# Routing plugin types that use nothing read from the prompt (no prefix hashes, no
# token counts: `token-load` and `saturation` weigh in-flight tokens, which count the
# prompt). A pool whose profiles use only these is routed without reading prompts (no
# chat template rendering, no hashing per request); its in-flight tokens are then
# estimated from the body's length.
_PROMPT_BLIND_PLUGINS = frozenset(
    {
        "healthy",
        "serves-model",
        "round-robin",
        "least-request",
        "power-of-two",
        "max-score",
        "weighted-random",
        "session-affinity",
        "lora-affinity",
        "queue-depth",
        "running-requests",
        "kv-usage",
    }
)


def reads_prompts(routing: Mapping[str, Any]) -> bool:
    """Whether a routing config (`PoolConfig.routing_config()`) has a plugin that may
    use what the gateway reads from prompts; True for anything it cannot tell."""
    preset = routing.get("preset")
    profiles = (
        {"preset": PRESETS.get(preset)} if isinstance(preset, str) else routing.get("profiles")
    )
    if not isinstance(profiles, Mapping):
        return True
    for profile in profiles.values():
        if not isinstance(profile, Mapping):
            return True
        filters, scorers = profile.get("filters") or (), profile.get("scorers") or ()
        if not isinstance(filters, list | tuple) or not isinstance(scorers, list | tuple):
            return True
        for plugin in (*filters, *scorers, profile.get("picker") or "max-score"):
            kind = plugin.get("type") if isinstance(plugin, Mapping) else plugin
            if kind not in _PROMPT_BLIND_PLUGINS:
                return True
    return False


def _scrape_targets(config: GatewayConfig) -> dict[str, EngineKind]:
    """Every endpoint to scrape, with its engine kind (the first pool listing it)."""
    targets: dict[str, EngineKind] = {}
    for pool in config.pools:
        for url in pool.endpoints:
            targets.setdefault(url, pool.engine)
    return targets


def _kv_sources(
    config: GatewayConfig,
) -> tuple[dict[str, list[KvEventSource]], list[str], list[str]]:
    """Of the endpoints of pools with KV events: the sources the config gives, the
    endpoints to discover sources for, and those with no way to get any."""
    sources: dict[str, list[KvEventSource]] = {}
    discover: list[str] = []
    without: list[str] = []
    for pool in config.pools:
        if not pool.has_kv_events:
            continue
        for url in pool.endpoints:
            if url in sources or url in discover or url in without:
                continue
            if url in pool.kv_events:
                sources[url] = [pool.kv_events[url]]
            elif pool.engine == EngineKind.VLLM and config.collectors.discover_kv_events:
                discover.append(url)
            else:
                without.append(url)
    return sources, discover, without


class _UsageOnly(msgspec.Struct):
    """A completion body as far as accounting reads it: the decoder skips every other
    field without building it."""

    usage: dict[str, Any] | None = None


_USAGE_DECODER = msgspec.json.Decoder(_UsageOnly)


def _usage_of(body: bytes) -> Mapping[str, Any] | None:
    """The body's `usage` object; None when there is none, it is not an object, or
    the body is not a JSON object."""
    try:
        return _USAGE_DECODER.decode(body).usage
    except msgspec.DecodeError:  # ValidationError included
        return None


def _earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


async def _until(deadline: float | None, awaitable: Any) -> Any:
    """Await `awaitable` until the monotonic `deadline` (None: no deadline)."""
    if deadline is None:
        return await awaitable
    loop = asyncio.get_running_loop()
    # Deadlines are on time.monotonic(); the loop may count from another origin.
    remaining = deadline - time.monotonic()
    try:
        async with asyncio.timeout_at(loop.time() + max(0.0, remaining)):
            return await awaitable
    except TimeoutError:
        raise _UpstreamTimeout from None


def _json(request: HttpRequest, obj: Any, status: int = 200) -> None:
    request.json(status, msgspec.json.encode(obj))
