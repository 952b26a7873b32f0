"""The admin routes, served on their own port (`admin: {host, port}`,
`--admin-port`), never on the public one:

    GET  /admin/endpoints                      every endpoint's state and in-flight load
    POST /admin/endpoints/{url}/cordon         no new requests; in-flight ones finish
    POST /admin/endpoints/{url}/uncordon
    POST /admin/endpoints/{url}/drain?timeout_s=S   cordon, answer once nothing is in flight
    POST /admin/reload                         re-read the config file (as SIGHUP does)

`{url}` is the endpoint's base URL, percent-encoded (`http%3A%2F%2F10.0.0.7%3A8000`).
Errors are OpenAI-shaped JSON like the public routes'.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import msgspec
from aiohttp import web

from headway.gateway.config import GatewayConfigError
from headway.gateway.server import Gateway
from headway.openai_errors import error_response

log = logging.getLogger(__name__)


class ReloadError(Exception):
    """A reload was refused; the running config keeps serving."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


async def reload_gateway(gateway: Gateway) -> list[str]:
    """Re-read the config (`gateway.config_loader`) and swap it in; returns the
    sections kept at their running values. Raises `ReloadError` for a missing or
    invalid file (the message names the field)."""
    if gateway.config_loader is None:
        raise ReloadError(409, "no config file to reload: the gateway was not started with --config")  # fmt: skip
    try:
        return await gateway.reload(gateway.config_loader())
    except GatewayConfigError as exc:
        raise ReloadError(400, f"config rejected, the running one keeps serving: {exc}", exc.path or None) from None  # fmt: skip
    except (OSError, ValueError) as exc:  # e.g. the tokenizer or routing refused it
        log.exception("reload failed")
        raise ReloadError(500, f"reload failed, the running config keeps serving: {exc}") from None


def make_admin_app(gateway: Gateway) -> web.Application:
    """The admin application for `gateway`."""

    def known(request: web.Request) -> str:
        url = request.match_info["endpoint"].rstrip("/")
        if url not in gateway.endpoint_urls():
            raise web.HTTPNotFound(reason=f"unknown endpoint {url!r}")
        return url

    async def endpoints(request: web.Request) -> web.Response:
        return _json({"endpoints": gateway.endpoint_states()})

    async def cordon(request: web.Request) -> web.Response:
        url = known(request)
        gateway.cordon(url)
        log.warning("admin: cordoned %s", url)
        return _json(_state(gateway, url))

    async def uncordon(request: web.Request) -> web.Response:
        url = known(request)
        gateway.uncordon(url)
        log.warning("admin: uncordoned %s", url)
        return _json(_state(gateway, url))

    async def drain(request: web.Request) -> web.Response:
        url = known(request)
        raw = request.query.get("timeout_s")
        timeout_s = gateway.config.timeouts.drain_s
        if raw is not None:
            try:
                timeout_s = float(raw)
            except ValueError:
                timeout_s = math.nan
            if not math.isfinite(timeout_s) or timeout_s < 0:
                return error_response(400, f"timeout_s: must be a number >= 0, got {raw!r}", "timeout_s")  # fmt: skip
        log.warning("admin: draining %s (up to %g s)", url, timeout_s)
        is_drained = await gateway.drain_endpoint(url, timeout_s)
        body = {**_state(gateway, url), "is_drained": is_drained}
        if not is_drained:
            n = body["num_in_flight"]
            message = f"{url}: {n} request(s) still in flight after {timeout_s:g} s"
            body["error"] = {
                "message": message + " (still cordoned)",
                "type": "GatewayTimeoutError",
                "param": "timeout_s",
                "code": 504,
            }
            return _json(body, status=504)
        return _json(body)

    async def reload(request: web.Request) -> web.Response:
        try:
            kept = await reload_gateway(gateway)
        except ReloadError as exc:
            log.error("admin: reload rejected: %s", exc.message)
            return error_response(exc.status, exc.message, exc.param)
        return _json(
            {
                "reloaded": True,
                "pools": [p.model for p in gateway.config.pools],
                "endpoints": gateway.endpoint_urls(),
                "kept_running": kept,
            }
        )

    app = web.Application()
    app.router.add_get("/admin/endpoints", endpoints)
    app.router.add_post("/admin/endpoints/{endpoint}/cordon", cordon)
    app.router.add_post("/admin/endpoints/{endpoint}/uncordon", uncordon)
    app.router.add_post("/admin/endpoints/{endpoint}/drain", drain)
    app.router.add_post("/admin/reload", reload)
    app.middlewares.append(_errors)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason)


def _state(gateway: Gateway, url: str) -> dict[str, Any]:
    return next(s for s in gateway.endpoint_states() if s["url"] == url)


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=msgspec.json.encode(obj), content_type="application/json"
    )
