"""OpenAI Responses API <-> ``providers.schema``, both ways.

Reference: https://platform.openai.com/docs/api-reference/responses/create (request, the
``response`` object, input items) and
https://platform.openai.com/docs/api-reference/responses-streaming (the stream events).

- Client side (the ``/v1/responses`` door): ``parse_input_items`` + ``items_to_messages`` +
  ``parse_request`` a body, ``echo`` the request fields a response repeats, ``build_response`` the
  answer, ``StreamWriter`` the stream. ``store``, ``previous_response_id`` and ``metadata`` are the
  door's business (storage); this module only translates.
- Upstream side (an adapter to a Responses upstream): ``build_request``, ``parse_response``,
  ``StreamParser``.

Output item ids derive from the response id (``resp_X`` -> ``msg_X``, ``fc_X_0``, ``rs_X``), so a
response always names its items the same way and golden tests need no clock or randomness.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from providers.formats.errors import FormatError, StreamError
from providers.formats.fields import opt_bool, opt_int, opt_num, opt_str, req_list, req_obj, req_str
from providers.formats.openai_shapes import function_json, json_schema_json, parse_function, parse_json_schema
from providers.formats.sse import encode_json
from providers.schema import (
    Finish,
    FinishReason,
    GenerationRequest,
    GenerationResponse,
    ImagePart,
    Message,
    Part,
    ReasoningDelta,
    ResponseFormat,
    StreamEvent,
    StreamStart,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    UsageReport,
)
from providers.usage import Usage

FORMAT = "openai_responses"

# Fields with a slot in GenerationRequest, or the door's (storage); every other one goes to ``extra``.
_KNOWN = frozenset(
    {
        "model",
        "input",
        "instructions",
        "stream",
        "max_output_tokens",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "reasoning",
        "user",
        "store",
        "previous_response_id",
        "metadata",
    }
)

_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+);base64,(.*)", re.DOTALL)


# ---- request: client body -> GenerationRequest ----------------------------------------------


def parse_input_items(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``input`` as a list of items (a string is one user message), checked by ``items_to_messages``.

    The items are what the door stores and what ``input_items`` lists back.
    """
    raw = body.get("input")
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}]
    items = req_list(raw, "input")
    for i, item in enumerate(items):
        req_obj(item, f"input.{i}")
    items_to_messages(items, "input")
    return [dict(item) for item in items]


_ITEM_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def listed_input_items(items: list[dict[str, Any]], response_id: str) -> list[dict[str, Any]]:
    """Input items as ``input_items`` lists them: each with an ``id`` (kept, else derived from the
    response id) and ``status``, messages with ``type`` and their content as parts."""
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        kind = item.get("type", "message")
        listed = {
            "id": f"{_ITEM_PREFIX.get(kind, 'item')}_{_suffix(response_id)}_in{i}",
            **item,
            "type": kind,
        }
        if kind == "message" and isinstance(item.get("content"), str):
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            listed["content"] = [{"type": part, "text": item["content"]}]
        listed.setdefault("status", "completed")
        out.append(listed)
    return out


def items_to_messages(items: list[Any], param: str) -> list[Message]:
    """Input (or stored output) items as messages; a ``function_call`` joins the assistant turn before it."""
    messages: list[Message] = []
    for i, raw in enumerate(items):
        where = f"{param}.{i}"
        item = req_obj(raw, where)
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_parse_message(item, where))
        elif kind == "function_call":
            call = ToolCall(
                id=req_str(item.get("call_id"), f"{where}.call_id"),
                name=req_str(item.get("name"), f"{where}.name"),
                arguments=req_str(item.get("arguments"), f"{where}.arguments"),
            )
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                last.tool_calls.append(call)
            else:
                messages.append(Message("assistant", tool_calls=[call]))
        elif kind == "function_call_output":
            call_id = req_str(item.get("call_id"), f"{where}.call_id")
            output = item.get("output")
            parts = [TextPart(output)] if isinstance(output, str) else _parse_parts(output, f"{where}.output")
            messages.append(Message("tool", parts, tool_call_id=call_id))
        elif kind == "reasoning":
            # A model's earlier reasoning: no upstream reached by translation takes it back.
            continue
        else:
            raise FormatError(f"input item type {kind!r} is not supported", f"{where}.type")
    return messages


