"""Microsoft Entra ID access tokens for Azure: a service principal's client credentials, or a
user's name and password, exchanged for a bearer token and kept until near its expiry.

Reference: https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow
(``POST {authority}/{tenant}/oauth2/v2.0/token``, form body ``client_id``, ``client_secret``,
``scope``, ``grant_type=client_credentials``; answer ``{"token_type": "Bearer", "expires_in",
"access_token"}``; errors ``{"error", "error_description": "AADSTS...", ...}`` with 400 or 401) and
https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth-ropc (``grant_type=password``
with ``username``/``password``; tenant ``organizations`` when none is given).

Params (LiteLLM's names): ``tenant_id``, ``client_id``, ``client_secret`` (else
``AZURE_TENANT_ID``, ``AZURE_CLIENT_ID``, ``AZURE_CLIENT_SECRET``, the variables azure-identity
reads); or ``azure_username`` + ``azure_password`` with ``client_id``. ``azure_scope`` replaces the
scope (default ``https://cognitiveservices.azure.com/.default``). The authority host is
``AZURE_AUTHORITY_HOST`` as azure-identity reads it (a bare host means https; default
https://login.microsoftonline.com); plain http is refused but for loopback hosts (a local fake).

Tokens are cached per credential and refreshed ``REFRESH_MARGIN_S`` before they expire (half
their lifetime for short ones), by one request at a time: callers arriving while a refresh is in
flight keep using the still-valid token, or wait for the refresh when there is none. A refresh
that fails while the old token still holds is logged and retried at most every
``RETRY_REFRESH_S``. The POST goes over the shared httpx pool, so nothing blocks the event loop.
Secrets (client secret, password, tokens) never appear in errors or logs.

Why not azure-identity's ``aio.ClientSecretCredential``: tried (azure-identity 1.27.0). It
refuses any authority that is not https (``normalize_authority`` raises ValueError for
``http://127.0.0.1``), so a loopback fake would need a TLS server and a test CA passed through
``connection_verify``; and its async credentials need aiohttp (azure-core's async transport):
azure-identity, azure-core, msal and aiohttp add about 40 MB and a second HTTP stack and
connection pool beside the gateway's. The grant itself is one form POST, written here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx
import orjson

from providers.errors import ProviderError, ProviderTimeoutError, ProviderUnreachableError
from providers.http import post
from providers.redaction import Scrubber

log = logging.getLogger(__name__)

DEFAULT_AUTHORITY = "https://login.microsoftonline.com"
DEFAULT_SCOPE = "https://cognitiveservices.azure.com/.default"
AUTHORITY_ENV = "AZURE_AUTHORITY_HOST"
TENANT_ENV, CLIENT_ID_ENV, CLIENT_SECRET_ENV = "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"
REFRESH_MARGIN_S = 300.0  # azure-identity's margin: refresh five minutes before expiry
RETRY_REFRESH_S = 10.0
TOKEN_TIMEOUT_S = 30.0
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_FORM = "application/x-www-form-urlencoded"
_MAX_DESCRIPTION_CHARS = 500


@dataclass(frozen=True, slots=True)
class EntraCredential:
    """What one token request sends; hashable, the key of its cached token."""

    authority: str
    tenant: str
    client_id: str
    scope: str
    client_secret: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def form(self) -> dict[str, str]:
        body = {"client_id": self.client_id, "scope": self.scope}
        if self.username is not None and self.password is not None:
            body.update(grant_type="password", username=self.username, password=self.password)
            if self.client_secret:
                body["client_secret"] = self.client_secret  # a confidential client's ROPC
        else:
            body.update(grant_type="client_credentials", client_secret=self.client_secret or "")
        return body

    def scrubber(self) -> Scrubber:
        return Scrubber([self.client_secret, self.password])


def credential(params: Mapping[str, Any]) -> EntraCredential | None:
    """The Entra ID credential a deployment's params (or the environment) name, if any."""
    client_id = _text(params, "client_id") or os.environ.get(CLIENT_ID_ENV)
    if not client_id:
        return None
    tenant = _text(params, "tenant_id") or os.environ.get(TENANT_ENV)
    secret = _text(params, "client_secret") or os.environ.get(CLIENT_SECRET_ENV)
    scope = _text(params, "azure_scope") or DEFAULT_SCOPE
    username, password = _text(params, "azure_username"), _text(params, "azure_password")
    if username and password:
        return EntraCredential(
            authority_host(), tenant or "organizations", client_id, scope, secret, username, password
        )
    if tenant and secret:
        return EntraCredential(authority_host(), tenant, client_id, scope, secret)
    return None


