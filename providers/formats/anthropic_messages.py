"""Anthropic Messages <-> ``providers.schema``, both ways.

Reference: https://docs.anthropic.com/en/api/messages (request and response) and
https://docs.anthropic.com/en/docs/build-with-claude/streaming (events).

- Client side (the ``/v1/messages`` door): ``parse_request``, ``build_response``, ``StreamWriter``.
- Upstream side (a native Anthropic adapter): ``build_request``, ``parse_response``, ``StreamParser``.

Translation choices:
- ``usage.input_tokens`` excludes prompt-cache reads and writes (Anthropic reports those as
  ``cache_read_input_tokens`` / ``cache_creation_input_tokens``); ``Usage.prompt_tokens``
  includes them. Written: ``input_tokens = prompt - cache reads - cache writes``.
- A ``tool_use`` block's ``input`` is a JSON object; a ``ToolCall`` carries it as JSON text. A
  model's arguments that are not a JSON object are sent as ``{"_raw_arguments": text}`` in a
  plain response rather than dropped (streams pass the text through as ``input_json_delta``).
- Thinking blocks (``thinking`` with its ``signature``, ``redacted_thinking`` with its ``data``)
  are kept both ways: an answer's are ``GenerationResponse.thinking`` (their text also
  ``reasoning``), a history's are ``Message.thinking``, sent back first in their assistant turn as
  the API wants them (https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking,
  "Preserving thinking blocks"). Streams carry the signature as ``ReasoningDelta.signature``.
  An answer with reasoning but no signed blocks (from another upstream) is written as one
  thinking block with an empty signature.
- Upstream direction: ``response_format`` (JSON output) has no Messages field, so it is asked for
  as a tool, ``json_tool_call``, whose ``input_schema`` is the wanted schema (any object for
  ``json_object``), forced with ``tool_choice`` when the caller gave no tools of its own and no
  extended thinking (which refuses forced tool use). With ``json_mode`` the parsers read that
  tool's input back as the answer's text, and its ``tool_use`` stop as ``stop``.
- OpenAI's reasoning effort becomes extended thinking with a budget (``THINKING_BUDGETS``); a
  body with thinking and no ``max_tokens`` gets the budget plus ``DEFAULT_MAX_TOKENS`` (the API
  wants ``max_tokens`` above the budget).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from providers.formats.errors import FormatError, StreamError
from providers.formats.fields import opt_bool, opt_int, opt_num, opt_str, req_list, req_obj, req_str
from providers.schema import (
    Finish,
    FinishReason,
    GenerationRequest,
    GenerationResponse,
    ImagePart,
    Message,
    Part,
    ReasoningDelta,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    ThinkingBlock,
    Tool,
    ToolCall,
    ToolCallDelta,
    UsageReport,
)
from providers.usage import Usage

FORMAT = "anthropic_messages"

# Anthropic requires max_tokens; used when building a body from a request that set none.
DEFAULT_MAX_TOKENS = 4096

# The tool that carries a JSON-output answer (``response_format``), as LiteLLM names it.
JSON_TOOL = "json_tool_call"
_JSON_TOOL_DESCRIPTION = "Respond with a JSON object that follows this schema."

# OpenAI ``reasoning_effort`` -> thinking ``budget_tokens`` (1024 is the API's minimum budget).
THINKING_BUDGETS: dict[str, int] = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 4096}

_KNOWN = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "thinking",
        "metadata",
    }
)

STOP_REASON_IN: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
STOP_REASON_OUT: dict[FinishReason, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "error": "end_turn",
}


# ---- request: client body -> GenerationRequest ----------------------------------------------


def parse_request(body: Mapping[str, Any], *, require_max_tokens: bool = True) -> GenerationRequest:
    """A Messages request body as a ``GenerationRequest``; ``FormatError`` naming the field if invalid.

    ``require_max_tokens=False`` reads a ``count_tokens`` body (same shape, no ``max_tokens``).
    """
    model = req_str(body.get("model"), "model")
    max_tokens = opt_int(body.get("max_tokens"), "max_tokens")
    if max_tokens is None and require_max_tokens:
        raise FormatError("max_tokens: Field required", "max_tokens")
    messages: list[Message] = []
    system = body.get("system")
    if system is not None:
        messages += [Message("system", _system_parts(system))]
    raw_messages = req_list(body.get("messages"), "messages")
    for i, raw in enumerate(raw_messages):
        messages += _parse_message(raw, f"messages.{i}")
    stops = [
        req_str(s, f"stop_sequences.{i}")
        for i, s in enumerate(req_list(body.get("stop_sequences") or [], "stop_sequences"))
    ]
    tools = [_parse_tool(t, f"tools.{i}") for i, t in enumerate(req_list(body.get("tools") or [], "tools"))]
    tool_choice, parallel = _parse_tool_choice(body.get("tool_choice"))
    thinking = body.get("thinking")
    metadata = body.get("metadata")
    user = None
    if metadata is not None:
        user = opt_str(req_obj(metadata, "metadata").get("user_id"), "metadata.user_id")
    return GenerationRequest(
        model=model,
        messages=messages,
        stream=bool(opt_bool(body.get("stream"), "stream")),
        max_tokens=max_tokens,
        temperature=opt_num(body.get("temperature"), "temperature"),
        top_p=opt_num(body.get("top_p"), "top_p"),
        stop=stops,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        user=user,
        reasoning=None if thinking is None else dict(req_obj(thinking, "thinking")),
        extra={k: v for k, v in body.items() if k not in _KNOWN},
        source_format=FORMAT,
    )


def _system_parts(system: Any) -> list[Part]:
    if isinstance(system, str):
        return [TextPart(system)]
    parts: list[Part] = []
    for i, raw in enumerate(req_list(system, "system")):
        block = req_obj(raw, f"system.{i}")
        if block.get("type") != "text":
            raise FormatError(f"'system.{i}.type' must be 'text'", f"system.{i}.type")
        parts.append(TextPart(req_str(block.get("text"), f"system.{i}.text"), block.get("cache_control")))
    return parts


def _parse_message(raw: Any, param: str) -> list[Message]:
    """One Anthropic turn; a user turn with ``tool_result`` blocks becomes several messages."""
    msg = req_obj(raw, param)
    role = msg.get("role")
    content = msg.get("content")
    if role not in ("user", "assistant"):
        raise FormatError(f"'{param}.role' must be 'user' or 'assistant'", f"{param}.role")
    if isinstance(content, str):
        return [Message(role, [TextPart(content)])]
    blocks = req_list(content, f"{param}.content")
    if role == "assistant":
        parts: list[Part] = []
        calls: list[ToolCall] = []
        thinking: list[ThinkingBlock] = []
        for i, raw_block in enumerate(blocks):
            where = f"{param}.content.{i}"
            block = req_obj(raw_block, where)
            kind = block.get("type")
            if kind == "text":
                parts.append(
                    TextPart(req_str(block.get("text"), f"{where}.text"), block.get("cache_control"))
                )
            elif kind == "tool_use":
                calls.append(
                    ToolCall(
                        id=req_str(block.get("id"), f"{where}.id"),
                        name=req_str(block.get("name"), f"{where}.name"),
                        arguments=orjson.dumps(req_obj(block.get("input"), f"{where}.input")).decode(),
                    )
                )
            elif kind in ("thinking", "redacted_thinking"):
                thinking.append(parse_thinking_block(block, where))
            else:
                raise FormatError(f"assistant content block type {kind!r} is not supported", f"{where}.type")
        return [Message("assistant", parts, tool_calls=calls, thinking=thinking)]
    out: list[Message] = []
    pending: list[Part] = []
    for i, raw_block in enumerate(blocks):
        where = f"{param}.content.{i}"
        block = req_obj(raw_block, where)
        if block.get("type") == "tool_result":
            if pending:
                out.append(Message("user", pending))
                pending = []
            out.append(_parse_tool_result(block, where))
        else:
            pending.append(_parse_block(block, where))
    if pending or not out:
        out.append(Message("user", pending))
    return out


def parse_thinking_block(block: Mapping[str, Any], where: str) -> ThinkingBlock:
    """A ``thinking`` or ``redacted_thinking`` block (the same shape in OpenAI's ``thinking_blocks``)."""
    if block.get("type") == "redacted_thinking":
        return ThinkingBlock(redacted=req_str(block.get("data"), f"{where}.data"))
    return ThinkingBlock(
        req_str(block.get("thinking"), f"{where}.thinking"),
        opt_str(block.get("signature"), f"{where}.signature"),
    )


def thinking_block_json(block: ThinkingBlock) -> dict[str, Any]:
    """The block as the API takes it back (a missing signature stays missing: the API says so)."""
    if block.redacted is not None:
        return {"type": "redacted_thinking", "data": block.redacted}
    out: dict[str, Any] = {"type": "thinking", "thinking": block.thinking}
    if block.signature is not None:
        out["signature"] = block.signature
    return out


def _parse_block(block: Mapping[str, Any], where: str) -> Part:
    kind = block.get("type")
    if kind == "text":
        return TextPart(req_str(block.get("text"), f"{where}.text"), block.get("cache_control"))
    if kind == "image":
        source = req_obj(block.get("source"), f"{where}.source")
        if source.get("type") == "base64":
            return ImagePart(
                data=req_str(source.get("data"), f"{where}.source.data"),
                media_type=req_str(source.get("media_type"), f"{where}.source.media_type"),
            )
        if source.get("type") == "url":
            return ImagePart(url=req_str(source.get("url"), f"{where}.source.url"))
        raise FormatError(f"'{where}.source.type' must be 'base64' or 'url'", f"{where}.source.type")
    raise FormatError(f"content block type {kind!r} is not supported", f"{where}.type")


def _parse_tool_result(block: Mapping[str, Any], where: str) -> Message:
    content = block.get("content")
    if content is None:
        parts: list[Part] = []
    elif isinstance(content, str):
        parts = [TextPart(content)]
    else:
        parts = [
            _parse_block(req_obj(b, f"{where}.content.{j}"), f"{where}.content.{j}")
            for j, b in enumerate(req_list(content, f"{where}.content"))
        ]
    return Message(
        "tool",
        parts,
        tool_call_id=req_str(block.get("tool_use_id"), f"{where}.tool_use_id"),
        is_error=bool(opt_bool(block.get("is_error"), f"{where}.is_error")),
    )


def _parse_tool(raw: Any, param: str) -> Tool:
    tool = req_obj(raw, param)
    if tool.get("type") not in (None, "custom"):
        raise FormatError(
            f"tool type {tool.get('type')!r} is not supported (only custom tools)", f"{param}.type"
        )
    return Tool(
        name=req_str(tool.get("name"), f"{param}.name"),
        description=opt_str(tool.get("description"), f"{param}.description"),
        parameters=dict(req_obj(tool.get("input_schema"), f"{param}.input_schema")),
    )


def _parse_tool_choice(raw: Any) -> tuple[str | None, bool | None]:
    """(tool_choice, parallel_tool_calls) from Anthropic's ``tool_choice``."""
    if raw is None:
        return None, None
    choice = req_obj(raw, "tool_choice")
    disable = opt_bool(choice.get("disable_parallel_tool_use"), "tool_choice.disable_parallel_tool_use")
    parallel = None if disable is None else not disable
    kind = choice.get("type")
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", parallel
    if kind == "tool":
        return req_str(choice.get("name"), "tool_choice.name"), parallel
    raise FormatError("'tool_choice.type' must be auto, any, tool or none", "tool_choice.type")


# ---- request: GenerationRequest -> upstream body --------------------------------------------


def build_request(req: GenerationRequest) -> dict[str, Any]:
    """A Messages body for an Anthropic upstream.

    System messages (wherever they stand) become the top-level ``system``; tool messages become
    ``tool_result`` blocks of a user turn; consecutive turns of one role are merged, as the API
    requires alternation. ``response_format`` becomes the ``json_tool_call`` tool (module doc).
    """
    system: list[TextPart] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(req.messages):
        if msg.role == "system":
            system += [p for p in msg.content if isinstance(p, TextPart)]
            continue
        role = "assistant" if msg.role == "assistant" else "user"
        blocks = _message_blocks(msg, f"messages.{i}")
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    thinking = _thinking_json(req.reasoning)
    max_tokens = req.max_tokens
    if max_tokens is None:
        budget = thinking.get("budget_tokens") if thinking else None
        max_tokens = DEFAULT_MAX_TOKENS + (budget if isinstance(budget, int) else 0)
    body: dict[str, Any] = {"model": req.model, "max_tokens": max_tokens, "messages": turns}
    if system:
        if len(system) == 1 and system[0].cache_control is None:
            body["system"] = system[0].text
        else:
            body["system"] = [_text_block(p) for p in system]
    if req.stream:
        body["stream"] = True
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.stop:
        body["stop_sequences"] = list(req.stop)
    tools = [_tool_json(t) for t in req.tools]
    choice = _tool_choice_json(req.tool_choice, req.parallel_tool_calls)
    fmt = req.response_format
    if fmt is not None and fmt.type != "text":
        schema = fmt.schema if fmt.schema is not None else {"type": "object"}
        tools.append({"name": JSON_TOOL, "description": _JSON_TOOL_DESCRIPTION, "input_schema": schema})
        if not req.tools and not (thinking and thinking.get("type") == "enabled"):
            choice = {"type": "tool", "name": JSON_TOOL}
    if tools:
        body["tools"] = tools
    if choice is not None:
        body["tool_choice"] = choice
    if thinking is not None:
        body["thinking"] = thinking
    if req.user is not None:
        body["metadata"] = {"user_id": req.user}
    if req.source_format == FORMAT:
        for key, value in req.extra.items():
            body.setdefault(key, value)
    return body


def _thinking_json(reasoning: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Anthropic's ``thinking`` from the request's reasoning (its own shape, or OpenAI's effort)."""
    if not reasoning:
        return None
    if reasoning.get("type") in ("enabled", "disabled"):
        return dict(reasoning)
    effort = reasoning.get("effort")
    if effort is None or effort == "none":
        return None
    budget = THINKING_BUDGETS.get(str(effort))
    if budget is None:
        raise FormatError(
            f"'reasoning_effort' must be one of {', '.join(THINKING_BUDGETS)} or none for this model",
            "reasoning_effort",
        )
    return {"type": "enabled", "budget_tokens": budget}


def _text_block(part: TextPart) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": part.text}
    if part.cache_control is not None:
        block["cache_control"] = part.cache_control
    return block


def _part_block(part: Part) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return _text_block(part)
    if part.url is not None:
        return {"type": "image", "source": {"type": "url", "url": part.url}}
    return {"type": "image", "source": {"type": "base64", "media_type": part.media_type, "data": part.data}}


def _message_blocks(msg: Message, param: str) -> list[dict[str, Any]]:
    if msg.role == "tool":
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": msg.tool_call_id}
        if all(isinstance(p, TextPart) and p.cache_control is None for p in msg.content):
            result["content"] = msg.text()
        else:
            result["content"] = [_part_block(p) for p in msg.content]
        if msg.is_error:
            result["is_error"] = True
        return [result]
    # An assistant turn's thinking goes first, as the model produced it.
    blocks = [thinking_block_json(b) for b in msg.thinking]
    blocks += [_part_block(p) for p in msg.content if not (isinstance(p, TextPart) and p.text == "")]
    for j, call in enumerate(msg.tool_calls):
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _input_object(call, param, j)}
        )
    return blocks


def _input_object(call: ToolCall, param: str, j: int) -> dict[str, Any]:
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


def _tool_json(tool: Tool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    out["input_schema"] = tool.parameters
    return out


def _tool_choice_json(choice: str | None, parallel: bool | None) -> dict[str, Any] | None:
    if choice is None and parallel is None:
        return None
    if choice is None or choice == "auto":
        out: dict[str, Any] = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        out = {"type": "none"}
    else:
        out = {"type": "tool", "name": choice}
    if parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


# ---- usage ----------------------------------------------------------------------------------


def parse_usage(raw: Any) -> Usage | None:
    if not isinstance(raw, Mapping):
        return None
    values = [
        raw.get(k) or 0
        for k in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    ]
    if not all(isinstance(v, int) for v in values):
        return None
    fresh, output, read, write = values
    return Usage(fresh + read + write, output, cache_read_tokens=read, cache_write_tokens=write)


def usage_json(usage: Usage) -> dict[str, int]:
    return {
        "input_tokens": max(usage.prompt_tokens - usage.cache_read_tokens - usage.cache_write_tokens, 0),
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
    }


# ---- response -------------------------------------------------------------------------------


def message_id(upstream_id: str) -> str:
    """An Anthropic-looking id (``msg_...``) for an answer named by another format's id."""
    return upstream_id if upstream_id.startswith("msg_") else f"msg_{upstream_id}"


def build_response(resp: GenerationResponse) -> dict[str, Any]:
    """A ``message`` body. Content is never empty: an answer without blocks gets one empty text block."""
    content: list[dict[str, Any]] = []
    if resp.thinking:
        content += [thinking_block_json(b) for b in resp.thinking]
    elif resp.reasoning:
        content.append({"type": "thinking", "thinking": resp.reasoning, "signature": ""})
    if resp.text or not resp.tool_calls:
        content.append({"type": "text", "text": resp.text})
    for call in resp.tool_calls:
        content.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _answer_input(call.arguments)}
        )
    return {
        "id": message_id(resp.id),
        "type": "message",
        "role": "assistant",
        "model": resp.model,
        "content": content,
        "stop_reason": STOP_REASON_OUT[resp.finish_reason],
        "stop_sequence": None,
        "usage": usage_json(resp.usage or Usage()),
    }


