"""Bedrock's errors as the ``ProviderError`` a caller (and the router) expects.

Reference: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html#API_runtime_Converse_Errors
and https://docs.aws.amazon.com/bedrock/latest/APIReference/CommonErrors.html. An HTTP error is
``{"message": ...}`` with its exception's name in the ``x-amzn-ErrorType`` header
(``ThrottlingException:http://internal.amazon.com/...``); inside a ConverseStream the same
exceptions arrive as event-stream messages of type ``exception`` (``:exception-type``
``throttlingException``, payload ``{"message": ...}``).

Names are mapped, not statuses alone: AWS answers 403 both for a bad signature (an
authentication failure: 401 here, as OpenAI's SDKs expect) and for a missing permission; and it
says "context window exceeded" only in the text of a ValidationException.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import httpx
import orjson

from providers.errors import (
    ContextWindowExceededError,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnreachableError,
)

# Exception name -> (status, OpenAI error type, code).
_BY_NAME: dict[str, tuple[int, str, str | None]] = {
    "ValidationException": (400, "invalid_request_error", None),
    "AccessDeniedException": (403, "permission_error", "access_denied"),
    "ResourceNotFoundException": (404, "not_found_error", "model_not_found"),
    "ThrottlingException": (429, "rate_limit_error", "rate_limit_exceeded"),
    "ServiceQuotaExceededException": (429, "rate_limit_error", "quota_exceeded"),
    "ModelNotReadyException": (429, "rate_limit_error", "model_not_ready"),
    "ModelTimeoutException": (408, "timeout", "timeout"),
    "ServiceUnavailableException": (503, "service_unavailable", "overloaded"),
    "InternalServerException": (500, "api_error", None),
    # 424 at AWS: the model failed, not the request; another try (or deployment) may well work.
    "ModelErrorException": (502, "api_error", "model_error"),
    "ModelStreamErrorException": (502, "api_error", "model_stream_error"),
}
_BY_STATUS = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}
_AUTHENTICATION = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "MissingAuthenticationTokenException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
    }
)
_CONTEXT_WINDOW_MARKERS = (
    "too many input tokens",
    "input is too long",
    "prompt is too long",
    "too many tokens",
    "context window",
    "context length",
    "maximum context",
)


def from_http(
    status: int, body: bytes, headers: Mapping[str, str], clean: Callable[[str], str]
) -> ProviderError:
    """The error of a failed HTTP response (message scrubbed with ``clean``, retry-after kept)."""
    parsed = _json_object(body)
    name = _name(headers.get("x-amzn-errortype") or _text(parsed, "__type"))
    # Bedrock says "message"; some AWS front ends (the auth layer) say "Message".
    message = _text(parsed, "message") or _text(parsed, "Message")
    base = ProviderError.from_upstream(
        status, orjson.dumps({"message": message}) if message else body, headers, clean
    )
    return _mapped(name, status, base.message, base.retry_after)


def from_stream_exception(exception_type: str, message: str, clean: Callable[[str], str]) -> ProviderError:
    """An ``exception`` (or ``error``) message inside a ConverseStream."""
    name = _name(exception_type)
    name = name[:1].upper() + name[1:]  # the stream spells them throttlingException
    status = _BY_NAME.get(name, (502, "", None))[0]
    text = ProviderError.from_upstream(status, orjson.dumps({"message": message}), None, clean).message
    return _mapped(name, status, text, None)


def stream_payload_message(payload: bytes) -> str:
    """The ``message`` of an exception event's payload (or the payload's text)."""
    parsed = _json_object(payload)
    if parsed is None:
        return payload[:500].decode("utf-8", "replace") or "upstream stream error"
    return _text(parsed, "message") or _text(parsed, "Message") or "upstream stream error"


def _mapped(name: str, status: int, message: str, retry_after: float | None) -> ProviderError:
    if name in _AUTHENTICATION:
        return ProviderError(401, message, "authentication_error", "invalid_api_key", retry_after=retry_after)
    # An exception this table does not know: the HTTP status decides, as for any upstream.
    status, type_, code = _BY_NAME.get(name) or (status, _BY_STATUS.get(status, "api_error"), None)
    if status == 400 and any(m in message.lower() for m in _CONTEXT_WINDOW_MARKERS):
        return ContextWindowExceededError(400, message, type_, "context_length_exceeded")
    if status == 408:
        return ProviderTimeoutError(message)
    if status < 500 and type_ == "api_error":
        type_ = "invalid_request_error"
    return ProviderError(status, message, type_, code, retry_after=retry_after)


def _name(raw: str | None) -> str:
    """``ThrottlingException:http://...`` or ``com.amazon.coral.service#ThrottlingException`` ->
    ``ThrottlingException``."""
    if not raw:
        return ""
    return raw.split(":", 1)[0].rsplit("#", 1)[-1].strip()


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _text(obj: dict[str, Any] | None, key: str) -> str | None:
    value = obj.get(key) if obj is not None else None
    return value if isinstance(value, str) and value else None


def malformed(message: str) -> ProviderError:
    return ProviderError(502, message, "api_error", "upstream_malformed_response")


def transport_error(
    exc: httpx.HTTPError, timeout_message: str, broke: str = "upstream unreachable"
) -> ProviderError:
    """An httpx failure as the ``ProviderError`` the router understands (never an unexpected 500)."""
    if isinstance(exc, httpx.TimeoutException):
        return ProviderTimeoutError(timeout_message)
    if isinstance(exc, httpx.TransportError):
        return ProviderUnreachableError(f"{broke}: {type(exc).__name__}")
    return ProviderError(502, f"upstream call failed: {type(exc).__name__}", "api_error", "upstream_error")
