"""Admission: per-endpoint in-flight caps and a bounded FIFO queue per pool.

A request is admitted when routing finds an endpoint below its cap (`Router.route`
leaves full ones out); it then holds a `Slot` (the endpoint's in-flight lease) until
its handler ends. When every endpoint of the serving pool is at its cap the request
waits in that pool's queue, at most `admission.max_queue` of them and each at most
`admission.max_wait_s`; beyond either it is rejected (429 with `Retry-After`).

Invariants:
* FIFO without barging: while a pool's queue is not empty a new arrival queues
  behind it, and a finishing request hands its slot straight to the head of the
  queue (routed and leased synchronously in `Slot.release`, so no arrival can take
  it in between).
* Nothing leaks: a waiter that leaves (client gone = handler cancelled, or wait
  timeout) is out of the queue at once; a slot handed to a waiter that was cancelled
  before it ran is released again (and handed on).
* Queues are bounded: `max_queue` entries per pool, never more.
* A reload (`handover`) moves every waiter to the new admission's queue of the same
  pool, in order (a pool that is gone fails its waiters with `NoEndpoint`); slots
  granted by the old admission, when released, also serve the new queues.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from dataclasses import dataclass, field

from headway.gateway.config import GatewayConfig, PoolConfig
from headway.gateway.metrics import GatewayMetrics
from headway.gateway.routing import Full, Route, Router
from headway.gateway.tracker import InFlightTracker, Lease
from headway.routing import RequestContext

log = logging.getLogger(__name__)


class Rejected(Exception):
    """No slot: the queue is full (`queue_full`) or the wait ran out (`wait_timeout`)."""

    def __init__(self, pool: PoolConfig, reason: str) -> None:
        self.pool = pool
        self.reason = reason
        self.retry_after_s = pool.admission.retry_after_s
        what = (
            f"{len(pool.endpoints)} endpoint(s) at their cap of "
            f"{pool.max_in_flight_per_endpoint} in-flight requests"
        )
        if reason == "queue_full":
            detail = f"the admission queue of {pool.admission.max_queue} is full"
        else:
            detail = f"no slot freed within {pool.admission.max_wait_s:g} s"
        super().__init__(f"model `{pool.model}` is overloaded ({what}; {detail}); retry later")


class NoEndpoint(Exception):
    """Routing found no endpoint at all (not merely busy ones)."""


@dataclass(slots=True)
class Slot:
    """An admitted request's place on an endpoint; `release` exactly once, in `finally`."""

    route: Route
    _lease: Lease
    _admission: Admission = field(repr=False)

    @property
    def is_released(self) -> bool:
        return self._lease.is_released

    def release(self) -> None:
        if not self._lease.is_released:
            self._lease.release()
            self._admission._released(self.route.endpoint)


@dataclass
class _Waiter:
    pool: PoolConfig  # the pool the request asked for (routing starts there)
    ctx: RequestContext
    num_tokens: int
    future: asyncio.Future[Slot]
    queue_model: str = ""  # the pool whose queue holds it (moves on a reload)
    queue: collections.deque[_Waiter] | None = None


