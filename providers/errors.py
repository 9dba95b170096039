"""The errors an adapter raises: every upstream failure is a ``ProviderError``.

Its fields become the client's error (status and message kept, secrets scrubbed by the caller);
its flags tell the router what to do next: retry (``retryable``: 429, 5xx, timeouts, connection
errors), fall back to a bigger context window, or fall back on a content-policy refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

# How much of an upstream's error text is passed on. Scrubbing looks at a much larger window
# first, so cutting the scrubbed text cannot leave the start of a secret at its end.
_MAX_MESSAGE_CHARS = 2000
_MAX_TEXT_BODY_CHARS = 500
_MAX_FIELD_CHARS = 200
_SCRUB_WINDOW = 1 << 16

_CONTEXT_WINDOW_MARKERS = (
    "context_length_exceeded",
    "maximum context length",
    "context window",
    "context length",
    "too many tokens",
    "prompt is too long",
    "input is too long",
)
_CONTENT_POLICY_MARKERS = (
    "content_filter",
    "content_policy",
    "content management policy",
    "safety system",
    "flagged",
)


class ProviderError(Exception):
    """An upstream call failed; the fields become the client's OpenAI-shaped error.

    ``retryable`` is true for rate limits (429), upstream 5xx, timeouts and connection errors:
    the router may try the same or another deployment. ``context_window_exceeded`` and
    ``content_policy_violation`` drive ``context_window_fallbacks`` / ``content_policy_fallbacks``.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        type: str = "api_error",
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status_code in (408, 429) or self.status_code >= 500

    @property
    def context_window_exceeded(self) -> bool:
        if self.status_code != 400:
            return False
        text = f"{self.code or ''} {self.message}".lower()
        return any(m in text for m in _CONTEXT_WINDOW_MARKERS)

    @property
    def content_policy_violation(self) -> bool:
        if self.status_code != 400:
            return False
        text = f"{self.code or ''} {self.type} {self.message}".lower()
        return any(m in text for m in _CONTENT_POLICY_MARKERS)

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI error object: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status_code}, {self.message!r}, code={self.code!r})"

    @classmethod
    def from_upstream(
        cls,
        status: int,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        clean: Callable[[str], str] | None = None,
    ) -> ProviderError:
        """Build the error from an upstream error response, keeping its status and message.

        ``clean`` scrubs each text field (an upstream may echo the credentials it was sent); it
        runs before the fields are cut to length, so a cut never leaves part of a secret behind.
        """
        message, type_, code, param = f"upstream returned HTTP {status}", "api_error", None, None
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        err = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            type_ = str(err.get("type") or type_)
            code = None if err.get("code") is None else str(err.get("code"))
            param = None if err.get("param") is None else str(err.get("param"))
        elif isinstance(err, str):
            message = err
        elif isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
            message = parsed["message"]
        elif body and parsed is None:
            message = body[:_SCRUB_WINDOW].decode("utf-8", "replace")
        message = _bounded(message, clean, _MAX_MESSAGE_CHARS if parsed is not None else _MAX_TEXT_BODY_CHARS)
        type_ = _bounded(type_, clean, _MAX_FIELD_CHARS)
        code = None if code is None else _bounded(code, clean, _MAX_FIELD_CHARS)
        param = None if param is None else _bounded(param, clean, _MAX_FIELD_CHARS)
        retry_after = _retry_after(headers)
        klass: type[ProviderError] = cls
        probe = ProviderError(status, message, type_, code, param)
        if probe.context_window_exceeded:
            klass = ContextWindowExceededError
        elif probe.content_policy_violation:
            klass = ContentPolicyError
        return klass(status, message, type_, code, param, retry_after)


def _bounded(text: str, clean: Callable[[str], str] | None, limit: int) -> str:
    """``text`` scrubbed, then cut to ``limit`` characters (an upstream's text is not unbounded)."""
    if clean is not None:
        text = clean(text[:_SCRUB_WINDOW])
    return text[:limit]


class ProviderTimeoutError(ProviderError):
    """The upstream did not answer in time (408 by default, 504 for a gateway-level timeout)."""

    def __init__(self, message: str = "upstream request timed out", status_code: int = 408) -> None:
        super().__init__(status_code, message, "timeout", "timeout")

    @property
    def retryable(self) -> bool:
        return True


class ProviderUnreachableError(ProviderError):
    """The upstream could not be connected to (502)."""

    def __init__(self, message: str = "upstream unreachable") -> None:
        super().__init__(502, message, "api_connection_error", "upstream_unreachable")

    @property
    def retryable(self) -> bool:
        return True


class ContextWindowExceededError(ProviderError):
    """The prompt did not fit the upstream model's context window."""

    @property
    def context_window_exceeded(self) -> bool:
        return True


class ContentPolicyError(ProviderError):
    """The upstream refused the request on content-policy grounds."""

    @property
    def content_policy_violation(self) -> bool:
        return True


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    for name in ("retry-after-ms", "retry-after"):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value)
        except ValueError:
            continue
        return seconds / 1000.0 if name == "retry-after-ms" else seconds
    return None
