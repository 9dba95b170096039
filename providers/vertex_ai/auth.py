"""OAuth access tokens for Vertex AI, from google-auth: a service-account key or the environment's
application default credentials (ADC: ``GOOGLE_APPLICATION_CREDENTIALS``, gcloud's user login,
workload identity, the metadata server).

``vertex_credentials`` (a deployment param, as LiteLLM spells it) is a path to a JSON key file, the
JSON text itself, or a mapping of it; any credential type google-auth loads (service account,
authorized user, external account) works. Without it, ADC. Credentials are loaded once per
source and kept; google-auth's ``valid`` says when the token is near expiry, and then it is
refreshed. Loading and refreshing do blocking I/O (files, the token endpoint), so they run in a
worker thread, one refresh per source at a time, never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import google.auth
import google.auth.exceptions
import google.auth.transport.requests
import google.oauth2.credentials
from google.auth import aws, identity_pool
from google.auth.credentials import Credentials
from google.oauth2 import service_account

from providers.errors import ProviderError, ProviderUnreachableError
from providers.redaction import Scrubber

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


@dataclass(slots=True)
class _Source:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    credentials: Credentials | None = None
    project: str | None = None


@dataclass(slots=True)
class Token:
    value: str
    project: str | None  # the project the credentials belong to, when they say


class TokenCache:
    """Access tokens per credentials source, refreshed off the event loop when near expiry."""

    def __init__(self) -> None:
        self._sources: dict[str, _Source] = {}

    async def token(self, configured: Any, clean: Scrubber) -> Token:
        key = _source_key(configured)
        source = self._sources.setdefault(key, _Source())
        creds = source.credentials
        if creds is not None and creds.valid and creds.token:
            return Token(creds.token, source.project)
        async with source.lock:
            try:
                if source.credentials is None:
                    source.credentials, source.project = await asyncio.to_thread(_load, configured)
                creds = source.credentials
                if not creds.valid or not creds.token:
                    await asyncio.to_thread(creds.refresh, google.auth.transport.requests.Request())
            except google.auth.exceptions.TransportError as exc:
                raise ProviderUnreachableError(
                    f"Vertex AI token endpoint unreachable: {clean(str(exc))[:300]}"
                ) from None
            except (google.auth.exceptions.GoogleAuthError, ValueError, OSError) as exc:
                raise _credentials_error(exc, clean) from None
        return Token(str(creds.token), source.project)


def _source_key(configured: Any) -> str:
    if configured is None or configured == "":
        return ""
    if isinstance(configured, Mapping):
        return json.dumps(configured, sort_keys=True)
    return str(configured)


def _load(configured: Any) -> tuple[Credentials, str | None]:
    """google-auth credentials (and their project) from ``vertex_credentials``, else ADC."""
    if configured is None or configured == "":
        return google.auth.default(scopes=SCOPES)
    if isinstance(configured, Mapping):
        return _from_info(dict(configured))
    text = str(configured).strip()
    if not text.startswith("{"):
        with open(text, encoding="utf-8") as key_file:
            text = key_file.read()
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        # The text may be a private key: say that it broke, never what it holds.
        raise ValueError("vertex_credentials is not valid JSON") from None
    if not isinstance(info, dict):
        raise ValueError("vertex_credentials must be a JSON object")
    return _from_info(info)


def _from_info(info: dict[str, Any]) -> tuple[Credentials, str | None]:
    """The credentials of a key file's JSON, by its ``type``, with the loader for that type (as
    google-auth advises: the generic loader would take any type a config happened to hold)."""
    kind = info.get("type")
    project = info.get("project_id")
    creds: Credentials
    if kind == "service_account":
        creds = service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
    elif kind == "authorized_user":
        creds = google.oauth2.credentials.Credentials.from_authorized_user_info(info, scopes=SCOPES)
    elif kind == "external_account":
        source = info.get("credential_source") or {}
        module = aws if str(source.get("environment_id", "")).startswith("aws") else identity_pool
        creds = module.Credentials.from_info(info, scopes=SCOPES)
    else:
        raise ValueError(
            f"vertex_credentials of type {kind!r} are not supported "
            "(service_account, authorized_user or external_account)"
        )
    return creds, project if isinstance(project, str) else None


def _credentials_error(exc: Exception, clean: Scrubber) -> ProviderError:
    if isinstance(exc, google.auth.exceptions.RefreshError):
        what = "Vertex AI credentials were refused by Google's token endpoint"
    else:
        what = "Vertex AI credentials could not be loaded"
    # google-auth's messages name files and fields, not key material; scrubbed all the same.
    detail = clean(str(exc))[:500]
    return ProviderError(401, f"{what}: {detail}", "authentication_error", "invalid_credentials")