def _parse_message(item: Mapping[str, Any], param: str) -> Message:
    role = item.get("role")
    content = item.get("content")
    parts = [TextPart(content)] if isinstance(content, str) else _parse_parts(content, f"{param}.content")
    if role in ("system", "developer"):
        return Message("system", parts)
    if role in ("user", "assistant"):
        return Message(role, parts)
    raise FormatError(f"'{param}.role' must be one of user, assistant, system, developer", f"{param}.role")


def _parse_parts(content: Any, param: str) -> list[Part]:
    parts: list[Part] = []
    for i, raw in enumerate(req_list(content, param)):
        part = req_obj(raw, f"{param}.{i}")
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            parts.append(TextPart(req_str(part.get("text"), f"{param}.{i}.text")))
        elif kind == "refusal":
            parts.append(TextPart(req_str(part.get("refusal"), f"{param}.{i}.refusal")))
        elif kind == "input_image":
            url = opt_str(part.get("image_url"), f"{param}.{i}.image_url")
            if url is None:
                raise FormatError(
                    "input_image needs 'image_url' (file_id is not supported)", f"{param}.{i}.image_url"
                )
            detail = opt_str(part.get("detail"), f"{param}.{i}.detail")
            inline = _DATA_URL.fullmatch(url)
            if inline:
                parts.append(ImagePart(data=inline.group(2), media_type=inline.group(1), detail=detail))
            else:
                parts.append(ImagePart(url=url, detail=detail))
        else:
            raise FormatError(f"content part type {kind!r} is not supported", f"{param}.{i}.type")
    return parts


def parse_request(body: Mapping[str, Any], history: list[Message] | None = None) -> GenerationRequest:
    """A Responses request body as a ``GenerationRequest``; ``FormatError`` if invalid.

    ``history`` is the stored conversation of ``previous_response_id`` (the door reads it): it
    comes after ``instructions`` (which are never carried over) and before this ``input``.
    """
    model = req_str(body.get("model"), "model")
    messages: list[Message] = []
    instructions = opt_str(body.get("instructions"), "instructions")
    if instructions is not None:
        messages.append(Message("system", [TextPart(instructions)]))
    messages += history or []
    messages += items_to_messages(parse_input_items(body), "input")
    reasoning = body.get("reasoning")
    effort = (
        None
        if reasoning is None
        else opt_str(req_obj(reasoning, "reasoning").get("effort"), "reasoning.effort")
    )
    return GenerationRequest(
        model=model,
        messages=messages,
        stream=bool(opt_bool(body.get("stream"), "stream")),
        max_tokens=opt_int(body.get("max_output_tokens"), "max_output_tokens"),
        temperature=opt_num(body.get("temperature"), "temperature"),
        top_p=opt_num(body.get("top_p"), "top_p"),
        tools=[
            _parse_tool(t, f"tools.{i}") for i, t in enumerate(req_list(body.get("tools") or [], "tools"))
        ],
        tool_choice=_parse_tool_choice(body.get("tool_choice")),
        parallel_tool_calls=opt_bool(body.get("parallel_tool_calls"), "parallel_tool_calls"),
        response_format=_parse_text_format(body.get("text")),
        user=opt_str(body.get("user"), "user"),
        reasoning=None if effort is None else {"effort": effort},
        extra={k: v for k, v in body.items() if k not in _KNOWN},
        source_format=FORMAT,
    )


def _parse_tool(raw: Any, param: str) -> Tool:
    tool = req_obj(raw, param)
    if tool.get("type") != "function":
        raise FormatError(
            f"tool type {tool.get('type')!r} is not supported (only 'function')", f"{param}.type"
        )
    return parse_function(tool, param)


def _parse_tool_choice(raw: Any) -> str | None:
    if raw is None or raw in ("auto", "none", "required"):
        return raw
    choice = req_obj(raw, "tool_choice")
    if choice.get("type") != "function":
        raise FormatError("'tool_choice' must be auto, none, required or a function", "tool_choice")
    return req_str(choice.get("name"), "tool_choice.name")


def _parse_text_format(raw: Any) -> ResponseFormat | None:
    if raw is None:
        return None
    fmt_raw = req_obj(raw, "text").get("format")
    if fmt_raw is None:
        return None
    fmt = req_obj(fmt_raw, "text.format")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return ResponseFormat(kind)
    if kind == "json_schema":
        return parse_json_schema(fmt, "text.format")
    raise FormatError("'text.format.type' must be text, json_object or json_schema", "text.format.type")


