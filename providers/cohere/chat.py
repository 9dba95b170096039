"""Cohere Chat API v2 <-> ``providers.schema``: the request, the answer, finish reasons, usage.

Reference: https://docs.cohere.com/reference/chat (``POST /v2/chat``, ``Authorization: Bearer``;
``messages`` with roles system/user/assistant/tool, user content as a string or ``text`` /
``image_url`` parts, assistant ``tool_calls`` and ``tool_plan``, tool messages with
``tool_call_id``; ``tools`` as OpenAI-like function tools; ``tool_choice`` REQUIRED / NONE;
``temperature``, ``p``, ``k``, ``max_tokens``, ``stop_sequences``, ``seed``, ``response_format``
``{"type": "json_object", "json_schema"?}``; the answer's ``message`` with ``content`` parts,
``tool_calls`` and ``tool_plan``, its ``finish_reason`` and ``usage``).

Translation choices:

- Text an assistant wrote beside its tool calls travels as ``tool_plan`` (Cohere's place for
  it); the answer's ``tool_plan`` and ``thinking`` parts come back as reasoning, not as text.
- Cohere cannot force one named tool: ``tool_choice`` naming a function sends that tool alone
  with ``REQUIRED``, which means the same.
- ``parallel_tool_calls: false`` cannot be expressed: a 400 naming it, or dropped with
  ``drop_params``. ``user`` and a message's ``name`` have no Cohere field and are not sent.
- Usage is Cohere's ``billed_units`` (what it charges for), else its ``tokens``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from providers.contract import ProviderCall
from providers.errors import ProviderError
from providers.formats import openai_chat
from providers.formats.errors import FormatError
from providers.formats.fields import req_list, req_obj, req_str
from providers.native import unsupported_parameter
from providers.redaction import Scrubber, call_scrubber
from providers.schema import (
    FinishReason,
    GenerationRequest,
    GenerationResponse,
    ImagePart,
    Message,
    TextPart,
    Tool,
    ToolCall,
)
from providers.usage import Usage

DEFAULT_API_BASE = "https://api.cohere.com"

FINISH_REASONS: dict[str, FinishReason] = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
    "ERROR": "error",
    "TIMEOUT": "error",
}

# OpenAI Chat fields (``GenerationRequest.extra``) sent on: Cohere's own sampling and RAG
# parameters (LiteLLM passes these through), and ``top_k`` as Cohere's ``k``.
_PASSTHROUGH = (
    "frequency_penalty",
    "presence_penalty",
    "k",
    "safety_mode",
    "documents",
    "citation_options",
    "thinking",
    "strict_tools",
    "priority",
)
ACCEPTED_EXTRA = frozenset({*_PASSTHROUGH, "top_k"})
_P_MIN, _P_MAX = 0.01, 0.99

# Cohere's paths, which a configured api_base may already end with (LiteLLM's spellings).
_KNOWN_SUFFIXES = ("/v2/chat", "/v1/chat", "/v2/embed", "/v1/embed", "/v2", "/v1")
_urls: dict[tuple[str, str], httpx.URL] = {}


@dataclass(slots=True)
class UpstreamRequest:
    """What to send, and how to scrub what comes back."""

    url: httpx.URL
    headers: dict[str, str]
    payload: bytes
    clean: Scrubber  # scrubs this call's secrets from anything the upstream echoes


def url_for(api_base: str | None, path: str) -> httpx.URL:
    """``{api_base}{path}`` (``path`` is ``/v2/chat`` or ``/v2/embed``), parsed once per base."""
    base = api_base or DEFAULT_API_BASE
    url = _urls.get((base, path))
    if url is None:
        trimmed = base.rstrip("/")
        for suffix in _KNOWN_SUFFIXES:
            if trimmed.endswith(suffix):
                trimmed = trimmed[: -len(suffix)]
                break
        url = _urls[(base, path)] = httpx.URL(trimmed + path)
    return url


def upstream_request(
    call: ProviderCall, path: str, body: Mapping[str, Any], *, stream: bool
) -> UpstreamRequest:
    """The URL, headers (bearer key, deployment and call extras) and payload of one request."""
    key = call.api_key or os.environ.get("COHERE_API_KEY") or os.environ.get("CO_API_KEY")
    headers = {
        "content-type": "application/json",
        "accept": "text/event-stream" if stream else "application/json",
    }
    extra = call.params.get("extra_headers")
    for source in (extra if isinstance(extra, Mapping) else {}, call.extra_headers):
        for name, value in source.items():
            headers[str(name).lower()] = str(value)
    if key:
        headers["authorization"] = f"Bearer {key}"
    return UpstreamRequest(
        url=url_for(call.api_base, path),
        headers=headers,
        payload=orjson.dumps(body),
        clean=call_scrubber(key, call.params, call.extra_headers),
    )


# ---- request ---------------------------------------------------------------------------------


def prepare(request: GenerationRequest, call: ProviderCall, *, stream: bool) -> UpstreamRequest:
    """The ``/v2/chat`` request for ``request`` (never mutated: a retry may send it elsewhere)."""
    params = call.params
    if request.parallel_tool_calls is False and not params.get("drop_params"):
        raise unsupported_parameter("parallel_tool_calls", "Cohere cannot turn parallel tool calls off")
    req = dataclasses.replace(
        request,
        model=call.upstream_model,
        stream=stream,
        max_tokens=_default(request.max_tokens, params.get("max_tokens")),
        temperature=_default(request.temperature, params.get("temperature")),
        top_p=_default(request.top_p, params.get("top_p")),
        seed=_default(request.seed, params.get("seed")),
        stop=request.stop or _stops(params.get("stop")),
    )
    try:
        body = build_request(req)
    except FormatError as exc:
        raise ProviderError(400, exc.message, "invalid_request_error", param=exc.param) from None
    return upstream_request(call, "/v2/chat", body, stream=stream)


def build_request(req: GenerationRequest) -> dict[str, Any]:
    """The ``/v2/chat`` body; ``FormatError`` naming the field Cohere cannot take."""
    body: dict[str, Any] = {
        "model": req.model,
        "messages": [_message_json(m, f"messages.{i}") for i, m in enumerate(req.messages)],
    }
    if req.stream:
        body["stream"] = True
    tools = req.tools
    choice = req.tool_choice
    if choice is not None and choice not in ("auto", "none", "required"):
        named = [t for t in tools if t.name == choice]
        if not named:
            raise FormatError(f"tool_choice names {choice!r}, which is not in 'tools'", "tool_choice")
        tools, choice = named, "required"
    if tools:
        body["tools"] = [_tool_json(t) for t in tools]
        if any(t.strict for t in tools):
            body["strict_tools"] = True
        if choice == "required":
            body["tool_choice"] = "REQUIRED"
        elif choice == "none":
            body["tool_choice"] = "NONE"
    if req.max_tokens is not None:
        body["max_tokens"] = req.max_tokens
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        # Cohere takes p in [0.01, 0.99]; OpenAI's 1.0 (no nucleus cut, a common default) and 0
        # mean the nearest values Cohere allows rather than a refusal.
        body["p"] = min(max(req.top_p, _P_MIN), _P_MAX)
    if req.stop:
        body["stop_sequences"] = list(req.stop)
    if req.seed is not None:
        body["seed"] = req.seed
    fmt = req.response_format
    if fmt is not None and fmt.type != "text":
        body["response_format"] = {"type": "json_object"}
        if fmt.schema is not None:
            body["response_format"]["json_schema"] = fmt.schema
    thinking = _thinking(req.reasoning)
    if thinking is not None:
        body["thinking"] = thinking
    if req.source_format == openai_chat.FORMAT:
        if "top_k" in req.extra:
            body["k"] = req.extra["top_k"]
        for key in _PASSTHROUGH:
            if key in req.extra:
                body[key] = req.extra[key]
    return body


def _thinking(reasoning: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Cohere's ``thinking`` from Anthropic's shape (``budget_tokens`` is Cohere's
    ``token_budget``) or OpenAI's ``reasoning_effort`` (on unless "none")."""
    if not reasoning:
        return None
    if reasoning.get("type") in ("enabled", "disabled"):
        thinking: dict[str, Any] = {"type": reasoning["type"]}
        if isinstance(reasoning.get("budget_tokens"), int):
            thinking["token_budget"] = reasoning["budget_tokens"]
        return thinking
    if "effort" in reasoning:
        return {"type": "disabled" if reasoning["effort"] == "none" else "enabled"}
    return None


