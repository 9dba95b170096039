"""Cohere's failures as ``ProviderError``s (https://docs.cohere.com/reference/errors).

An error answer is ``{"message": ...}`` (sometimes with an ``id``) and its HTTP status: 400 bad
request, 401 unauthorized, 402 payment required, 403 forbidden, 404 not found, 422 unprocessable,
429 too many requests, 498 invalid token, 499 request cancelled, 500 internal, 501 not
implemented, 503 service unavailable, 504 gateway timeout. The status and Cohere's message are
kept; ``type`` and ``code`` are OpenAI's, so an OpenAI SDK raises the exception it would for
OpenAI. 498 ("invalid token") is an authentication failure: 401 here, as OpenAI's SDKs expect.
A prompt over the context window is a 400 saying "too many tokens", which
``ProviderError.from_upstream`` already recognises; its code becomes ``context_length_exceeded``.
429 and 5xx are retryable by ``ProviderError``'s own rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import httpx

from providers.errors import (
    ContextWindowExceededError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnreachableError,
)

# status -> (status sent on, OpenAI error type, OpenAI code)
_BY_STATUS: dict[int, tuple[int, str, str | None]] = {
    400: (400, "invalid_request_error", None),
    401: (401, "authentication_error", "invalid_api_key"),
    402: (402, "insufficient_quota", "insufficient_quota"),
    403: (403, "permission_error", None),
    404: (404, "not_found_error", "model_not_found"),
    422: (422, "invalid_request_error", None),
    429: (429, "rate_limit_error", "rate_limit_exceeded"),
    498: (401, "authentication_error", "invalid_api_key"),
    499: (499, "api_error", "request_cancelled"),
    500: (500, "api_error", None),
    501: (501, "api_error", "not_implemented"),
    503: (503, "service_unavailable", "overloaded"),
    504: (504, "timeout", "timeout"),
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
    base = ProviderError.from_upstream(status, body, headers, clean)
    sent, kind, code = _BY_STATUS.get(status, (status, "api_error", None))
    klass = type(base)
    if isinstance(base, ContextWindowExceededError):
        code = "context_length_exceeded"
    return klass(sent, base.message, kind, code, None, base.retry_after)


def stream_error(message: str, clean: Callable[[str], str]) -> ProviderError:
    """A ``message-end`` event carrying an ``error`` after a 200: the generation failed upstream."""
    return ProviderError(500, clean(message)[:2000], "api_error", "upstream_stream_error")


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