class Admission:
    def __init__(
        self,
        config: GatewayConfig,
        router: Router,
        tracker: InFlightTracker,
        metrics: GatewayMetrics,
    ) -> None:
        self._router = router
        self._tracker = tracker
        self._metrics = metrics
        self._queues: dict[str, collections.deque[_Waiter]] = {
            p.model: collections.deque() for p in config.pools
        }
        self._pools = {p.model: p for p in config.pools}
        # endpoint -> the pools (queues) a freed slot on it may serve
        self._pools_of: dict[str, list[str]] = {}
        for p in config.pools:
            for url in p.endpoints:
                self._pools_of.setdefault(url, []).append(p.model)
        for p in config.pools:
            metrics.queued.labels(p.model).set(0)
        # Slots held = the tracker's leases, read when scraped (no gauge update per
        # request; every admission of a gateway shares its one tracker).
        metrics.in_flight.set_function(lambda: tracker.num_in_flight)
        self._successor: Admission | None = None

    def handover(self, new: Admission) -> None:
        """Move the queued requests to `new` (a reload) and have slots released here
        serve `new`'s queues from now on."""
        self._successor = new
        for model, queue in self._queues.items():
            target = new._queues.get(model)
            while queue:
                waiter = queue.popleft()
                if waiter.future.done():
                    continue
                pool = new._pools.get(waiter.pool.model)
                if target is None or pool is None:
                    waiter.future.set_exception(NoEndpoint())
                    continue
                waiter.pool = pool
                waiter.queue, waiter.queue_model = target, model
                target.append(waiter)
            # Both admissions share the gauge: it now counts the new queue.
            self._metrics.queued.labels(model).set(len(target) if target is not None else 0)
        new.dispatch_all()

    def dispatch_all(self) -> None:
        """Serve every queue's head while slots are free (after an uncordon or reload)."""
        for model in self._queues:
            self._dispatch(model)

    def num_queued(self, model: str | None = None) -> int:
        if model is not None:
            return len(self._queues[model])
        return sum(len(q) for q in self._queues.values())

    async def admit(self, pool: PoolConfig, ctx: RequestContext, num_tokens: int) -> Slot:
        """A slot for the request, waiting in the queue if needed.

        Raises `Rejected` (429) or `NoEndpoint` (503); cancellation while queued
        leaves the queue at once."""
        if pool.endpoints and self._queues[pool.model]:
            # Others wait for this pool: queue behind them, never barge.
            return await self._wait(pool, pool, ctx, num_tokens)
        outcome = self._router.route(pool, ctx)
        if outcome is None:
            raise NoEndpoint
        if isinstance(outcome, Full):
            return await self._wait(outcome.pool, pool, ctx, num_tokens)
        if not self._queues[outcome.pool.model]:
            return self._grant(outcome, num_tokens)
        # Routed (via a fallback) to a pool whose queue is not empty: queue there too.
        return await self._wait(outcome.pool, pool, ctx, num_tokens)

    def admit_now(
        self, pool: PoolConfig, ctx: RequestContext, num_tokens: int, exclude: frozenset[str]
    ) -> Slot | None:
        """A retry's slot on an endpoint not in `exclude`, only if one is free now
        (a retry never queues: None when every other endpoint is busy or out). A
        retry does not wait behind the queue: it is an admitted request moving on."""
        outcome = self._router.route(pool, ctx, exclude)
        if outcome is None or isinstance(outcome, Full):
            return None
        return self._grant(outcome, num_tokens)

    async def _wait(
        self, queue_pool: PoolConfig, pool: PoolConfig, ctx: RequestContext, num_tokens: int
    ) -> Slot:
        queue = self._queues[queue_pool.model]
        limits = queue_pool.admission
        if len(queue) >= limits.max_queue:
            self._metrics.rejected.labels(queue_pool.model, "queue_full").inc()
            raise Rejected(queue_pool, "queue_full")
        waiter = _Waiter(
            pool,
            ctx,
            num_tokens,
            asyncio.get_running_loop().create_future(),
            queue_pool.model,
            queue,
        )
        queue.append(waiter)
        self._metrics.queued.labels(queue_pool.model).inc()
        self._dispatch(queue_pool.model)  # serves the head first, if a slot is free
        try:
            async with asyncio.timeout(limits.max_wait_s):
                return await waiter.future
        except TimeoutError:
            slot = _result(waiter.future)
            if slot is not None:  # granted just as the wait ran out: take it
                return slot
            self._metrics.rejected.labels(queue_pool.model, "wait_timeout").inc()
            raise Rejected(queue_pool, "wait_timeout") from None
        except BaseException:  # cancelled: the client went away
            slot = _result(waiter.future)
            if slot is not None:  # granted, but the request is gone: hand it on
                slot.release()
            raise
        finally:
            if not waiter.future.done():
                waiter.future.cancel()
            try:
                if waiter.queue is not None:  # moved by a reload: leave that queue
                    waiter.queue.remove(waiter)
            except ValueError:
                pass  # already popped by the dispatcher
            else:
                self._metrics.queued.labels(waiter.queue_model).dec()

    def _grant(self, route: Route, num_tokens: int) -> Slot:
        lease = self._tracker.acquire(route.endpoint, route.charged_tokens(num_tokens))
        return Slot(route, lease, self)

    def _released(self, endpoint: str) -> None:
        self._freed(endpoint)

    def _freed(self, endpoint: str) -> None:
        for model in self._pools_of.get(endpoint, ()):
            self._dispatch(model)
        if self._successor is not None:
            self._successor._freed(endpoint)

    def _dispatch(self, model: str) -> None:
        """Hand free slots to the head of `model`'s queue, in order, while any."""
        queue = self._queues[model]
        while queue:
            head = queue[0]
            if head.future.done():  # cancelled; its handler removes it soon
                queue.popleft()
                self._metrics.queued.labels(model).dec()
                continue
            try:
                outcome = self._router.route(head.pool, head.ctx)
            except Exception as exc:  # never let one waiter's error stall the queue
                log.exception("routing a queued request failed")
                queue.popleft()
                self._metrics.queued.labels(model).dec()
                head.future.set_exception(exc)
                continue
            if isinstance(outcome, Full):
                return
            queue.popleft()
            self._metrics.queued.labels(model).dec()
            if outcome is None:
                head.future.set_exception(NoEndpoint())
            else:
                head.future.set_result(self._grant(outcome, head.num_tokens))


def _result(future: asyncio.Future[Slot]) -> Slot | None:
    if future.done() and not future.cancelled() and future.exception() is None:
        return future.result()
    return None