def _message_json(msg: Message, param: str) -> dict[str, Any]:
    if msg.role == "tool":
        if any(isinstance(p, ImagePart) for p in msg.content):
            raise FormatError("Cohere takes only text in a tool result", f"{param}.content")
        return {"role": "tool", "tool_call_id": msg.tool_call_id, "content": msg.text()}
    if msg.role == "system":
        if any(isinstance(p, ImagePart) for p in msg.content):
            raise FormatError("Cohere takes only text in a system message", f"{param}.content")
        return {"role": "system", "content": msg.text()}
    if msg.role == "assistant":
        if any(isinstance(p, ImagePart) for p in msg.content):
            raise FormatError("Cohere takes only text in an assistant message", f"{param}.content")
        out: dict[str, Any] = {"role": "assistant"}
        text = msg.text()
        if msg.tool_calls:
            out["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments or "{}"},
                }
                for c in msg.tool_calls
            ]
            if text:
                out["tool_plan"] = text
        else:
            out["content"] = text
        return out
    if all(isinstance(p, TextPart) for p in msg.content):
        return {"role": "user", "content": msg.text()}
    return {"role": "user", "content": [_part_json(p) for p in msg.content]}


def _part_json(part: TextPart | ImagePart) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    url = part.url if part.url is not None else f"data:{part.media_type};base64,{part.data}"
    image: dict[str, Any] = {"url": url}
    if part.detail is not None:
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}


