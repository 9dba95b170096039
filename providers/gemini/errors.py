"""Google's failures (Gemini API and Vertex AI) as ``ProviderError``s.

Reference: https://ai.google.dev/gemini-api/docs/troubleshooting and
https://cloud.google.com/apis/design/errors. An error answer is
``{"error": {"code": 429, "message": "...", "status": "RESOURCE_EXHAUSTED", "details": [...]}}``
(Vertex sometimes wraps it in a one-element array). The status and Google's message are kept;
``type`` and ``code`` are OpenAI's, so an OpenAI SDK raises the exception it would for OpenAI:

- 400 ``INVALID_ARGUMENT`` / ``FAILED_PRECONDITION``: a bad request, except "API key not valid"
  (Google answers a wrong key with a 400 whose detail says ``API_KEY_INVALID``), which is a 401;
  and a prompt over the context window ("The input token count (N) exceeds the maximum number of
  tokens allowed (M)"), a ``ContextWindowExceededError`` with code ``context_length_exceeded``.
- 401 ``UNAUTHENTICATED``, 403 ``PERMISSION_DENIED`` (a missing key too), 404 ``NOT_FOUND``.
- 429 ``RESOURCE_EXHAUSTED``: retryable; the wait comes from the ``google.rpc.RetryInfo`` detail
  (``retryDelay: "28s"``) when present, else a ``Retry-After`` header.
- 500 ``INTERNAL``, 503 ``UNAVAILABLE`` (overloaded), 504 ``DEADLINE_EXCEEDED``: retryable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import orjson

from providers.errors import (
    ContentPolicyError,
    ContextWindowExceededError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnreachableError,
)

_MAX_MESSAGE_CHARS = 2000
_SCRUB_WINDOW = 1 << 16

# status -> (status sent on, OpenAI error type, OpenAI code)
_BY_STATUS: dict[int, tuple[int, str, str | None]] = {
    400: (400, "invalid_request_error", None),
    401: (401, "authentication_error", "invalid_api_key"),
    403: (403, "permission_error", "permission_denied"),
    404: (404, "not_found_error", "model_not_found"),
    409: (409, "invalid_request_error", "conflict"),
    429: (429, "rate_limit_error", "rate_limit_exceeded"),
    499: (499, "api_error", "request_cancelled"),
    500: (500, "api_error", None),
    501: (501, "api_error", "not_implemented"),
    503: (503, "service_unavailable", "overloaded"),
    504: (504, "timeout", "timeout"),
}
_CONTEXT_WINDOW = re.compile(
    r"input token count.*exceeds|exceeds the maximum number of tokens|token count exceeds|"
    r"context window|too many tokens|context length",
    re.IGNORECASE | re.DOTALL,
)
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)s")


def upstream_error(
    status: int, body: bytes, headers: Mapping[str, str] | None, clean: Callable[[str], str]
) -> ProviderError:
    """An error answer (status >= 300) as the ``ProviderError`` the router and doors expect."""
    if status < 400:
        # Redirects are not followed: an api_base that redirects is misconfigured.
        return ProviderError(
            502, f"upstream answered HTTP {status} (check api_base)", "api_error", "upstream_redirect"
        )
    err = _error_object(body)
    message = err.get("message") if isinstance(err.get("message"), str) else None
    if message is None:
        text = body[:500].decode("utf-8", "replace").strip() if body else ""
        message = text or f"upstream returned HTTP {status}"
    message = clean(message[:_SCRUB_WINDOW])[:_MAX_MESSAGE_CHARS]
    google_status = err.get("status") if isinstance(err.get("status"), str) else None
    sent, kind, code = _BY_STATUS.get(status, (status, "api_error", None))
    klass: type[ProviderError] = ProviderError
    if status == 400 and _invalid_key(err, message):
        sent, kind, code = _BY_STATUS[401]
    elif status == 400 and _CONTEXT_WINDOW.search(message):
        klass, code = ContextWindowExceededError, "context_length_exceeded"
    elif code is None and google_status is not None:
        code = google_status.lower()
    return klass(sent, message, kind, code, None, _retry_after(err, headers))


def prompt_blocked(reason: str, message: str | None) -> ProviderError:
    """A prompt Google refused to answer (``promptFeedback.blockReason``): a content-policy error."""
    text = f"Gemini blocked the prompt ({reason})"
    if message:
        text += f": {message}"
    return ContentPolicyError(400, text, "invalid_request_error", "content_policy_violation")


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


def _error_object(body: bytes) -> Mapping[str, Any]:
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return {}
    if isinstance(parsed, list) and parsed:  # Vertex's streaming errors come as [{"error": ...}]
        parsed = parsed[0]
    err = parsed.get("error") if isinstance(parsed, Mapping) else None
    return err if isinstance(err, Mapping) else {}


def _details(err: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    details = err.get("details")
    return [d for d in details if isinstance(d, Mapping)] if isinstance(details, list) else []


def _invalid_key(err: Mapping[str, Any], message: str) -> bool:
    if any(d.get("reason") == "API_KEY_INVALID" for d in _details(err)):
        return True
    return "api key not valid" in message.lower()


def _retry_after(err: Mapping[str, Any], headers: Mapping[str, str] | None) -> float | None:
    for detail in _details(err):
        if detail.get("@type") == _RETRY_INFO and isinstance(detail.get("retryDelay"), str):
            match = _DURATION.fullmatch(detail["retryDelay"].strip())
            if match:
                return float(match.group(1))
    value = headers.get("retry-after") if headers else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
