"""One Messages API request from a ``GenerationRequest`` and a deployment: URL, headers, body.

Wire format: https://docs.anthropic.com/en/api/messages (``POST /v1/messages``, ``x-api-key``,
``anthropic-version``, optional ``anthropic-beta``), and
https://docs.anthropic.com/en/api/messages-count-tokens (``POST /v1/messages/count_tokens``: the
same body without the generation fields, which it refuses). The body is written by
``providers.formats.anthropic_messages.build_request``; this module adds what comes from the
deployment rather than the caller:

- ``api_base`` defaults to https://api.anthropic.com; a base given as ``.../v1`` or as the full
  ``.../v1/messages`` URL (LiteLLM's spelling) is taken as it is meant.
- Deployment defaults (``max_tokens``, ``temperature``, ``top_p``, ``stop`` in the params) fill
  what the caller left unset. Anthropic requires ``max_tokens``: with neither, the codec's
  ``DEFAULT_MAX_TOKENS`` (4096) is sent.
- ``anthropic_beta`` (a string or a list) in the params and ``anthropic-beta`` in
  ``extra_headers`` are joined into one ``anthropic-beta`` header.
- The key is the deployment's ``api_key``, else ``ANTHROPIC_API_KEY`` from the environment.

OpenAI Chat callers may send ``top_k`` and ``thinking`` (LiteLLM's Anthropic parameters): both
are sent, ``thinking`` as the request's extended thinking (unless ``reasoning_effort`` set one).
``seed`` has no Anthropic equivalent: a 400 naming it, or dropped with ``drop_params``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from providers.anthropic.errors import upstream_error
from providers.contract import ProviderCall
from providers.errors import ProviderError
from providers.formats import anthropic_messages, openai_chat
from providers.formats.errors import FormatError
from providers.redaction import Scrubber, call_scrubber
from providers.schema import GenerationRequest

DEFAULT_API_BASE = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
# OpenAI Chat fields (``GenerationRequest.extra``) sent on as Anthropic body fields.
OPENAI_EXTRAS = frozenset({"top_k", "thinking"})
# The body fields count_tokens takes: what shapes the prompt; max_tokens, stream, sampling and
# stop sequences are "Extra inputs" there.
COUNT_FIELDS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers", "cache_control"}
)

_urls: dict[str, httpx.URL] = {}


@dataclass(slots=True)
class UpstreamRequest:
    """What to send, and how to read the answer."""

    url: httpx.URL
    headers: dict[str, str]
    payload: bytes
    json_mode: bool  # response_format was asked for: the json_tool_call answer is the text
    clean: Scrubber  # scrubs this call's secrets from anything the upstream echoes
    # Reads an error answer (status, body, headers, clean); a host of Anthropic's models that
    # answers some errors in its own shape (Vertex AI) reads them with its own.
    read_error: Callable[[int, bytes, Mapping[str, str] | None, Scrubber], ProviderError] = upstream_error


def messages_url(api_base: str | None) -> httpx.URL:
    """``{api_base}/v1/messages`` (parsed once per base)."""
    base = api_base or DEFAULT_API_BASE
    url = _urls.get(base)
    if url is None:
        trimmed = base.rstrip("/")
        if trimmed.endswith("/v1/messages"):
            full = trimmed
        elif trimmed.endswith("/v1"):
            full = trimmed + "/messages"
        else:
            full = trimmed + "/v1/messages"
        url = _urls[base] = httpx.URL(full)
    return url


def count_tokens_url(api_base: str | None) -> httpx.URL:
    """``{api_base}/v1/messages/count_tokens``."""
    return messages_url(api_base).join("messages/count_tokens")


def prepare(request: GenerationRequest, call: ProviderCall, *, stream: bool) -> UpstreamRequest:
    """The upstream request for ``request`` (never mutated: a retry may send it elsewhere)."""
    body, req = build_body(request, call, stream)
    return _upstream(messages_url(call.api_base), body, req, call)


def prepare_count(request: GenerationRequest, call: ProviderCall) -> UpstreamRequest:
    """The ``count_tokens`` request counting ``request``'s prompt as ``prepare`` would send it."""
    body, req = build_body(request, call, False)
    counted = {k: v for k, v in body.items() if k in COUNT_FIELDS}
    return _upstream(count_tokens_url(call.api_base), counted, req, call)


def build_body(
    request: GenerationRequest, call: ProviderCall, stream: bool
) -> tuple[dict[str, Any], GenerationRequest]:
    """The Messages body for ``request`` with the deployment's defaults, and the request as sent."""
    params = call.params
    if request.seed is not None and not params.get("drop_params"):
        raise ProviderError(
            400,
            "Unsupported parameter 'seed' for this model's provider (Anthropic has no seed); "
            "remove it, or set drop_params: true to drop it",
            "invalid_request_error",
            "unsupported_parameter",
            "seed",
        )
    from_openai = request.source_format == openai_chat.FORMAT
    reasoning = request.reasoning
    if from_openai and reasoning is None and isinstance(request.extra.get("thinking"), dict):
        # Read as the request's reasoning, so the codec sizes max_tokens above its budget.
        reasoning = request.extra["thinking"]
    req = dataclasses.replace(
        request,
        model=call.upstream_model,
        stream=stream,
        max_tokens=_default(request.max_tokens, params.get("max_tokens")),
        temperature=_default(request.temperature, params.get("temperature")),
        top_p=_default(request.top_p, params.get("top_p")),
        stop=request.stop or _stops(params.get("stop")),
        reasoning=reasoning,
    )
    try:
        body = anthropic_messages.build_request(req)
    except FormatError as exc:
        raise ProviderError(400, exc.message, "invalid_request_error", param=exc.param) from None
    if from_openai and "top_k" in req.extra:
        body["top_k"] = req.extra["top_k"]
    return body, req


def _upstream(
    url: httpx.URL, body: dict[str, Any], req: GenerationRequest, call: ProviderCall
) -> UpstreamRequest:
    key = call.api_key or os.environ.get("ANTHROPIC_API_KEY")
    return UpstreamRequest(
        url=url,
        headers=headers(key, call.params, call.extra_headers),
        payload=orjson.dumps(body),
        json_mode=json_mode(req),
        clean=call_scrubber(key, call.params, call.extra_headers),
    )


def json_mode(req: GenerationRequest) -> bool:
    """Whether the answer's JSON tool call is to be read back as the text (``response_format``)."""
    return req.response_format is not None and req.response_format.type != "text"


def _default(given: Any, configured: Any) -> Any:
    return configured if given is None else given


def _stops(configured: Any) -> list[str]:
    if isinstance(configured, str):
        return [configured]
    if isinstance(configured, list):
        return [str(s) for s in configured]
    return []


def headers(key: str | None, params: Mapping[str, Any], call_headers: Mapping[str, str]) -> dict[str, str]:
    """The Messages API headers: version, key (when given), betas joined, extra headers."""
    headers = {
        "content-type": "application/json",
        "accept": "application/json",
        "anthropic-version": API_VERSION,
    }
    if key:
        headers["x-api-key"] = key
    betas = params.get("anthropic_beta")
    beta_list = [betas] if isinstance(betas, str) else [str(b) for b in betas or ()]
    extra = params.get("extra_headers")
    for source in (extra if isinstance(extra, Mapping) else {}, call_headers):
        for name, value in source.items():
            if str(name).lower() == "anthropic-beta":
                beta_list += [b.strip() for b in str(value).split(",") if b.strip()]
            else:
                headers[str(name).lower()] = str(value)
    if beta_list:
        headers["anthropic-beta"] = ",".join(dict.fromkeys(beta_list))
    return headers
