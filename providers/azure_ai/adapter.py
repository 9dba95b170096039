"""Azure AI model inference: an OpenAI-compatible body at ``{api_base}/chat/completions``.

Reference: https://learn.microsoft.com/en-us/rest/api/aifoundry/model-inference/reference/
reference-model-inference-chat-completions (and .../reference-model-inference-embeddings):
``POST {api_base}/chat/completions?api-version=2024-05-01-preview`` and ``/embeddings``, with
``api-key`` or ``Authorization: Bearer`` (``providers.azure.auth``, key variable
``AZURE_AI_API_KEY``; Entra ID service principals as for Azure OpenAI). ``api_base`` is the endpoint (``https://<name>.services.ai.azure.com/models``
or a serverless ``https://<name>.<region>.models.ai.azure.com``; a full ``.../chat/completions``
URL is accepted), else ``AZURE_AI_API_BASE``. ``model`` (``azure_ai/<model>``) is sent in the
body, which selects the model on a multi-model endpoint. ``api_version`` in the params overrides
the version.

Parameters the API does not define are refused by Azure itself (a 400, mapped) unless the
deployment sets ``drop_params``: then the ``extra-parameters: drop`` header asks Azure to drop
them. Bodies pass through (``OpenAICompatProvider``) but for ``stream_options``, which the API
does not define: its streams report ``usage`` on their last chunk unasked. Errors are read as
Azure OpenAI's.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from providers.azure import auth
from providers.azure.auth import AzureAuthProvider
from providers.contract import Operation, ProviderCall
from providers.errors import ProviderError

API_VERSION = "2024-05-01-preview"
KEY_ENV = "AZURE_AI_API_KEY"
BASE_ENV = "AZURE_AI_API_BASE"
# No legacy completions in the model inference API.
CAPABILITIES: frozenset[Operation] = frozenset({"chat", "embeddings"})
_PATHS: dict[Operation, str] = {"chat": "/chat/completions", "embeddings": "/embeddings"}


class AzureAIProvider(AzureAuthProvider):
    """``Provider`` for Azure AI model inference endpoints (chat, embeddings)."""

    capabilities = CAPABILITIES
    key_env = KEY_ENV

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(client)
        self._azure_urls: dict[tuple[str, str, Operation], httpx.URL] = {}

    def _url(self, call: ProviderCall, operation: Operation = "chat") -> httpx.URL:
        base = auth.api_base(call, BASE_ENV, "azure_ai")
        version = str(call.params.get("api_version") or API_VERSION)
        key = (base, version, operation)
        url = self._azure_urls.get(key)
        if url is None:
            if operation not in _PATHS:
                raise ProviderError(
                    400,
                    f"Azure AI model inference has no {operation} endpoint",
                    "invalid_request_error",
                    "operation_not_supported",
                )
            root = base.removesuffix("/chat/completions").removesuffix("/embeddings")
            url = httpx.URL(root + _PATHS[operation], params={"api-version": version})
            self._azure_urls[key] = url
        return url

    @staticmethod
    def _payload(call: ProviderCall, stream: bool) -> bytes:
        body: dict[str, Any] = dict(call.body)
        body["model"] = call.upstream_model
        body.pop("stream_options", None)
        if stream:
            body["stream"] = True
        elif "stream" in body:
            body["stream"] = False
        return orjson.dumps(body)

    def _headers(self, call: ProviderCall) -> dict[str, str]:
        headers = super()._headers(call)
        if call.params.get("drop_params"):
            headers.setdefault("extra-parameters", "drop")
        return headers
