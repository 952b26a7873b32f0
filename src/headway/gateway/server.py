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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import msgspec
from aiohttp import web

from headway.gateway.admission import Admission, NoEndpoint, Rejected, Slot
from headway.gateway.config import GatewayConfig
from headway.gateway.health import HealthChecker
from headway.gateway.metrics import GatewayMetrics
from headway.gateway.outlier import OutlierDetector, RetryBudget
from headway.gateway.request import CompletionRequest, parse_completion, upstream_body
from headway.gateway.routing import Route, Router
from headway.gateway.sse import SseRelayFilter
from headway.gateway.tracker import InFlightTracker
from headway.gateway.transport import (
    AiohttpTransport,
    Transport,
    UpstreamConnectError,
    UpstreamReadError,
    UpstreamResponse,
)
from headway.openai_errors import ApiError, error_response, sse_error_event
from headway.routing import Headers, RequestContext

log = logging.getLogger(__name__)

REQUEST_ID = "x-request-id"
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

    __slots__ = ("outcome", "started_at")

    def __init__(self, started_at: float) -> None:
        self.outcome = "neutral"
        self.started_at = started_at  # `timeouts.ttft_s` counts from here


class _ClientGone(Exception):
    """The client's connection broke while the gateway was writing to it."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response


class Gateway:
    """The gateway's state: config, router, in-flight tracker, metrics, transport."""

    def __init__(self, config: GatewayConfig, transport: Transport | None = None) -> None:
        self.config = config
        self.tracker = InFlightTracker()
        self.metrics = GatewayMetrics()
        self.outliers = OutlierDetector(config, self.metrics)
        self.health_checker = HealthChecker(config, self.outliers)
        self.retry_budgets = {p.model: RetryBudget(p.retry) for p in config.pools}
        self.router = Router(config, self.tracker, outliers=self.outliers)
        self.admission = Admission(config, self.router, self.tracker, self.metrics)
        self.transport: Transport = transport or AiohttpTransport(
            connect_timeout_s=config.timeouts.connect_s
        )
        self.started_at = int(time.time())
        self._handlers: set[asyncio.Task[Any]] = set()  # completion handlers running

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

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.limits.max_body_bytes)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ready", self.ready)
        app.router.add_get("/metrics", self.metrics_handler)
        app.middlewares.append(_errors_middleware)
        app.on_startup.append(self._start_health_checks)
        app.on_cleanup.append(self._close_transport)
        return app

    async def _start_health_checks(self, app: web.Application) -> None:
        self.health_checker.start()

    async def _close_transport(self, app: web.Application) -> None:
        await self.health_checker.stop()
        await self.transport.close()

    # -- simple endpoints ----------------------------------------------------------
    async def models(self, request: web.Request) -> web.Response:
        data = [
            {"id": name, "object": "model", "created": self.started_at, "owned_by": "headway"}
            for pool in self.config.pools
            for name in pool.names
        ]
        return _json({"object": "list", "data": data})

    async def health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        empty = [p.model for p in self.config.pools if not p.endpoints]
        if empty:
            return _json({"status": "not ready", "pools_without_endpoints": empty}, status=503)
        return _json({"status": "ready"})

    async def metrics_handler(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    # -- completions ---------------------------------------------------------------
    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._completion(request, is_chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._completion(request, is_chat=False)

    async def _completion(self, request: web.Request, *, is_chat: bool) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        arrived_at = time.monotonic()
        total_s = self.config.timeouts.total_s
        total_deadline = arrived_at + total_s if total_s else None
        request_id = request.headers.get(REQUEST_ID) or os.urandom(16).hex()
        reply_headers = {REQUEST_ID: request_id}
        model_label, endpoint_label = "", ""
        status = 500
        slot: Slot | None = None
        try:
            body = await _read_body(request, self.config.limits.max_body_bytes)
            req = parse_completion(body, is_chat=is_chat)
            pool = self.router.pool_for(req.model)
            if pool is None:
                raise ApiError(404, f"The model `{req.model}` does not exist.", "model")
            model_label = pool.model
            ctx = RequestContext(
                request_id=request_id,
                model=pool.model,
                num_prompt_tokens_est=len(body) // 4,
                max_output_tokens=req.max_tokens if (req.max_tokens or 0) >= 0 else None,
                headers=_routing_headers(request),
            )
            num_tokens = len(body) // 4 + max(0, req.max_tokens or 0)
            try:
                slot = await self.admission.admit(pool, ctx, num_tokens)
            except NoEndpoint:
                raise ApiError(503, f"no endpoint available for model `{pool.model}`") from None
            endpoint_label = slot.route.endpoint
            budget = self.retry_budgets[slot.route.pool.model]
            budget.request()
            tried = {slot.route.endpoint}
            while True:
                route = slot.route
                endpoint_label = route.endpoint
                # The first attempt's TTFT counts from arrival (time queued included),
                # a retry's from its own start.
                attempt = _Attempt(arrived_at if len(tried) == 1 else time.monotonic())
                try:
                    resp = await self._proxy(
                        request, req, body, route, request_id, arrived_at, attempt
                    )
                    status = resp.status
                    return resp
                except _AttemptFailed as exc:
                    attempt.outcome = "failure"
                    failed = exc
                finally:
                    self._report(route.endpoint, attempt.outcome)
                retry = None
                if len(tried) < route.pool.retry.max_attempts and (
                    total_deadline is None or time.monotonic() < total_deadline
                ):
                    retry = self.admission.admit_now(route.pool, ctx, num_tokens, frozenset(tried))
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
                slot.release()
                slot = retry
                tried.add(slot.route.endpoint)
        except Rejected as exc:
            status = 429
            headers = {**reply_headers, "Retry-After": str(exc.retry_after_s)}
            return error_response(429, str(exc), headers=headers)
        except ApiError as exc:
            status = exc.status
            return error_response(exc.status, exc.message, exc.param, headers=reply_headers)
        except _ClientGone as exc:
            status = 499  # the client went away mid-stream
            return exc.response
        except asyncio.CancelledError:
            status = 499  # the client went away
            raise
        finally:
            if slot is not None:
                slot.release()  # hands the slot to the head of the queue, if any
            self.metrics.request_done(
                model_label, endpoint_label, status, time.monotonic() - arrived_at
            )

    def _report(self, endpoint: str, outcome: str) -> None:
        if outcome == "success":
            self.outliers.success(endpoint)
        elif outcome == "failure":
            self.outliers.failure(endpoint)
        else:
            self.outliers.neutral(endpoint)

    async def _proxy(
        self,
        request: web.Request,
        req: CompletionRequest,
        body: bytes,
        route: Route,
        request_id: str,
        arrived_at: float,
        attempt: _Attempt,
    ) -> web.StreamResponse:
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
        url = route.endpoint + request.path
        payload = upstream_body(body, req, route.pool.model)
        upstream: UpstreamResponse | None = None
        is_complete = False
        try:
            first_deadline = total_deadline
            if req.is_stream and timeouts.ttft_s:
                first_deadline = _earliest(total_deadline, attempt.started_at + timeouts.ttft_s)
            try:
                upstream = await _until(first_deadline, self.transport.open(url, payload, headers))
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
                detail = await self._error_detail(upstream, total_deadline)
                raise _AttemptFailed(
                    ApiError(
                        502, f"upstream {route.endpoint} answered {upstream.status}: {detail}"
                    ),
                    "upstream_5xx",
                )
            is_sse = upstream.headers.get("Content-Type", "").startswith("text/event-stream")
            if req.is_stream and upstream.status == 200 and is_sse:
                resp, is_complete = await self._relay_stream(
                    request, req, upstream, route, request_id, arrived_at, first_deadline
                )
                attempt.outcome = "success" if is_complete else "failure"
                return resp
            try:
                data = await _until(total_deadline, upstream.read_all(_MAX_UPSTREAM_BODY_BYTES))
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
                self._count_tokens(route.pool.model, _usage_of(data))
            return web.Response(
                status=upstream.status,
                body=data,
                headers=_response_headers(upstream.headers, request_id),
            )
        finally:
            if upstream is not None:
                upstream.finish(is_complete=is_complete)

    async def _relay_stream(
        self,
        request: web.Request,
        req: CompletionRequest,
        upstream: UpstreamResponse,
        route: Route,
        request_id: str,
        arrived_at: float,
        first_deadline: float | None,
    ) -> tuple[web.StreamResponse, bool]:
        """Relay SSE bytes as they come; True with the response when the upstream
        stream ended cleanly. The client's response starts with the first relayed
        bytes: an upstream that fails before them raises `_AttemptFailed` (retryable)."""
        timeouts = self.config.timeouts
        total_deadline = arrived_at + timeouts.total_s if timeouts.total_s else None
        resp = web.StreamResponse(
            status=200, headers=_response_headers(upstream.headers, request_id)
        )
        sse = SseRelayFilter(strip_usage=req.must_strip_usage)
        deadline = first_deadline
        is_first = True
        error: tuple[int, str] | None = None
        while True:
            try:
                chunk = await _until(deadline, upstream.read_chunk())
            except _UpstreamTimeout:
                what = "the first token" if is_first else "the next chunk"
                error = (504, f"upstream {route.endpoint} timed out waiting for {what}")
                break
            except UpstreamReadError as exc:
                error = (502, f"upstream {route.endpoint} connection lost mid-stream: {exc}")
                break
            if not chunk:
                if not sse.is_done:
                    error = (502, f"upstream {route.endpoint} ended the stream before it finished")
                break
            out = sse.feed(chunk)
            if out:
                if not resp.prepared:
                    await self._start_stream(request, resp)
                if is_first:
                    self.metrics.ttft.labels(route.pool.model).observe(
                        time.monotonic() - arrived_at
                    )
                    is_first = False
                try:
                    await resp.write(out)
                except ConnectionError:
                    raise _ClientGone(resp) from None
            if timeouts.idle_s:
                deadline = _earliest(total_deadline, time.monotonic() + timeouts.idle_s)
            else:
                deadline = total_deadline
        self._count_tokens(route.pool.model, sse.usage)
        if error is not None and not resp.prepared:
            reason = "timeout" if error[0] == 504 else "read_error"
            raise _AttemptFailed(ApiError(*error), reason)
        try:
            if not resp.prepared:
                await self._start_stream(request, resp)
            if error is not None:
                log.warning("request %s: %s", request_id, error[1])
                await resp.write(sse_error_event(*error))
            await resp.write_eof()
        except ConnectionError:
            raise _ClientGone(resp) from None
        return resp, error is None

    async def _start_stream(self, request: web.Request, resp: web.StreamResponse) -> None:
        await resp.prepare(request)
        sock = request.transport.get_extra_info("socket") if request.transport else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

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

    def _count_tokens(self, model: str, usage: Mapping[str, Any] | None) -> None:
        if not usage:
            return
        for kind in ("prompt", "completion"):
            value = usage.get(f"{kind}_tokens")
            if isinstance(value, int) and value > 0:
                self.metrics.tokens.labels(model, kind).inc(value)


# -- helpers -------------------------------------------------------------------------
@web.middleware
async def _errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error the client sees is OpenAI-shaped JSON, never a traceback."""
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.param)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal gateway error")


_NO_HEADERS = Headers()


def _routing_headers(request: web.Request) -> Headers:
    """The request headers routing sees: `traceparent` only (names lower-case)."""
    values = request.headers.getall("traceparent", ())
    if not values:
        return _NO_HEADERS
    return Headers(tuple(("traceparent", v) for v in values))


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"request body of {request.content_length} bytes is over the limit of {limit} bytes")  # fmt: skip
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"request body is over the limit of {limit} bytes") from None


def _response_headers(upstream: Mapping[str, str], request_id: str) -> dict[str, str]:
    out = {k: v for k, v in upstream.items() if k.lower() not in _DROP_RESPONSE_HEADERS}
    out[REQUEST_ID] = request_id
    return out


def _usage_of(body: bytes) -> Mapping[str, Any] | None:
    try:
        obj = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    usage = obj.get("usage") if isinstance(obj, dict) else None
    return usage if isinstance(usage, dict) else None


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


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=msgspec.json.encode(obj), content_type="application/json"
    )