def _tool_json(tool: Tool) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description is not None:
        fn["description"] = tool.description
    return {"type": "function", "function": fn}


def _default(given: Any, configured: Any) -> Any:
    return configured if given is None else given


def _stops(configured: Any) -> list[str]:
    if isinstance(configured, str):
        return [configured]
    if isinstance(configured, list):
        return [str(s) for s in configured]
    return []


# ---- response --------------------------------------------------------------------------------


def finish_reason(raw: Any) -> FinishReason:
    return FINISH_REASONS.get(str(raw), "stop")


def parse_usage(raw: Any) -> Usage | None:
    """``usage``: ``billed_units`` (what Cohere charges for), else ``tokens``; ``cached_tokens``
    are the prompt tokens read from Cohere's cache."""
    if not isinstance(raw, Mapping):
        return None
    for key in ("billed_units", "tokens"):
        counts = raw.get(key)
        if not isinstance(counts, Mapping):
            continue
        prompt, completion = counts.get("input_tokens"), counts.get("output_tokens")
        if prompt is None and completion is None:
            continue
        if not all(_is_count(v) for v in (prompt or 0, completion or 0)):
            return None
        prompt_n, completion_n = int(prompt or 0), int(completion or 0)
        cached = raw.get("cached_tokens")
        read = min(int(cached), prompt_n) if _is_count(cached) else 0
        return Usage(prompt_n, completion_n, cache_read_tokens=read)
    return None


def _is_count(value: Any) -> bool:
    # The spec types counts as numbers; Cohere sends whole ones (20.0 is taken, 20.5 is not).
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 and value == int(value)
    )


def parse_tool_call(raw: Any, param: str) -> ToolCall:
    call = req_obj(raw, param)
    fn = req_obj(call.get("function"), f"{param}.function")
    arguments = fn.get("arguments")
    return ToolCall(
        id=req_str(call.get("id"), f"{param}.id"),
        name=req_str(fn.get("name"), f"{param}.function.name"),
        arguments=req_str(arguments, f"{param}.function.arguments") if arguments else "{}",
    )


def parse_response(body: Mapping[str, Any], *, model: str, created: int) -> GenerationResponse:
    """A ``/v2/chat`` answer (Cohere names no model or time: given) as a ``GenerationResponse``."""
    message = req_obj(body.get("message"), "message")
    text: list[str] = []
    reasoning: list[str] = []
    plan = message.get("tool_plan")
    if isinstance(plan, str) and plan:
        reasoning.append(plan)
    for i, raw in enumerate(req_list(message.get("content") or [], "message.content")):
        part = req_obj(raw, f"message.content.{i}")
        if part.get("type") == "text":
            text.append(req_str(part.get("text"), f"message.content.{i}.text"))
        elif part.get("type") == "thinking":
            reasoning.append(req_str(part.get("thinking"), f"message.content.{i}.thinking"))
    calls = [
        parse_tool_call(c, f"message.tool_calls.{i}")
        for i, c in enumerate(req_list(message.get("tool_calls") or [], "message.tool_calls"))
    ]
    return GenerationResponse(
        id=req_str(body.get("id"), "id"),
        model=model,
        created=created,
        text="".join(text),
        reasoning="".join(reasoning) if reasoning else None,
        tool_calls=calls,
        finish_reason=finish_reason(body.get("finish_reason")),
        usage=parse_usage(body.get("usage")),
    )
