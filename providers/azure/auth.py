"""Azure credentials: an ``api-key`` header, or a Microsoft Entra ID bearer token.

Reference: https://learn.microsoft.com/en-us/azure/ai-services/openai/reference#authentication
(``api-key: <key>``, or ``Authorization: Bearer <Entra ID token>``); Azure AI model inference
takes the same two (https://learn.microsoft.com/en-us/rest/api/aifoundry/model-inference/reference/
reference-model-inference-chat-completions).

Resolution follows LiteLLM: the deployment's ``api_key`` (else the provider's key variable in the
environment) is sent as ``api-key``; without a key, the Entra ID token in ``azure_ad_token``
(else ``AZURE_AD_TOKEN``) is sent as a bearer token. With neither, the request goes without
credentials and Azure's own 401 comes back. Secrets read from the environment are scrubbed from
upstream errors as well as the configured ones.
"""

from __future__ import annotations

import os

from providers.contract import ProviderCall
from providers.errors import ProviderError
from providers.openai_compat.adapter import with_extra_headers
from providers.redaction import Scrubber, call_scrubber

AD_TOKEN_ENV = "AZURE_AD_TOKEN"
_JSON = "application/json"


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
    return configured.union(Scrubber([os.environ.get(key_env), _token(call)]))


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