def echo(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request fields a ``response`` object repeats, with OpenAI's defaults (body already parsed)."""
    reasoning = body.get("reasoning") or {}
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": list(body.get("tools") or []),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


# ---- request: GenerationRequest -> upstream body --------------------------------------------


def build_request(req: GenerationRequest) -> dict[str, Any]:
    """A Responses body for an upstream; nothing is stored there (the gateway keeps the state)."""
    items: list[dict[str, Any]] = []
    for msg in req.messages:
        items += _message_items(msg)
    body: dict[str, Any] = {"model": req.model, "input": items, "store": False}
    if req.stream:
        body["stream"] = True
    if req.max_tokens is not None:
        body["max_output_tokens"] = req.max_tokens
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.tools:
        body["tools"] = [_tool_json(t) for t in req.tools]
    if req.tool_choice is not None:
        body["tool_choice"] = (
            req.tool_choice
            if req.tool_choice in ("auto", "none", "required")
            else {"type": "function", "name": req.tool_choice}
        )
    if req.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.response_format is not None:
        body["text"] = {"format": _text_format_json(req.response_format)}
    if req.user is not None:
        body["user"] = req.user
    if req.reasoning and "effort" in req.reasoning:
        body["reasoning"] = {"effort": req.reasoning["effort"]}
    if req.source_format == FORMAT:
        for key, value in req.extra.items():
            body.setdefault(key, value)
    return body


def _message_items(msg: Message) -> list[dict[str, Any]]:
    if msg.role == "tool":
        return [{"type": "function_call_output", "call_id": msg.tool_call_id, "output": msg.text()}]
    items: list[dict[str, Any]] = []
    if msg.role == "assistant":
        if msg.content:
            items.append(
                {
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": msg.text(), "annotations": []}],
                }
            )
        items += [
            {"type": "function_call", "call_id": c.id, "name": c.name, "arguments": c.arguments}
            for c in msg.tool_calls
        ]
        return items
    role = "developer" if msg.role == "system" else "user"
    return [{"type": "message", "role": role, "content": [_part_json(p) for p in msg.content]}]


def _part_json(part: Part) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "input_text", "text": part.text}
    url = part.url if part.url is not None else f"data:{part.media_type};base64,{part.data}"
    return {"type": "input_image", "image_url": url, "detail": part.detail or "auto"}


def _tool_json(tool: Tool) -> dict[str, Any]:
    return {"type": "function", **function_json(tool)}


def _text_format_json(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.type != "json_schema":
        return {"type": fmt.type}
    return {"type": "json_schema", **json_schema_json(fmt)}


# ---- usage ----------------------------------------------------------------------------------


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    }


def parse_usage(raw: Any) -> Usage | None:
    """``Usage`` from a Responses ``usage`` object; None when absent or malformed."""
    if not isinstance(raw, Mapping):
        return None
    prompt = raw.get("input_tokens") or 0
    completion = raw.get("output_tokens") or 0
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    details = raw.get("input_tokens_details")
    details = details if isinstance(details, Mapping) else {}
    cached = details.get("cached_tokens") or 0
    written = details.get("cache_write_tokens") or 0
    return Usage(
        prompt,
        completion,
        cache_read_tokens=cached if isinstance(cached, int) else 0,
        cache_write_tokens=written if isinstance(written, int) else 0,
    )


# ---- response -------------------------------------------------------------------------------


def _suffix(response_id: str) -> str:
    return response_id.removeprefix("resp_")


def _status(reason: FinishReason) -> tuple[str, dict[str, Any] | None]:
    """The response's ``status`` and ``incomplete_details`` for a finish reason."""
    if reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    if reason == "error":
        return "failed", None
    return "completed", None


def _reasoning_item(response_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": f"rs_{_suffix(response_id)}",
        "type": "reasoning",
        "status": status,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}] if status != "in_progress" else [],
    }


def _message_item(response_id: str, text: str, status: str) -> dict[str, Any]:
    return {
        "id": f"msg_{_suffix(response_id)}",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        if status != "in_progress"
        else [],
    }


def _call_item(response_id: str, index: int, call: ToolCall, status: str) -> dict[str, Any]:
    return {
        "id": f"fc_{_suffix(response_id)}_{index}",
        "type": "function_call",
        "status": status,
        "arguments": call.arguments,
        "call_id": call.id,
        "name": call.name,
    }


