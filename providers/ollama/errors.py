"""Ollama's failures as ``ProviderError``s.

Reference: https://github.com/ollama/ollama/blob/main/docs/api.md (errors are ``{"error": "<text>"}``
with the HTTP status: 400 for a bad request, 404 for a model that is not pulled, 500 when the
runner fails; a stream that already answered 200 reports a failure as one ``{"error": ...}`` line).
Ollama sends only a message, so the OpenAI ``type`` and ``code`` come from the status;
"the input length exceeds the context length" and the like become ``ContextWindowExceededError``
(code ``context_length_exceeded``) by ``ProviderError``'s own markers.
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

_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("not_found_error", "model_not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


def upstream_error(
    status: int, body: bytes, headers: Mapping[str, str] | None, clean: Callable[[str], str]
) -> ProviderError:
    """An error answer (status >= 300) as the ``ProviderError`` the router and doors expect."""
    if status < 400:
        # Redirects are not followed: an api_base that redirects is misconfigured.
        return ProviderError(
            502, f"upstream answered HTTP {status} (check api_base)", "api_error", "upstream_redirect"
        )
    err = ProviderError.from_upstream(status, body, headers, clean)
    type_, code = _TYPES.get(status, ("api_error", None))
    if isinstance(err, ContextWindowExceededError):
        code = "context_length_exceeded"
    return type(err)(err.status_code, err.message, type_, code, err.param, err.retry_after)


def stream_error(message: object, clean: Callable[[str], str]) -> ProviderError:
    """A stream's ``{"error": ...}`` line (the status was already 200)."""
    return upstream_error(500, orjson.dumps({"error": str(message)}), None, clean)


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