def _answer_input(arguments: str) -> dict[str, Any]:
    if not arguments:
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        value = None
    return value if isinstance(value, dict) else {"_raw_arguments": arguments}


def parse_response(
    body: Mapping[str, Any], *, created: int = 0, json_mode: bool = False
) -> GenerationResponse:
    """A ``message`` body as a ``GenerationResponse`` (Anthropic gives no timestamp: ``created``).

    ``json_mode``: the request asked for JSON output, so a ``json_tool_call`` is the answer's text.
    """
    text: list[str] = []
    reasoning: list[str] = []
    thinking: list[ThinkingBlock] = []
    calls: list[ToolCall] = []
    answered_json = False
    for i, raw in enumerate(req_list(body.get("content"), "content")):
        block = req_obj(raw, f"content.{i}")
        kind = block.get("type")
        if kind == "text":
            text.append(req_str(block.get("text"), f"content.{i}.text"))
        elif kind in ("thinking", "redacted_thinking"):
            thinking.append(parse_thinking_block(block, f"content.{i}"))
            if kind == "thinking":
                reasoning.append(thinking[-1].thinking)
        elif kind == "tool_use" and json_mode and block.get("name") == JSON_TOOL:
            text.append(orjson.dumps(block.get("input") or {}).decode())
            answered_json = True
        elif kind == "tool_use":
            calls.append(
                ToolCall(
                    id=req_str(block.get("id"), f"content.{i}.id"),
                    name=req_str(block.get("name"), f"content.{i}.name"),
                    arguments=orjson.dumps(block.get("input") or {}).decode(),
                )
            )
    finish = STOP_REASON_IN.get(str(body.get("stop_reason")), "stop")
    if finish == "tool_calls" and answered_json and not calls:
        finish = "stop"
    return GenerationResponse(
        id=str(body.get("id") or ""),
        model=str(body.get("model") or ""),
        created=created,
        text="".join(text),
        reasoning="".join(reasoning) if reasoning else None,
        thinking=thinking,
        tool_calls=calls,
        finish_reason=finish,
        usage=parse_usage(body.get("usage")),
    )


