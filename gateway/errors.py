"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` with the right status.

Every failure the gateway returns goes through here: our own ``GatewayError``, upstream
``ProviderError``s (status and message kept, configured secrets scrubbed), FastAPI/Starlette
validation and routing errors (400 and 404 instead of 422 and HTML), and unexpected exceptions
(500, logged, no traceback).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import orjson

from providers.errors import ProviderError
from providers.redaction import scrub

if TYPE_CHECKING:
    from fastapi import FastAPI
    from starlette.requests import Request
    from starlette.responses import Response

log = logging.getLogger("switchyard.errors")

# OpenAI's error `type` for each status we produce.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    502: "api_connection_error",
    503: "service_unavailable",
    504: "timeout",
}


class GatewayError(Exception):
    """An error the gateway answers with, as the client will see it."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES.get(status, "api_error")
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.code, self.param)

    def __repr__(self) -> str:
        return f"GatewayError({self.status}, {self.message!r}, code={self.code!r})"


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_request") -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", code, param)


def as_gateway_error(exc: BaseException, log_unexpected: bool = True) -> GatewayError:
    """Any exception as the ``GatewayError`` the client should see (unexpected ones are logged)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, ProviderError):
        headers = {}
        if exc.retry_after is not None:
            headers["retry-after"] = str(max(0, round(exc.retry_after)))
        # Upstream text leaves the gateway here (plain errors, stream error events, the spend row's
        # error code): scrub every configured secret, not only those of the call that failed.
        code = None if exc.code is None else scrub(exc.code)
        param = None if exc.param is None else scrub(exc.param)
        # An upstream's status is kept when it is an error status; anything else it might send
        # (a 3xx, a 999) is not an answer to pass on: 502.
        status = exc.status_code if 400 <= exc.status_code <= 599 else 502
        return GatewayError(status, scrub(exc.message), scrub(exc.type), code, param, headers)
    if log_unexpected:
        log.error("unexpected error", exc_info=exc)
    return GatewayError(500, "internal server error", "internal_server_error", "internal_error")


def install_error_handlers(app: FastAPI) -> None:
    """Make FastAPI's own errors OpenAI-shaped (400 not 422, JSON 404/405, 500 without traceback)."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.responses import Response

    def respond(err: GatewayError) -> Response:
        return Response(err.body(), err.status, headers=err.headers, media_type="application/json")

    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        return respond(as_gateway_error(exc))

    async def on_validation(request: Request, exc: Exception) -> Response:
        errors: list[Any] = getattr(exc, "errors", list)()
        first = errors[0] if errors else {}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return respond(bad_request(str(first.get("msg", "invalid request")), param))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            message = f"no route for {request.method} {request.url.path}"
            err = GatewayError(404, message, code="route_not_found")
        elif exc.status_code == 405:
            err = GatewayError(405, f"method {request.method} not allowed", "invalid_request_error")
        else:
            err = GatewayError(exc.status_code, str(exc.detail))
        headers = dict(exc.headers or {})
        headers.update(err.headers)
        err.headers = headers
        return respond(err)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        return respond(as_gateway_error(exc))

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(ProviderError, on_gateway_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