def output_items(resp: GenerationResponse, response_id: str) -> list[dict[str, Any]]:
    """The ``output`` array of a complete answer: reasoning, then the message, then function calls."""
    status = "incomplete" if resp.finish_reason in ("length", "content_filter") else "completed"
    items: list[dict[str, Any]] = []
    if resp.reasoning:
        items.append(_reasoning_item(response_id, resp.reasoning, status))
    if resp.text or not resp.tool_calls:
        items.append(_message_item(response_id, resp.text, status))
    items += [_call_item(response_id, i, c, "completed") for i, c in enumerate(resp.tool_calls)]
    return items


def response_object(
    *,
    response_id: str,
    created_at: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    echoed: Mapping[str, Any],
    usage: Usage | None,
    incomplete_details: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A ``response`` object, fields in the order of OpenAI's reference."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": incomplete_details,
        "instructions": echoed["instructions"],
        "max_output_tokens": echoed["max_output_tokens"],
        "model": model,
        "output": output,
        "parallel_tool_calls": echoed["parallel_tool_calls"],
        "previous_response_id": echoed["previous_response_id"],
        "reasoning": echoed["reasoning"],
        "store": echoed["store"],
        "temperature": echoed["temperature"],
        "text": echoed["text"],
        "tool_choice": echoed["tool_choice"],
        "tools": echoed["tools"],
        "top_p": echoed["top_p"],
        "truncation": echoed["truncation"],
        "usage": None if usage is None else usage_json(usage),
        "user": echoed["user"],
        "metadata": echoed["metadata"],
    }


def build_response(
    resp: GenerationResponse, *, response_id: str, created_at: int, echoed: Mapping[str, Any]
) -> dict[str, Any]:
    """A ``response`` object for a complete answer; ``echoed`` comes from ``echo(body)``."""
    status, incomplete = _status(resp.finish_reason)
    error = {"code": "server_error", "message": "the model failed to answer"} if status == "failed" else None
    return response_object(
        response_id=response_id,
        created_at=created_at,
        model=resp.model,
        status=status,
        output=output_items(resp, response_id),
        echoed=echoed,
        usage=resp.usage,
        incomplete_details=incomplete,
        error=error,
    )


def parse_response(body: Mapping[str, Any]) -> GenerationResponse:
    """A ``response`` object from a Responses upstream as a ``GenerationResponse``."""
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    for i, raw in enumerate(req_list(body.get("output"), "output")):
        item = req_obj(raw, f"output.{i}")
        kind = item.get("type")
        if kind == "message":
            for j, part in enumerate(req_list(item.get("content"), f"output.{i}.content")):
                part = req_obj(part, f"output.{i}.content.{j}")
                if part.get("type") == "output_text":
                    text.append(req_str(part.get("text"), f"output.{i}.content.{j}.text"))
        elif kind == "function_call":
            calls.append(
                ToolCall(
                    id=req_str(item.get("call_id"), f"output.{i}.call_id"),
                    name=req_str(item.get("name"), f"output.{i}.name"),
                    arguments=req_str(item.get("arguments"), f"output.{i}.arguments"),
                )
            )
        elif kind == "reasoning":
            for piece in item.get("content") or item.get("summary") or ():
                if isinstance(piece, Mapping) and isinstance(piece.get("text"), str):
                    reasoning.append(piece["text"])
    created = body.get("created_at")
    return GenerationResponse(
        id=str(body.get("id") or ""),
        model=str(body.get("model") or ""),
        created=int(created) if isinstance(created, int | float) else 0,
        text="".join(text),
        reasoning="".join(reasoning) if reasoning else None,
        tool_calls=calls,
        finish_reason=_finish_of(body, bool(calls)),
        usage=parse_usage(body.get("usage")),
    )


def _finish_of(body: Mapping[str, Any], has_calls: bool) -> FinishReason:
    status = body.get("status")
    if status == "incomplete":
        details = body.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, Mapping) else None
        return "content_filter" if reason == "content_filter" else "length"
    if status == "failed":
        return "error"
    return "tool_calls" if has_calls else "stop"


# ---- stream: upstream events -> StreamEvents -------------------------------------------------


