"""Azure credentials: an ``api-key`` header, or a Microsoft Entra ID bearer token.

Reference: https://learn.microsoft.com/en-us/azure/ai-services/openai/reference#authentication
(``api-key: <key>``, or ``Authorization: Bearer <Entra ID token>``); Azure AI model inference
takes the same two (https://learn.microsoft.com/en-us/rest/api/aifoundry/model-inference/reference/
reference-model-inference-chat-completions).

Resolution follows LiteLLM: the deployment's ``api_key`` (else the provider's key variable in the
environment) is sent as ``api-key``; without a key, the Entra ID token in ``azure_ad_token``
(else ``AZURE_AD_TOKEN``) is sent as a bearer token; without either, a token obtained from Entra
ID for the service principal or user the params (or the environment) name
(``providers.azure.entra``). With none, the request goes without credentials and Azure's own 401
comes back. Secrets read from the environment are scrubbed from upstream errors as well as the
configured ones.

``AzureAuthProvider`` is what both Azure adapters share on top of the OpenAI-format pass-through:
these headers, Azure's error reading, and the Entra ID token fetched (awaited, off the hot path
of key-based deployments) before a request is sent.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Mapping
from typing import ClassVar

import httpx

from providers.azure import entra, errors
from providers.contract import Operation, ProviderCall, ProviderResponse
from providers.errors import ProviderError
from providers.openai_compat.adapter import OpenAICompatProvider, with_extra_headers
from providers.redaction import Scrubber, call_scrubber

AD_TOKEN_ENV = "AZURE_AD_TOKEN"
_JSON = "application/json"


class AzureAuthProvider(OpenAICompatProvider):
    """An OpenAI-format adapter with Azure's credentials; subclasses set ``key_env`` and the URL."""

    key_env: ClassVar[str]

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(client)
        self._entra = entra.EntraTokens()

    def _headers(self, call: ProviderCall) -> dict[str, str]:
        return headers(call, self.key_env)

    def _error(
        self, call: ProviderCall, status: int, body: bytes, headers: Mapping[str, str] | None = None
    ) -> ProviderError:
        return errors.upstream_error(status, body, headers, scrubber(call, self.key_env))

    async def _post(self, call: ProviderCall, operation: Operation, payload: bytes) -> ProviderResponse:
        cred = self._entra_credential(call)
        if cred is not None:
            call = await self._with_token(call, cred)
        return await super()._post(call, operation, payload)

    def _stream(self, call: ProviderCall, operation: Operation) -> AsyncIterator[bytes]:
        cred = self._entra_credential(call)
        if cred is None:
            return super()._stream(call, operation)
        return self._entra_stream(call, operation, cred)

    async def _entra_stream(
        self, call: ProviderCall, operation: Operation, cred: entra.EntraCredential
    ) -> AsyncIterator[bytes]:
        events = super()._stream(await self._with_token(call, cred), operation)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()

    def _entra_credential(self, call: ProviderCall) -> entra.EntraCredential | None:
        """The Entra ID credential to get a token with, when no key or token is configured."""
        if call.api_key or os.environ.get(self.key_env) or _token(call):
            return None
        return entra.credential(call.params)

    async def _with_token(self, call: ProviderCall, cred: entra.EntraCredential) -> ProviderCall:
        token = await self._entra.token(cred, self._client, call.timeout)
        # As if configured: the headers send it, and upstream errors are scrubbed of it.
        return dataclasses.replace(call, params={**call.params, "azure_ad_token": token})


def _token(call: ProviderCall) -> str | None:
    token = call.params.get("azure_ad_token")
    if isinstance(token, str) and token:
        return token
    return os.environ.get(AD_TOKEN_ENV) or None


def headers(call: ProviderCall, key_env: str) -> dict[str, str]:
    """JSON headers with this call's credential, then the configured ``extra_headers``."""
    out = {"content-type": _JSON, "accept": _JSON}
    key = call.api_key or os.environ.get(key_env)
    if key:
        out["api-key"] = key
    else:
        token = _token(call)
        if token:
            out["authorization"] = f"Bearer {token}"
    return with_extra_headers(out, call)


def scrubber(call: ProviderCall, key_env: str) -> Scrubber:
    """This call's secrets, those taken from the environment included (an upstream may echo them)."""
    configured = call_scrubber(call.api_key, call.params, call.extra_headers)
    environment = [os.environ.get(key_env), _token(call), os.environ.get(entra.CLIENT_SECRET_ENV)]
    return configured.union(Scrubber(environment))


def api_base(call: ProviderCall, base_env: str, provider: str) -> str:
    """The deployment's ``api_base``, else ``base_env``; Azure has no default endpoint."""
    base = call.api_base or os.environ.get(base_env)
    if not base:
        # A configuration mistake, not the caller's: a 500 that says what to set.
        raise ProviderError(
            500,
            f"{provider} deployment has no api_base (set api_base in litellm_params or {base_env})",
            "api_error",
            "api_base_missing",
        )
    return base.rstrip("/")
