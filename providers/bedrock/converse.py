"""Bedrock Converse <-> ``providers.schema``: the request body, the answer, usage, stop reasons.

Reference: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html
(``messages`` of ``ContentBlock`` unions: ``text``, ``image``, ``toolUse``, ``toolResult``,
``cachePoint``; ``system``; ``inferenceConfig``; ``toolConfig``; ``additionalModelRequestFields``;
the ``output.message`` answer with ``stopReason`` and ``usage``).

Bedrock wants strict alternation starting with a user turn: system messages (wherever they stand)
become the top-level ``system``, tool results travel as ``toolResult`` blocks of a user turn, and
consecutive turns of one role are merged. Images go inline only (``bytes``, base64 in JSON) or
by ``s3://`` location: the gateway does not fetch URLs on a caller's behalf.

Converse has no JSON output mode. ``response_format`` (json_object / json_schema) is sent as
LiteLLM sends it: one tool, ``json_tool_call``, whose input schema is the wanted schema, forced
with ``toolChoice``; its input comes back as the answer's text (``finish_reason`` stop).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from providers.formats import anthropic_messages, openai_chat
from providers.formats.errors import FormatError
from providers.formats.fields import req_list, req_obj, req_str
from providers.schema import (
    FinishReason,
    GenerationRequest,
    GenerationResponse,
    ImagePart,
    Message,
    Part,
    TextPart,
    Tool,
    ToolCall,
)
from providers.usage import Usage

STOP_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}

# ImageBlock.format values, by the media type an OpenAI data URL or Anthropic block names.
_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
_S3_URI = re.compile(r"s3://[^/]+/.+")

# OpenAI's reasoning_effort as a Claude thinking budget on Bedrock (LiteLLM's mapping).
_EFFORT_BUDGET = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096}
# Model-specific fields Bedrock takes in additionalModelRequestFields, from an OpenAI or
# Anthropic body's extras.
_MODEL_FIELDS = ("top_k",)
# Converse's own top-level fields an OpenAI body may carry as extras (LiteLLM passes them on).
PASSTHROUGH_FIELDS = ("guardrailConfig", "performanceConfig", "requestMetadata", "promptVariables")
# The tool that carries a response_format's JSON (LiteLLM's name for it).
JSON_TOOL = "json_tool_call"
ACCEPTED_EXTRA = frozenset({*_MODEL_FIELDS, *PASSTHROUGH_FIELDS, "additionalModelRequestFields"})


# ---- request ---------------------------------------------------------------------------------


def build_request(req: GenerationRequest) -> dict[str, Any]:
    """The Converse (or ConverseStream: the same body) request for ``req``; ``FormatError`` if
    something in it cannot be said to Bedrock (the message names the field)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    uses_tools = False
    for i, msg in enumerate(req.messages):
        if msg.role == "system":
            for part in msg.content:
                if isinstance(part, TextPart) and part.text:
                    system.append({"text": part.text})
                    if part.cache_control is not None:
                        system.append(_CACHE_POINT)
            continue
        role = "assistant" if msg.role == "assistant" else "user"
        blocks = _message_blocks(msg, f"messages.{i}")
        uses_tools = uses_tools or msg.role == "tool" or bool(msg.tool_calls)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    body: dict[str, Any] = {"messages": turns}
    if system:
        body["system"] = system
    inference: dict[str, Any] = {}
    if req.max_tokens is not None:
        inference["maxTokens"] = req.max_tokens
    if req.temperature is not None:
        inference["temperature"] = req.temperature
    if req.top_p is not None:
        inference["topP"] = req.top_p
    if req.stop:
        inference["stopSequences"] = list(req.stop)
    if inference:
        body["inferenceConfig"] = inference
    tool_config = (
        _json_tool_config(req) if wants_json(req) else _tool_config(req.tools, req.tool_choice, uses_tools)
    )
    if tool_config is not None:
        body["toolConfig"] = tool_config
    additional = _additional_fields(req)
    if additional:
        body["additionalModelRequestFields"] = additional
    if req.source_format == openai_chat.FORMAT:
        for key in PASSTHROUGH_FIELDS:
            if key in req.extra:
                body[key] = req.extra[key]
    return body


