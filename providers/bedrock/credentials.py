"""Who the gateway is to AWS: a deployment's region and credentials (signing: ``signing``).

References: https://docs.aws.amazon.com/sdkref/latest/guide/standardized-credentials.html (the
credential chain, botocore's own), https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html
and https://docs.aws.amazon.com/bedrock/latest/userguide/api-keys-use.html (Bedrock API keys: a
bearer token instead of a signature).

Credentials, first found wins (LiteLLM's ``litellm_params`` names):

1. ``aws_access_key_id`` + ``aws_secret_access_key`` (+ ``aws_session_token``) in the params;
   with ``aws_role_name`` they (or else the chain's) assume that role through STS first;
2. a Bedrock API key: ``api_key``, or ``AWS_BEARER_TOKEN_BEDROCK`` (sent as ``Authorization:
   Bearer``, unsigned);
3. botocore's standard chain (environment, ``aws_profile_name`` or the default profile, SSO,
   container and instance roles), resolved once per profile and refreshed by botocore when
   temporary credentials near expiry.

Secrets stay in this module's objects: nothing here logs them or puts them in an error.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    Credentials,
    DeferredRefreshableCredentials,
    ReadOnlyCredentials,
    RefreshableCredentials,
)
from botocore.exceptions import BotoCoreError, ClientError
from botocore.session import Session

from providers.errors import ProviderError, ProviderUnreachableError


@dataclass(frozen=True, slots=True)
class Identity:
    """How one request proves itself: SigV4 ``credentials``, or a Bedrock API key (``bearer``)."""

    credentials: ReadOnlyCredentials | None = None
    bearer: str | None = None

    def secrets(self) -> list[str]:
        """What must never leave the process (to scrub an upstream's echo)."""
        if self.bearer is not None:
            return [self.bearer]
        if self.credentials is None:
            return []
        return [s for s in (self.credentials.secret_key, self.credentials.token) if s]


def region_of(params: Mapping[str, Any]) -> str:
    """The deployment's AWS region: ``aws_region_name`` / ``region_name``, else the environment or
    the profile (``AWS_REGION``, ``AWS_DEFAULT_REGION``, the config file)."""
    for key in ("aws_region_name", "region_name"):
        value = params.get(key)
        if isinstance(value, str) and value:
            return value
    region = os.environ.get("AWS_REGION") or _profile_region(_opt(params, "aws_profile_name"))
    if not region:
        raise ProviderError(
            500,
            "no AWS region for this Bedrock deployment: set aws_region_name in its params (or AWS_REGION)",
            "api_error",
            "provider_misconfigured",
        )
    return str(region)


@functools.lru_cache(maxsize=32)
def _profile_region(profile: str | None) -> str | None:
    # AWS_DEFAULT_REGION or the profile's region in ~/.aws/config (read once: a Session is costly).
    return Session(profile=profile or None).get_config_variable("region")


class CredentialSource:
    """Resolves each deployment's ``Identity``. The standard chain's credentials are kept per
    profile, an assumed role's per (role, session, source); botocore refreshes both."""

    def __init__(self) -> None:
        self._chains: dict[str | None, Credentials] = {}
        self._roles: dict[tuple[Any, ...], Credentials] = {}

    async def identity(self, params: Mapping[str, Any], api_key: str | None) -> Identity:
        explicit = _explicit(params)
        role = _opt(params, "aws_role_name")
        if role is None:
            if explicit is not None:
                return Identity(explicit)
            bearer = api_key or os.environ.get("AWS_BEARER_TOKEN_BEDROCK")
            if bearer:
                return Identity(bearer=bearer)
            creds = await self._chain(_opt(params, "aws_profile_name"))
        else:
            creds = await self._role(params, role, explicit)
        if isinstance(creds, RefreshableCredentials) and creds.refresh_needed():
            # A refresh may call STS or the metadata service: off the event loop.
            return Identity(await asyncio.to_thread(_refresh, creds, role))
        return Identity(creds.get_frozen_credentials())

    async def _chain(self, profile: str | None) -> Credentials:
        creds = self._chains.get(profile)
        if creds is None:
            # The chain may read files or ask the instance metadata service: off the event loop.
            try:
                creds = await asyncio.to_thread(lambda: Session(profile=profile).get_credentials())
            except BotoCoreError as exc:
                raise _misconfigured(f"AWS credentials could not be loaded: {exc}") from None
            if creds is None:
                raise ProviderError(
                    401,
                    "no AWS credentials found for this Bedrock deployment (set aws_access_key_id/"
                    "aws_secret_access_key, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or a role)",
                    "authentication_error",
                    "missing_credentials",
                )
            self._chains[profile] = creds
        return creds

    async def _role(
        self, params: Mapping[str, Any], role: str, explicit: ReadOnlyCredentials | None
    ) -> Credentials:
        """``aws_role_name`` assumed with STS from the explicit keys or the chain (LiteLLM's
        ``aws_session_name``; ``aws_sts_endpoint`` for a private STS endpoint)."""
        profile = _opt(params, "aws_profile_name")
        session_name = _opt(params, "aws_session_name") or "switchyard-bedrock"
        endpoint = _opt(params, "aws_sts_endpoint")
        region = region_of(params)
        key = (role, session_name, explicit, profile, endpoint, region)
        creds = self._roles.get(key)
        if creds is None:
            source = Credentials(*explicit) if explicit is not None else await self._chain(profile)
            session = Session(profile=profile)
            fetcher = AssumeRoleCredentialFetcher(
                client_creator=functools.partial(
                    session.create_client, region_name=region, endpoint_url=endpoint
                ),
                source_credentials=source,
                role_arn=role,
                extra_args={"RoleSessionName": session_name},
            )
            creds = DeferredRefreshableCredentials(
                refresh_using=fetcher.fetch_credentials, method="assume-role"
            )
            self._roles[key] = creds
        return creds


def _refresh(creds: RefreshableCredentials, role: str | None) -> ReadOnlyCredentials:
    """Fresh temporary credentials; STS's refusal (AccessDenied on the role) as a ProviderError."""
    try:
        return creds.get_frozen_credentials()
    except ClientError as exc:
        error = exc.response.get("Error", {})
        reason = error.get("Message") or error.get("Code") or "refused"
        if role is None:
            raise ProviderError(
                401, f"AWS credentials could not be refreshed: {reason}", "authentication_error"
            ) from None
        denied = error.get("Code") == "AccessDenied"
        raise ProviderError(
            403 if denied else 401,
            f"could not assume AWS role {role}: {reason}",
            "permission_error" if denied else "authentication_error",
            "assume_role_failed",
        ) from None
    except BotoCoreError as exc:
        raise ProviderUnreachableError(
            f"AWS credentials could not be refreshed: {type(exc).__name__}"
        ) from None


def _opt(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    return value if isinstance(value, str) and value else None


def _explicit(params: Mapping[str, Any]) -> ReadOnlyCredentials | None:
    key_id, secret = params.get("aws_access_key_id"), params.get("aws_secret_access_key")
    if not key_id and not secret:
        return None
    if not (isinstance(key_id, str) and key_id and isinstance(secret, str) and secret):
        raise _misconfigured("aws_access_key_id and aws_secret_access_key must be given together")
    return ReadOnlyCredentials(key_id, secret, _opt(params, "aws_session_token"))


def _misconfigured(message: str) -> ProviderError:
    return ProviderError(500, message, "api_error", "provider_misconfigured")