def authority_host() -> str:
    """``AZURE_AUTHORITY_HOST`` as azure-identity reads it: https unless it says otherwise."""
    raw = (os.environ.get(AUTHORITY_ENV) or DEFAULT_AUTHORITY).strip().rstrip("/")
    if "://" not in raw:
        return f"https://{raw}"
    parts = urlsplit(raw)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        return raw
    # A configuration mistake, not the caller's: secrets must not travel in clear text.
    raise ProviderError(
        500, f"{AUTHORITY_ENV} must be an https URL (got {raw!r})", "api_error", "invalid_authority_host"
    )


def _text(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    return value if isinstance(value, str) and value else None


@dataclass(slots=True)
class _Cached:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    token: str | None = None
    expires_at: float = 0.0  # time.monotonic()
    refresh_at: float = 0.0


class EntraTokens:
    """Bearer tokens per credential, refreshed near expiry by one request at a time."""

    def __init__(self) -> None:
        self._cache: dict[EntraCredential, _Cached] = {}

    async def token(self, cred: EntraCredential, client: httpx.AsyncClient | None, limit_s: float) -> str:
        cached = self._cache.get(cred)
        if cached is None:
            cached = self._cache.setdefault(cred, _Cached())
        now = time.monotonic()
        if cached.token is not None and (
            now < cached.refresh_at or (now < cached.expires_at and cached.lock.locked())
        ):
            return cached.token
        async with cached.lock:
            now = time.monotonic()
            if cached.token is not None and now < cached.refresh_at:
                return cached.token  # refreshed while this caller waited
            try:
                token, lifetime = await _request(cred, client, min(limit_s, TOKEN_TIMEOUT_S))
            except ProviderError as exc:
                if cached.token is None or time.monotonic() >= cached.expires_at:
                    raise
                log.warning("Entra ID token refresh failed, the current token is kept: %s", exc.message)
                cached.refresh_at = time.monotonic() + RETRY_REFRESH_S
                return cached.token
            cached.token = token
            cached.expires_at = now + lifetime
            cached.refresh_at = now + lifetime - min(REFRESH_MARGIN_S, lifetime / 2)
            return token


async def _request(
    cred: EntraCredential, client: httpx.AsyncClient | None, limit_s: float
) -> tuple[str, float]:
    """One token request: the access token and its lifetime in seconds."""
    url = httpx.URL(f"{cred.authority}/{quote(cred.tenant, safe='')}/oauth2/v2.0/token")
    headers = {"content-type": _FORM, "accept": "application/json"}
    try:
        answer = await post(client, url, headers, urlencode(cred.form()).encode(), limit_s)
    except httpx.TimeoutException:
        raise ProviderTimeoutError(f"Entra ID token endpoint timed out after {limit_s:g}s") from None
    except httpx.HTTPError as exc:
        raise ProviderUnreachableError(f"Entra ID token endpoint unreachable: {type(exc).__name__}") from None
    try:
        body = orjson.loads(answer.content)
    except orjson.JSONDecodeError:
        body = None
    if answer.status_code != 200:
        raise _refused(cred, answer.status_code, body, answer.headers)
    token = body.get("access_token") if isinstance(body, dict) else None
    lifetime = body.get("expires_in") if isinstance(body, dict) else None
    try:
        seconds = float(lifetime)  # v2 answers a number, v1 a string of one
    except (TypeError, ValueError):
        seconds = 0.0
    if not isinstance(token, str) or not token or seconds <= 0:
        raise ProviderError(
            502,
            "Entra ID token endpoint answered without a token",
            "api_error",
            "upstream_malformed_response",
        )
    return token, seconds


def _refused(cred: EntraCredential, status: int, body: Any, headers: Mapping[str, str]) -> ProviderError:
    error = body.get("error") if isinstance(body, dict) else None
    description = body.get("error_description") if isinstance(body, dict) else None
    detail = str(description or error or f"HTTP {status}")
    detail = cred.scrubber()(detail)[:_MAX_DESCRIPTION_CHARS]
    if status == 429 or status >= 500:
        retry = headers.get("retry-after")
        return ProviderError(
            503,
            f"Entra ID token endpoint unavailable (HTTP {status}): {detail}",
            "api_error",
            "token_endpoint_unavailable",
            retry_after=float(retry) if retry and retry.isdigit() else None,
        )
    # Every 4xx here is the configured credential's fault (tenant, application, secret, scope).
    return ProviderError(
        401,
        f"Entra ID refused the Azure credentials (tenant {cred.tenant!r}, "
        f"client {cred.client_id!r}): {detail}",
        "authentication_error",
        str(error) if isinstance(error, str) else "invalid_credentials",
    )
