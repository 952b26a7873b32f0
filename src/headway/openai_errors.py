"""OpenAI-style errors, as the simulator and the gateway return them:
``{"error": {"message", "type", "param", "code"}}`` with the HTTP status as `code`,
either as a JSON response or, once a stream has started, as an SSE event."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web

_TYPES = {
    400: "BadRequestError",
    404: "NotFoundError",
    405: "MethodNotAllowed",
    409: "ConflictError",
    413: "RequestEntityTooLarge",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


@dataclass
class ApiError(Exception):
    """An error to return to the client with an HTTP status."""

    status: int
    message: str
    param: str | None = None

    def __str__(self) -> str:
        return self.message


def error_body(status: int, message: str, param: str | None = None) -> bytes:
    return msgspec.json.encode(
        {
            "error": {
                "message": message,
                "type": _TYPES.get(status, "Error"),
                "param": param,
                "code": status,
            }
        }
    )


def error_response(
    status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(status, message, param),
        content_type="application/json",
        headers=headers,
    )


def sse_error_event(status: int, message: str) -> bytes:
    """The event that ends a stream that cannot be finished."""
    return b"data: " + error_body(status, message) + b"\n\n"


def decode_json_object(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or the 400 an OpenAI server answers."""
    if not body:
        raise ApiError(400, "request body is empty; expected a JSON object")
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"malformed JSON in request body: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    return data