class StreamParser:
    """Responses stream events (SSE data, parsed) in, ``StreamEvent`` out, in order.

    Function calls get this answer's own indexes (0, 1, ...) by order of their ``output_index``.
    """

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[int, int] = {}  # output_index -> our tool-call index

    def feed(self, event: Mapping[str, Any]) -> list[StreamEvent]:
        kind = event.get("type")
        if kind == "response.created":
            resp = req_obj(event.get("response"), "response")
            created = resp.get("created_at")
            return [
                StreamStart(
                    id=str(resp.get("id") or ""),
                    model=str(resp.get("model") or ""),
                    created=int(created) if isinstance(created, int | float) else 0,
                )
            ]
        if kind == "response.output_text.delta":
            return [TextDelta(str(event.get("delta") or ""))]
        if kind in ("response.reasoning_text.delta", "response.reasoning_summary_text.delta"):
            return [ReasoningDelta(str(event.get("delta") or ""))]
        if kind == "response.output_item.added":
            item = req_obj(event.get("item"), "item")
            if item.get("type") != "function_call":
                return []
            ours = self._calls[event.get("output_index", -1)] = len(self._calls)
            return [
                ToolCallDelta(
                    ours,
                    str(item.get("arguments") or ""),
                    str(item.get("call_id") or ""),
                    str(item.get("name") or ""),
                )
            ]
        if kind == "response.function_call_arguments.delta":
            ours = self._calls.get(event.get("output_index", -1))
            if ours is None:
                raise FormatError("function_call_arguments.delta for an item never added")
            return [ToolCallDelta(ours, str(event.get("delta") or ""))]
        if kind in ("response.completed", "response.incomplete"):
            resp = req_obj(event.get("response"), "response")
            events: list[StreamEvent] = [Finish(_finish_of(resp, bool(self._calls)))]
            usage = parse_usage(resp.get("usage"))
            if usage is not None:
                events.append(UsageReport(usage))
            return events
        if kind in ("response.failed", "error"):
            resp = event.get("response")
            err = resp.get("error") if isinstance(resp, Mapping) else event
            err = err if isinstance(err, Mapping) else {}
            raise StreamError(str(err.get("message") or "upstream error"), err.get("type"), err.get("code"))
        return []


# ---- stream: StreamEvents -> Responses events ------------------------------------------------


@dataclass(slots=True)
class _OpenItem:
    """The output item being streamed: its place, kind and what it has accumulated."""

    output_index: int
    kind: str  # "reasoning", "message", "function_call"
    text: list[str] = field(default_factory=list)
    call: ToolCall | None = None
    call_index: int = 0