# ---- stream: StreamEvents -> Anthropic events ------------------------------------------------


def _event(name: str, obj: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def error_event(error_type: str, message: str) -> bytes:
    """The ``error`` event that ends a stream which failed after it started."""
    return _event("error", {"type": "error", "error": {"type": error_type, "message": message}})


class StreamWriter:
    """``StreamEvent`` in, Anthropic's event sequence out (SSE bytes).

    message_start, ping, then per content block content_block_start / content_block_delta... /
    content_block_stop (thinking, text and tool_use blocks, in the order the answer produced
    them), then at ``end``: message_delta (stop_reason and usage) and message_stop. Finish and
    usage are held until ``end`` because OpenAI upstreams report usage after the finish reason.
    Each tool call is one tool_use block, opened with its id and name, its arguments as
    ``input_json_delta`` fragments, then closed before the next block opens.
    """

    __slots__ = ("_finish", "_index", "_input_tokens", "_kind", "_tool", "_usage")

    def __init__(self, *, input_tokens: int = 0) -> None:
        self._input_tokens = input_tokens  # for message_start, before the upstream has said
        self._index = -1  # index of the open (or last) content block
        self._kind: str | None = None  # "text" | "thinking" | "tool_use" while a block is open
        self._tool = -1  # the tool call the open tool_use block carries
        self._finish: FinishReason | None = None
        self._usage: Usage | None = None

    def write(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            if not event.text:
                return b""
            head = self._open("text", {"type": "text", "text": ""}) if self._kind != "text" else b""
            return head + _event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": self._index,
                    "delta": {"type": "text_delta", "text": event.text},
                },
            )
        if isinstance(event, ToolCallDelta):
            head = b""
            if event.id is not None or self._kind != "tool_use" or event.index != self._tool:
                block = {"type": "tool_use", "id": event.id or "", "name": event.name or "", "input": {}}
                head = self._open("tool_use", block)
                self._tool = event.index
            if not event.arguments:
                return head
            delta = {"type": "input_json_delta", "partial_json": event.arguments}
            return head + _event(
                "content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta}
            )
        if isinstance(event, ReasoningDelta):
            return self._reasoning(event)
        if isinstance(event, Finish):
            self._finish = event.reason
            return b""
        if isinstance(event, UsageReport):
            self._usage = event.usage
            return b""
        message = {
            "id": message_id(event.id),
            "type": "message",
            "role": "assistant",
            "model": event.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self._input_tokens, "output_tokens": 0},
        }
        return _event("message_start", {"type": "message_start", "message": message}) + _event(
            "ping", {"type": "ping"}
        )

    def _reasoning(self, event: ReasoningDelta) -> bytes:
        if event.redacted is not None:  # a whole block: opened with its data, closed by the next
            return self._open("redacted_thinking", {"type": "redacted_thinking", "data": event.redacted})
        if event.text:
            delta: dict[str, Any] = {"type": "thinking_delta", "thinking": event.text}
        elif event.signature is not None:
            delta = {"type": "signature_delta", "signature": event.signature}
        else:
            return b""
        head = b""
        if self._kind != "thinking":
            head = self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        out = head + _event(
            "content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta}
        )
        if event.signature is not None:
            out += self._close()  # the signature ends its block: the next thinking is a new one
        return out

    def end(self) -> bytes:
        """Close the open block, then message_delta and message_stop."""
        usage = usage_json(self._usage) if self._usage is not None else {"output_tokens": 0}
        delta = {"stop_reason": STOP_REASON_OUT[self._finish or "stop"], "stop_sequence": None}
        return (
            self._close()
            + _event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
            + _event("message_stop", {"type": "message_stop"})
        )

    def _open(self, kind: str, block: dict[str, Any]) -> bytes:
        closed = self._close()
        self._index += 1
        self._kind = kind
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        return closed + _event("content_block_start", start)

    def _close(self) -> bytes:
        if self._kind is None:
            return b""
        self._kind = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self._index})


