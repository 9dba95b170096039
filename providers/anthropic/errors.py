"""Anthropic's failures as ``ProviderError``s (https://docs.anthropic.com/en/api/errors).

An error answer is ``{"type": "error", "error": {"type": ..., "message": ...}}`` with its HTTP
status: 400 invalid_request_error, 401 authentication_error, 402 billing_error, 403
permission_error, 404 not_found_error, 413 request_too_large, 429 rate_limit_error (with
``retry-after``), 500 api_error, 504 timeout_error, 529 overloaded_error. The same object may
arrive as a stream's ``error`` event after a 200, so its type decides the status there.

The status and Anthropic's message are kept; ``type`` stays Anthropic's (the chat door's clients
see OpenAI's shape with it, the Messages door's clients see it as Anthropic sent it); ``code``
gets OpenAI's code where one exists (``context_length_exceeded`` for "prompt is too long"),
else Anthropic's type, so OpenAI clients can tell the cases apart. 429 and 5xx (529 included) are
retryable by ``ProviderError``'s own rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import httpx
import orjson

from providers.errors import (
    ContextWindowExceededError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnreachableError,
)

STATUS_OF_TYPE: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_OPENAI_CODES = {"rate_limit_error": "rate_limit_exceeded", "not_found_error": "model_not_found"}


def upstream_error(
    status: int, body: bytes, headers: Mapping[str, str] | None, clean: Callable[[str], str]
) -> ProviderError:
    """An error answer (status >= 300) as the ``ProviderError`` the router and doors expect."""
    if status < 400:
        # Redirects are not followed: an api_base that redirects is misconfigured.
        return ProviderError(
            502, f"upstream answered HTTP {status} (check api_base)", "api_error", "upstream_redirect"
        )
    return _with_code(ProviderError.from_upstream(status, body, headers, clean))


def stream_error(error_type: str | None, message: str, clean: Callable[[str], str]) -> ProviderError:
    """A stream's ``error`` event (the HTTP status was already 200): its type gives the status."""
    kind = error_type or "api_error"
    status = STATUS_OF_TYPE.get(kind, 500)
    body = orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    return _with_code(ProviderError.from_upstream(status, body, None, clean))


def _with_code(err: ProviderError) -> ProviderError:
    if isinstance(err, ContextWindowExceededError):
        code = "context_length_exceeded"
    else:
        code = err.code or _OPENAI_CODES.get(err.type, err.type)
    return type(err)(err.status_code, err.message, err.type, code, err.param, err.retry_after)


def malformed(message: str) -> ProviderError:
    return ProviderError(502, message, "api_error", "upstream_malformed_response")


def transport_error(
    exc: httpx.HTTPError, timeout_message: str, broke: str = "upstream unreachable"
) -> ProviderError:
    """An httpx failure as the ``ProviderError`` the router understands (never an unexpected 500)."""
    if isinstance(exc, httpx.TimeoutException):
        return ProviderTimeoutError(timeout_message)
    if isinstance(exc, httpx.DecodingError):
        return malformed("upstream sent a body that could not be decoded (Content-Encoding)")
    if isinstance(exc, httpx.TransportError):
        return ProviderUnreachableError(f"{broke}: {type(exc).__name__}")
    return ProviderError(502, f"upstream call failed: {type(exc).__name__}", "api_error", "upstream_error")
