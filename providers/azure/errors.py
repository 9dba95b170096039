"""Azure's error answers as ``ProviderError``s.

References: https://learn.microsoft.com/en-us/azure/ai-services/openai/reference (errors are
``{"error": {"code", "message", "param", "type"}}``; 401 for a wrong key, 404 ``DeploymentNotFound``
or "Resource not found" for an unknown deployment or ``api-version``, 429 with ``retry-after``) and
https://learn.microsoft.com/en-us/azure/ai-services/openai/concepts/content-filter (a prompt the
content filter blocks is a 400 with ``code: "content_filter"`` and
``innererror.content_filter_result`` naming the categories). Azure's message and status are kept;
a content-filter refusal is a ``ContentPolicyError`` (for ``content_policy_fallbacks``) whichever of
the two markers it carries. An answer *completed* under the filter is not an error: it arrives with
``finish_reason: "content_filter"``, kept as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from providers.errors import ContentPolicyError, ProviderError


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
    if isinstance(err, ContentPolicyError) or status != 400 or not _content_filtered(body):
        return err
    return ContentPolicyError(
        err.status_code, err.message, err.type, err.code or "content_filter", err.param, err.retry_after
    )


def _content_filtered(body: bytes) -> bool:
    """Whether an error body is the content filter's (``innererror`` says so even if ``code`` does not)."""
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(err, dict):
        return False
    if err.get("code") == "content_filter":
        return True
    inner = err.get("innererror")
    return isinstance(inner, dict) and (
        "content_filter_result" in inner or inner.get("code") == "ResponsibleAIPolicyViolation"
    )