# ---- stream: Anthropic events -> StreamEvents ------------------------------------------------


class StreamParser:
    """Anthropic stream events (SSE data, parsed) in, ``StreamEvent`` out.

    Usage is reported once, at message_stop, with message_start's input counts and
    message_delta's output count. A tool_use block whose input never streamed a fragment gets
    ``{}`` as its arguments at content_block_stop. Tool calls are numbered 0, 1, ... in the
    order their blocks start. With ``json_mode`` the ``json_tool_call`` block streams as text.
    """

    __slots__ = ("_calls", "_created", "_json_mode", "_tools", "_usage")

    def __init__(self, *, created: int = 0, json_mode: bool = False) -> None:
        self._created = created
        self._json_mode = json_mode
        # block index -> [our tool index (-1: the JSON-output tool), whether input has streamed]
        self._tools: dict[int, list[int | bool]] = {}
        self._calls = 0  # tool calls (not counting the JSON-output tool) started so far
        self._usage = Usage()

    def feed_data(self, data: str | bytes) -> list[StreamEvent]:
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise FormatError(f"stream event is not JSON: {exc}") from None
        return self.feed(req_obj(obj, "event"))

    def feed(self, event: Mapping[str, Any]) -> list[StreamEvent]:
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                return [TextDelta(delta.get("text") or "")]
            if dtype == "input_json_delta":
                tool = self._tools.get(event.get("index", 0))
                if tool is None:
                    raise FormatError("input_json_delta for a block that is not a tool_use")
                fragment = delta.get("partial_json") or ""
                if not fragment:
                    return []
                tool[1] = True
                return [self._tool_piece(tool, fragment)]
            if dtype == "thinking_delta":
                return [ReasoningDelta(delta.get("thinking") or "")]
            if dtype == "signature_delta" and isinstance(delta.get("signature"), str):
                return [ReasoningDelta("", signature=delta["signature"])]
            return []  # citations_delta: no slot
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            index = event.get("index", 0)
            if block.get("type") == "tool_use":
                given = block.get("input")
                first = orjson.dumps(given).decode() if given else ""
                if self._json_mode and block.get("name") == JSON_TOOL:
                    self._tools[index] = [-1, bool(given)]
                    return [TextDelta(first)] if first else []
                ours = self._calls
                self._calls += 1
                self._tools[index] = [ours, bool(given)]
                return [ToolCallDelta(ours, first, block.get("id") or "", block.get("name") or "")]
            if block.get("type") == "text" and block.get("text"):
                return [TextDelta(block["text"])]
            if block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str):
                return [ReasoningDelta("", redacted=block["data"])]
            return []
        if kind == "content_block_stop":
            tool = self._tools.get(event.get("index", 0))
            if tool is not None and not tool[1]:
                tool[1] = True
                return [self._tool_piece(tool, "{}")]
            return []
        if kind == "message_start":
            message = event.get("message") or {}
            usage = parse_usage(message.get("usage"))
            if usage is not None:
                self._usage = usage
            return [StreamStart(str(message.get("id") or ""), str(message.get("model") or ""), self._created)]
        if kind == "message_delta":
            self._merge_usage(event.get("usage"))
            reason = (event.get("delta") or {}).get("stop_reason")
            if not reason:
                return []
            finish = STOP_REASON_IN.get(str(reason), "stop")
            if finish == "tool_calls" and self._tools and not self._calls:
                finish = "stop"  # only the JSON-output tool was called: a plain answer
            return [Finish(finish)]
        if kind == "message_stop":
            return [UsageReport(self._usage)]
        if kind == "error":
            err = event.get("error") or {}
            raise StreamError(str(err.get("message") or "upstream error"), err.get("type"))
        return []  # ping, and event types added later

    @staticmethod
    def _tool_piece(tool: list[int | bool], fragment: str) -> StreamEvent:
        ours = int(tool[0])
        return TextDelta(fragment) if ours == -1 else ToolCallDelta(ours, fragment)

    def _merge_usage(self, raw: Any) -> None:
        if not isinstance(raw, Mapping):
            return
        # message_delta carries cumulative counts; input counts only on newer API versions.
        u = self._usage
        out = raw.get("output_tokens")
        if isinstance(out, int):
            u.completion_tokens = out
        if any(
            isinstance(raw.get(k), int)
            for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        ):
            merged = parse_usage({**usage_json(u), **{k: v for k, v in raw.items() if isinstance(v, int)}})
            if merged is not None:
                self._usage = merged