class StreamWriter:
    """``StreamEvent`` in, SSE-framed Responses events out (``event:`` name + JSON ``data:``).

    The order is the documented one: ``response.created``, ``response.in_progress``; per output
    item ``output_item.added`` (+ ``content_part.added``), its deltas, then its ``.done`` events
    and ``output_item.done``; last ``response.completed`` (``response.incomplete`` when the answer
    was cut at ``max_output_tokens``), written by ``end`` with the usage. Every event carries a
    ``sequence_number`` from 0. ``output`` and ``response`` are what was streamed, for storage.
    """

    __slots__ = (
        "_created_at",
        "_echoed",
        "_finish",
        "_id",
        "_model",
        "_open",
        "_seq",
        "_usage",
        "output",
        "response",
    )

    def __init__(self, *, response_id: str, created_at: int, model: str, echoed: Mapping[str, Any]) -> None:
        self._id = response_id
        self._created_at = created_at
        self._model = model
        self._echoed = echoed
        self._seq = 0
        self._open: _OpenItem | None = None
        self._finish: FinishReason | None = None
        self._usage: Usage | None = None
        self.output: list[dict[str, Any]] = []
        self.response: dict[str, Any] | None = None

    def write(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            out = self._enter("message")
            assert self._open is not None
            self._open.text.append(event.text)
            return out + self._event(
                "response.output_text.delta",
                item_id=self._item_id(self._open),
                output_index=self._open.output_index,
                content_index=0,
                delta=event.text,
                logprobs=[],
            )
        if isinstance(event, ToolCallDelta):
            out = b""
            if event.id is not None:
                out = self._close()
                call = ToolCall(event.id, event.name or "", "")
                self._open = _OpenItem(len(self.output), "function_call", call=call, call_index=event.index)
                out += self._event(
                    "response.output_item.added",
                    output_index=self._open.output_index,
                    item=_call_item(self._id, event.index, call, "in_progress"),
                )
            opened = self._open
            if opened is None or opened.call is None:
                raise FormatError("tool call arguments before the call started")
            if not event.arguments:
                return out
            opened.call.arguments += event.arguments
            return out + self._event(
                "response.function_call_arguments.delta",
                item_id=self._item_id(opened),
                output_index=opened.output_index,
                delta=event.arguments,
            )
        if isinstance(event, ReasoningDelta):
            if not event.text:
                return b""  # a thinking block's signature or redacted data: no Responses slot
            out = self._enter("reasoning")
            assert self._open is not None
            self._open.text.append(event.text)
            return out + self._event(
                "response.reasoning_text.delta",
                item_id=self._item_id(self._open),
                output_index=self._open.output_index,
                content_index=0,
                delta=event.text,
            )
        if isinstance(event, Finish):
            self._finish = event.reason
            return self._close()
        if isinstance(event, UsageReport):
            self._usage = event.usage
            return b""
        # StreamStart: the upstream's name for the model (the answer keeps the gateway's id).
        if event.model:
            self._model = event.model
        snapshot = self._snapshot("in_progress", [], None)
        return self._event("response.created", response=snapshot) + self._event(
            "response.in_progress", response=snapshot
        )

    def end(self) -> bytes:
        """Close what is open and write the final ``response.*`` event (nothing like ``[DONE]`` follows)."""
        out = self._close()
        reason = self._finish or "stop"
        status, incomplete = _status(reason)
        error = (
            {"code": "server_error", "message": "the model failed to answer"} if status == "failed" else None
        )
        self.response = response_object(
            response_id=self._id,
            created_at=self._created_at,
            model=self._model,
            status=status,
            output=self.output,
            echoed=self._echoed,
            usage=self._usage,
            incomplete_details=incomplete,
            error=error,
        )
        name = {"completed": "response.completed", "incomplete": "response.incomplete"}.get(
            status, "response.failed"
        )
        return out + self._event(name, response=self.response)

    # -- items --

    def _item_id(self, item: _OpenItem) -> str:
        prefix = {"reasoning": "rs", "message": "msg"}.get(item.kind)
        if prefix is None:
            return f"fc_{_suffix(self._id)}_{item.call_index}"
        return f"{prefix}_{_suffix(self._id)}"

    def _enter(self, kind: str) -> bytes:
        """Open an item of ``kind`` unless one is open (closing another kind first)."""
        if self._open is not None and self._open.kind == kind:
            return b""
        out = self._close()
        self._open = _OpenItem(len(self.output), kind)
        item_id = self._item_id(self._open)
        if kind == "message":
            item = _message_item(self._id, "", "in_progress")
            part: dict[str, Any] = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        else:
            item = _reasoning_item(self._id, "", "in_progress")
            part = {"type": "reasoning_text", "text": ""}
        index = self._open.output_index
        return (
            out
            + self._event("response.output_item.added", output_index=index, item=item)
            + self._event(
                "response.content_part.added", item_id=item_id, output_index=index, content_index=0, part=part
            )
        )

    def _close(self) -> bytes:
        item, self._open = self._open, None
        if item is None:
            return b""
        status = "incomplete" if self._finish in ("length", "content_filter") else "completed"
        item_id = self._item_id(item)
        index = item.output_index
        if item.kind == "function_call":
            assert item.call is not None
            done = _call_item(self._id, item.call_index, item.call, "completed")
            self.output.append(done)
            return self._event(
                "response.function_call_arguments.done",
                item_id=item_id,
                output_index=index,
                arguments=item.call.arguments,
            ) + self._event("response.output_item.done", output_index=index, item=done)
        text = "".join(item.text)
        if item.kind == "message":
            done = _message_item(self._id, text, status)
            text_done = self._event(
                "response.output_text.done",
                item_id=item_id,
                output_index=index,
                content_index=0,
                text=text,
                logprobs=[],
            )
        else:
            done = _reasoning_item(self._id, text, status)
            text_done = self._event(
                "response.reasoning_text.done",
                item_id=item_id,
                output_index=index,
                content_index=0,
                text=text,
            )
        self.output.append(done)
        return (
            text_done
            + self._event(
                "response.content_part.done",
                item_id=item_id,
                output_index=index,
                content_index=0,
                part=done["content"][0],
            )
            + self._event("response.output_item.done", output_index=index, item=done)
        )

    def _snapshot(self, status: str, output: list[dict[str, Any]], usage: Usage | None) -> dict[str, Any]:
        return response_object(
            response_id=self._id,
            created_at=self._created_at,
            model=self._model,
            status=status,
            output=output,
            echoed=self._echoed,
            usage=usage,
        )

    def _event(self, name: str, **fields: Any) -> bytes:
        obj = {"type": name, "sequence_number": self._seq, **fields}
        self._seq += 1
        return encode_json(obj, name)