_CACHE_POINT: dict[str, Any] = {"cachePoint": {"type": "default"}}


def _message_blocks(msg: Message, param: str) -> list[dict[str, Any]]:
    if msg.role == "tool":
        if msg.tool_call_id is None:
            raise FormatError("a tool message needs the tool_call_id it answers", f"{param}.tool_call_id")
        content = [_tool_result_item(p, f"{param}.content.{j}") for j, p in enumerate(msg.content)]
        result: dict[str, Any] = {"toolUseId": msg.tool_call_id, "content": content or [{"text": ""}]}
        if msg.is_error:
            result["status"] = "error"
        return [{"toolResult": result}]
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(msg.content):
        if isinstance(part, TextPart):
            # Bedrock refuses a blank text block; an empty string says nothing anyway.
            if part.text:
                blocks.append({"text": part.text})
        else:
            blocks.append({"image": _image_block(part, f"{param}.content.{j}")})
        if isinstance(part, TextPart) and part.cache_control is not None:
            blocks.append(_CACHE_POINT)
    for j, call in enumerate(msg.tool_calls):
        blocks.append(
            {"toolUse": {"toolUseId": call.id, "name": call.name, "input": _tool_input(call, param, j)}}
        )
    return blocks


def _tool_result_item(part: Part, param: str) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"text": part.text}
    return {"image": _image_block(part, param)}


def _image_block(part: ImagePart, param: str) -> dict[str, Any]:
    if part.data is not None:
        fmt = _IMAGE_FORMATS.get((part.media_type or "").lower())
        if fmt is None:
            raise FormatError(
                f"image type {part.media_type!r} is not supported by Bedrock (png, jpeg, gif, webp)", param
            )
        return {"format": fmt, "source": {"bytes": part.data}}
    url = part.url or ""
    if _S3_URI.fullmatch(url):
        ext = url.rsplit(".", 1)[-1].lower()
        fmt = "jpeg" if ext == "jpg" else ext
        if fmt not in _IMAGE_FORMATS.values():
            raise FormatError("an s3:// image must end in .png, .jpeg, .jpg, .gif or .webp", param)
        return {"format": fmt, "source": {"s3Location": {"uri": url}}}
    raise FormatError(
        "Bedrock takes images inline (a base64 data: URL) or from s3://; other URLs are not fetched",
        param,
    )


def _tool_input(call: ToolCall, param: str, j: int) -> dict[str, Any]:
    try:
        value = orjson.loads(call.arguments or "{}")
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise FormatError(
            "tool call arguments must be a JSON object for this model",
            f"{param}.tool_calls.{j}.function.arguments",
        )
    return value


def _tool_spec(tool: Tool) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": tool.name, "inputSchema": {"json": tool.parameters}}
    if tool.description:
        spec["description"] = tool.description
    return {"toolSpec": spec}


def _tool_config(tools: list[Tool], choice: str | None, history_uses_tools: bool) -> dict[str, Any] | None:
    """``toolConfig``. Bedrock has no "none" choice: the tools are left out instead, unless the
    conversation already holds tool blocks (then Bedrock requires ``toolConfig``; it is sent
    without a choice, which is the nearest it allows)."""
    if not tools:
        return None
    if choice == "none" and not history_uses_tools:
        return None
    config: dict[str, Any] = {"tools": [_tool_spec(t) for t in tools]}
    if choice == "required":
        config["toolChoice"] = {"any": {}}
    elif choice == "auto":
        config["toolChoice"] = {"auto": {}}
    elif choice is not None and choice != "none":
        if choice not in {t.name for t in tools}:
            raise FormatError(f"tool_choice names {choice!r}, which is not in 'tools'", "tool_choice")
        config["toolChoice"] = {"tool": {"name": choice}}
    return config


def wants_json(req: GenerationRequest) -> bool:
    """Whether the answer is JSON carried by ``JSON_TOOL``."""
    return req.response_format is not None and req.response_format.type != "text"


def _json_tool_config(req: GenerationRequest) -> dict[str, Any]:
    if req.tools:
        raise FormatError(
            "Bedrock cannot combine response_format with tools (JSON output is itself a forced tool call)",
            "response_format",
        )
    fmt = req.response_format
    schema = (fmt.schema if fmt is not None else None) or {"type": "object"}
    spec = {"name": JSON_TOOL, "description": "Respond with a JSON object.", "inputSchema": {"json": schema}}
    return {"tools": [{"toolSpec": spec}], "toolChoice": {"tool": {"name": JSON_TOOL}}}


def _additional_fields(req: GenerationRequest) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if req.source_format in (openai_chat.FORMAT, anthropic_messages.FORMAT):
        extra = req.extra.get("additionalModelRequestFields")
        if isinstance(extra, Mapping) and req.source_format == openai_chat.FORMAT:
            fields.update(extra)
        for key in _MODEL_FIELDS:
            if key in req.extra:
                fields[key] = req.extra[key]
    reasoning = req.reasoning
    if reasoning:
        if reasoning.get("type") in ("enabled", "disabled"):
            fields["thinking"] = dict(reasoning)  # Anthropic's own shape: Claude on Bedrock takes it
        elif reasoning.get("effort") in _EFFORT_BUDGET:
            fields["thinking"] = {"type": "enabled", "budget_tokens": _EFFORT_BUDGET[reasoning["effort"]]}
    return fields


# ---- response --------------------------------------------------------------------------------


def parse_usage(raw: Any) -> Usage | None:
    """``TokenUsage``: ``inputTokens`` excludes cached tokens, which are counted apart; ``Usage``
    counts every input token in ``prompt_tokens``."""
    if not isinstance(raw, Mapping):
        return None
    values = [
        raw.get(k) or 0
        for k in ("inputTokens", "outputTokens", "cacheReadInputTokens", "cacheWriteInputTokens")
    ]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return None
    fresh, output, read, write = values
    return Usage(fresh + read + write, output, cache_read_tokens=read, cache_write_tokens=write)


def finish_reason(stop_reason: Any) -> FinishReason:
    return STOP_REASONS.get(str(stop_reason), "stop")


def parse_response(
    body: Mapping[str, Any], *, id: str, model: str, created: int, json_tool: bool = False
) -> GenerationResponse:
    """A Converse answer as a ``GenerationResponse`` (Bedrock names neither id nor time: given).

    With ``json_tool`` (the request wanted JSON), ``JSON_TOOL``'s input is the answer's text.
    """
    output = req_obj(body.get("output"), "output")
    message = req_obj(output.get("message"), "output.message")
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    for i, raw in enumerate(req_list(message.get("content"), "output.message.content")):
        block = req_obj(raw, f"output.message.content.{i}")
        if "text" in block:
            text.append(req_str(block["text"], f"output.message.content.{i}.text"))
        elif "toolUse" in block:
            use = req_obj(block["toolUse"], f"output.message.content.{i}.toolUse")
            calls.append(
                ToolCall(
                    id=req_str(use.get("toolUseId"), f"output.message.content.{i}.toolUse.toolUseId"),
                    name=req_str(use.get("name"), f"output.message.content.{i}.toolUse.name"),
                    arguments=orjson.dumps(use.get("input") or {}).decode(),
                )
            )
        elif "reasoningContent" in block:
            content = block["reasoningContent"]
            reasoning_text = content.get("reasoningText") if isinstance(content, Mapping) else None
            if isinstance(reasoning_text, Mapping) and isinstance(reasoning_text.get("text"), str):
                reasoning.append(reasoning_text["text"])
    finish = finish_reason(body.get("stopReason"))
    if json_tool:
        text += [c.arguments for c in calls if c.name == JSON_TOOL]
        calls = [c for c in calls if c.name != JSON_TOOL]
        if finish == "tool_calls" and not calls:
            finish = "stop"
    return GenerationResponse(
        id=id,
        model=model,
        created=created,
        text="".join(text),
        reasoning="".join(reasoning) if reasoning else None,
        tool_calls=calls,
        finish_reason=finish,
        usage=parse_usage(body.get("usage")),
    )
