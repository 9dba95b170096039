"""OpenAI Chat Completions <-> ``providers.schema``, both ways.

Reference: https://platform.openai.com/docs/api-reference/chat (request, ``chat.completion``) and
https://platform.openai.com/docs/api-reference/chat-streaming (``chat.completion.chunk``).

- Client side (a door): ``parse_request`` a body, ``build_response`` the answer, ``StreamWriter``
  the stream.
- Upstream side (an adapter): ``build_request`` a body, ``parse_response`` the answer,
  ``StreamParser`` the stream chunks.

OpenAI-compatible servers (vLLM, DeepSeek, llama.cpp) stream reasoning as ``reasoning_content``;
it is read (``reasoning`` too) and written under that name.

Anthropic's signed thinking blocks have no slot in OpenAI's format; they travel as LiteLLM carries
them (https://docs.litellm.ai/docs/reasoning_content): ``thinking_blocks`` on the assistant
message (``[{"type": "thinking", "thinking", "signature"}]`` or ``{"type": "redacted_thinking",
"data"}``), written on answers and read from the history a client sends back. In a stream the
text comes as ``reasoning_content`` deltas and each block's signature in a chunk of its own,
``delta.thinking_blocks: [{"type": "thinking", "thinking": "", "signature"}]``, which ends that
block. They are not sent to OpenAI-format upstreams (``build_request``), which have no such field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from providers.formats.anthropic_messages import parse_thinking_block, thinking_block_json
from providers.formats.errors import FormatError, StreamError
from providers.formats.fields import opt_bool, opt_int, opt_num, opt_str, req_list, req_obj, req_str
from providers.formats.openai_shapes import function_json, json_schema_json, parse_function, parse_json_schema
from providers.formats.sse import DONE
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
    ThinkingBlock,
    Tool,
    ToolCall,
    ToolCallDelta,
    UsageReport,
)
from providers.usage import Usage

FORMAT = "openai_chat"

# Fields with a slot in GenerationRequest; every other top-level field goes to ``extra``.
_KNOWN = frozenset(
    {
        "model",
        "messages",
        "stream",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "seed",
        "user",
        "reasoning_effort",
    }
)

_FINISH_IN: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",  # the deprecated single-function form
    "content_filter": "content_filter",
    "error": "error",
}

_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+);base64,(.*)", re.DOTALL)


# ---- request: client body -> GenerationRequest ----------------------------------------------


def parse_request(body: Mapping[str, Any]) -> GenerationRequest:
    """A Chat Completions request body as a ``GenerationRequest``; ``FormatError`` if invalid."""
    model = req_str(body.get("model"), "model")
    raw_messages = req_list(body.get("messages"), "messages")
    if not raw_messages:
        raise FormatError("'messages' must not be empty", "messages")
    messages = [_parse_message(m, f"messages.{i}") for i, m in enumerate(raw_messages)]
    max_tokens = opt_int(body.get("max_completion_tokens"), "max_completion_tokens")
    if max_tokens is None:
        max_tokens = opt_int(body.get("max_tokens"), "max_tokens")
    stop = body.get("stop")
    if isinstance(stop, str):
        stops = [stop]
    elif stop is None:
        stops = []
    else:
        stops = [req_str(s, f"stop.{i}") for i, s in enumerate(req_list(stop, "stop"))]
    effort = opt_str(body.get("reasoning_effort"), "reasoning_effort")
    return GenerationRequest(
        model=model,
        messages=messages,
        stream=bool(opt_bool(body.get("stream"), "stream")),
        max_tokens=max_tokens,
        temperature=opt_num(body.get("temperature"), "temperature"),
        top_p=opt_num(body.get("top_p"), "top_p"),
        stop=stops,
        tools=[
            _parse_tool(t, f"tools.{i}") for i, t in enumerate(req_list(body.get("tools") or [], "tools"))
        ],
        tool_choice=_parse_tool_choice(body.get("tool_choice")),
        parallel_tool_calls=opt_bool(body.get("parallel_tool_calls"), "parallel_tool_calls"),
        response_format=_parse_response_format(body.get("response_format")),
        seed=opt_int(body.get("seed"), "seed"),
        user=opt_str(body.get("user"), "user"),
        reasoning=None if effort is None else {"effort": effort},
        extra={k: v for k, v in body.items() if k not in _KNOWN},
        source_format=FORMAT,
    )


def _parse_message(raw: Any, param: str) -> Message:
    msg = req_obj(raw, param)
    role = msg.get("role")
    content = msg.get("content")
    if role in ("system", "developer"):
        return Message("system", _parse_content(content, f"{param}.content"), name=msg.get("name"))
    if role == "user":
        return Message("user", _parse_content(content, f"{param}.content"), name=msg.get("name"))
    if role == "assistant":
        parts = [] if content is None else _parse_content(content, f"{param}.content")
        calls = [
            _parse_tool_call(c, f"{param}.tool_calls.{i}")
            for i, c in enumerate(req_list(msg.get("tool_calls") or [], f"{param}.tool_calls"))
        ]
        thinking = _parse_thinking_blocks(msg.get("thinking_blocks"), f"{param}.thinking_blocks")
        return Message("assistant", parts, tool_calls=calls, thinking=thinking, name=msg.get("name"))
    if role == "tool":
        call_id = req_str(msg.get("tool_call_id"), f"{param}.tool_call_id")
        return Message("tool", _parse_content(content, f"{param}.content"), tool_call_id=call_id)
    raise FormatError(
        f"'{param}.role' must be one of system, developer, user, assistant, tool", f"{param}.role"
    )


def _parse_thinking_blocks(raw: Any, param: str) -> list[ThinkingBlock]:
    if raw is None:
        return []
    blocks = []
    for i, item in enumerate(req_list(raw, param)):
        block = req_obj(item, f"{param}.{i}")
        if block.get("type") not in ("thinking", "redacted_thinking"):
            raise FormatError(
                f"'{param}.{i}.type' must be 'thinking' or 'redacted_thinking'", f"{param}.{i}.type"
            )
        blocks.append(parse_thinking_block(block, f"{param}.{i}"))
    return blocks


def _parse_content(content: Any, param: str) -> list[Part]:
    if isinstance(content, str):
        return [TextPart(content)]
    parts: list[Part] = []
    for i, raw in enumerate(req_list(content, param)):
        part = req_obj(raw, f"{param}.{i}")
        kind = part.get("type")
        if kind == "text":
            parts.append(TextPart(req_str(part.get("text"), f"{param}.{i}.text"), part.get("cache_control")))
        elif kind == "image_url":
            image = req_obj(part.get("image_url"), f"{param}.{i}.image_url")
            url = req_str(image.get("url"), f"{param}.{i}.image_url.url")
            detail = opt_str(image.get("detail"), f"{param}.{i}.image_url.detail")
            inline = _DATA_URL.fullmatch(url)
            if inline:
                parts.append(ImagePart(data=inline.group(2), media_type=inline.group(1), detail=detail))
            else:
                parts.append(ImagePart(url=url, detail=detail))
        else:
            raise FormatError(f"content part type {kind!r} is not supported", f"{param}.{i}.type")
    return parts


def _parse_tool_call(raw: Any, param: str) -> ToolCall:
    call = req_obj(raw, param)
    fn = req_obj(call.get("function"), f"{param}.function")
    return ToolCall(
        id=req_str(call.get("id"), f"{param}.id"),
        name=req_str(fn.get("name"), f"{param}.function.name"),
        arguments=req_str(fn.get("arguments", ""), f"{param}.function.arguments"),
    )


def _parse_tool(raw: Any, param: str) -> Tool:
    tool = req_obj(raw, param)
    if tool.get("type") != "function":
        raise FormatError(f"'{param}.type' must be 'function'", f"{param}.type")
    return parse_function(req_obj(tool.get("function"), f"{param}.function"), f"{param}.function")


def _parse_tool_choice(raw: Any) -> str | None:
    if raw is None or raw in ("auto", "none", "required"):
        return raw
    choice = req_obj(raw, "tool_choice")
    if choice.get("type") != "function":
        raise FormatError("'tool_choice' must be auto, none, required or a function", "tool_choice")
    fn = req_obj(choice.get("function"), "tool_choice.function")
    return req_str(fn.get("name"), "tool_choice.function.name")


def _parse_response_format(raw: Any) -> ResponseFormat | None:
    if raw is None:
        return None
    fmt = req_obj(raw, "response_format")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return ResponseFormat(kind)
    if kind == "json_schema":
        param = "response_format.json_schema"
        return parse_json_schema(req_obj(fmt.get("json_schema"), param), param)
    raise FormatError(
        "'response_format.type' must be text, json_object or json_schema", "response_format.type"
    )


# ---- request: GenerationRequest -> upstream body --------------------------------------------


def build_request(req: GenerationRequest) -> dict[str, Any]:
    """A Chat Completions body for an upstream. Streams ask for the usage chunk."""
    body: dict[str, Any] = {"model": req.model, "messages": [_message_json(m) for m in req.messages]}
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if req.max_tokens is not None:
        body["max_tokens"] = req.max_tokens
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.stop:
        body["stop"] = list(req.stop)
    if req.tools:
        body["tools"] = [_tool_json(t) for t in req.tools]
    if req.tool_choice is not None:
        body["tool_choice"] = (
            req.tool_choice
            if req.tool_choice in ("auto", "none", "required")
            else {"type": "function", "function": {"name": req.tool_choice}}
        )
    if req.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.response_format is not None:
        body["response_format"] = _response_format_json(req.response_format)
    if req.seed is not None:
        body["seed"] = req.seed
    if req.user is not None:
        body["user"] = req.user
    if req.reasoning and "effort" in req.reasoning:
        body["reasoning_effort"] = req.reasoning["effort"]
    if req.source_format == FORMAT:
        for key, value in req.extra.items():
            body.setdefault(key, value)
    return body


def _message_json(msg: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": msg.role}
    if msg.role == "tool":
        out["tool_call_id"] = msg.tool_call_id
        out["content"] = msg.text()
        return out
    if msg.role == "assistant":
        out["content"] = msg.text() if msg.content else None
        if msg.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in msg.tool_calls
            ]
    elif all(isinstance(p, TextPart) for p in msg.content):
        # Plain text as a string: every OpenAI-compatible server takes it (not all take parts).
        out["content"] = msg.text()
    else:
        out["content"] = [_part_json(p) for p in msg.content]
    if msg.name is not None:
        out["name"] = msg.name
    return out


def _part_json(part: Part) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    url = part.url if part.url is not None else f"data:{part.media_type};base64,{part.data}"
    image: dict[str, Any] = {"url": url}
    if part.detail is not None:
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}


def _tool_json(tool: Tool) -> dict[str, Any]:
    return {"type": "function", "function": function_json(tool)}


def _response_format_json(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.type != "json_schema":
        return {"type": fmt.type}
    return {"type": "json_schema", "json_schema": json_schema_json(fmt)}


# ---- usage ----------------------------------------------------------------------------------


def parse_usage(raw: Any) -> Usage | None:
    """``Usage`` from an OpenAI ``usage`` object; None when absent or malformed."""
    if not isinstance(raw, Mapping):
        return None
    prompt = raw.get("prompt_tokens") or 0
    completion = raw.get("completion_tokens") or 0
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    details = raw.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, Mapping) else 0
    return Usage(prompt, completion, cache_read_tokens=cached if isinstance(cached, int) else 0)


def usage_json(usage: Usage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cache_read_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cache_read_tokens}
    return out


# ---- response -------------------------------------------------------------------------------


def build_response(resp: GenerationResponse) -> dict[str, Any]:
    """A ``chat.completion`` body."""
    message: dict[str, Any] = {"role": "assistant", "content": resp.text or None}
    if resp.reasoning is not None:
        message["reasoning_content"] = resp.reasoning
    if resp.thinking:
        message["thinking_blocks"] = [thinking_block_json(b) for b in resp.thinking]
    if resp.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in resp.tool_calls
        ]
    body: dict[str, Any] = {
        "id": resp.id,
        "object": "chat.completion",
        "created": resp.created,
        "model": resp.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": resp.finish_reason}],
    }
    if resp.usage is not None:
        body["usage"] = usage_json(resp.usage)
    return body


def parse_response(body: Mapping[str, Any]) -> GenerationResponse:
    """A ``chat.completion`` body (its first choice) as a ``GenerationResponse``."""
    choices = req_list(body.get("choices"), "choices")
    if not choices:
        raise FormatError("'choices' is empty", "choices")
    choice = req_obj(choices[0], "choices.0")
    message = req_obj(choice.get("message"), "choices.0.message")
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    if isinstance(content, list):
        text = "".join(
            p.text for p in _parse_content(content, "choices.0.message.content") if isinstance(p, TextPart)
        )
    reasoning = message.get("reasoning_content", message.get("reasoning"))
    calls = [
        _parse_tool_call(c, f"choices.0.message.tool_calls.{i}")
        for i, c in enumerate(req_list(message.get("tool_calls") or [], "choices.0.message.tool_calls"))
    ]
    created = body.get("created")
    return GenerationResponse(
        id=str(body.get("id") or ""),
        model=str(body.get("model") or ""),
        created=created if isinstance(created, int) else 0,
        text=text,
        reasoning=reasoning if isinstance(reasoning, str) else None,
        thinking=_parse_thinking_blocks(message.get("thinking_blocks"), "choices.0.message.thinking_blocks"),
        tool_calls=calls,
        finish_reason=_FINISH_IN.get(str(choice.get("finish_reason")), "stop"),
        usage=parse_usage(body.get("usage")),
    )


# ---- stream: upstream chunks -> StreamEvents -------------------------------------------------


class StreamParser:
    """``chat.completion.chunk`` objects (SSE data, parsed) in, ``StreamEvent`` out, in order.

    Emits ``StreamStart`` before anything else; tool-call pieces get this answer's own indexes
    (0, 1, ... in order of appearance), whatever indexes the upstream used. Calls must arrive one
    after another, as OpenAI and vLLM send them: a piece of an earlier call after a later one
    started is a ``FormatError`` rather than a silently garbled call.
    """

    __slots__ = ("_current", "_indexes", "_started")

    def __init__(self) -> None:
        self._started = False
        self._indexes: dict[int, int] = {}  # upstream index -> ours
        self._current = -1  # our index of the call being streamed

    def feed_data(self, data: str | bytes) -> list[StreamEvent]:
        """One SSE ``data`` payload; ``[DONE]`` gives nothing."""
        if data in ("[DONE]", b"[DONE]"):
            return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise FormatError(f"stream chunk is not JSON: {exc}") from None
        return self.feed(req_obj(chunk, "chunk"))

    def feed(self, chunk: Mapping[str, Any]) -> list[StreamEvent]:
        error = chunk.get("error")
        if error is not None:
            err = error if isinstance(error, Mapping) else {"message": str(error)}
            raise StreamError(str(err.get("message") or "upstream error"), err.get("type"), err.get("code"))
        events: list[StreamEvent] = []
        if not self._started:
            self._started = True
            created = chunk.get("created")
            events.append(
                StreamStart(
                    id=str(chunk.get("id") or ""),
                    model=str(chunk.get("model") or ""),
                    created=created if isinstance(created, int) else 0,
                )
            )
        choices = chunk.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if reasoning:
                events.append(ReasoningDelta(reasoning))
            for block in delta.get("thinking_blocks") or ():
                # The text already came as reasoning_content: only a block's end is read here.
                if isinstance(block, Mapping) and isinstance(block.get("data"), str):
                    events.append(ReasoningDelta("", redacted=block["data"]))
                elif isinstance(block, Mapping) and isinstance(block.get("signature"), str):
                    events.append(ReasoningDelta("", signature=block["signature"]))
            text = delta.get("content")
            if text:
                events.append(TextDelta(text))
            for piece in delta.get("tool_calls") or ():
                events.append(self._tool_piece(piece))
            finish = choice.get("finish_reason")
            if finish:
                events.append(Finish(_FINISH_IN.get(finish, "stop")))
        usage = parse_usage(chunk.get("usage"))
        if usage is not None:
            events.append(UsageReport(usage))
        return events

    def _tool_piece(self, piece: Mapping[str, Any]) -> ToolCallDelta:
        upstream_index = piece.get("index", 0)
        fn = piece.get("function") or {}
        ours = self._indexes.get(upstream_index)
        if ours is None:
            ours = self._indexes[upstream_index] = len(self._indexes)
            self._current = ours
            return ToolCallDelta(ours, fn.get("arguments") or "", piece.get("id") or "", fn.get("name") or "")
        if ours != self._current:
            raise FormatError("upstream interleaved the pieces of parallel tool calls")
        return ToolCallDelta(ours, fn.get("arguments") or "")


# ---- stream: StreamEvents -> chat.completion.chunk events ------------------------------------


class StreamWriter:
    """``StreamEvent`` in, SSE-framed ``chat.completion.chunk`` bytes out; ``end`` gives ``[DONE]``.

    The usage chunk (no choices) is written only when the client asked for it
    (``stream_options.include_usage``).
    """

    __slots__ = ("_created", "_id", "_include_usage", "_model")

    def __init__(self, *, include_usage: bool, id: str = "", model: str = "", created: int = 0) -> None:
        self._include_usage = include_usage
        self._id = id
        self._model = model
        self._created = created

    def write(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            return self._chunk({"content": event.text})
        if isinstance(event, ToolCallDelta):
            piece: dict[str, Any] = {"index": event.index}
            if event.id is not None:
                piece["id"] = event.id
                piece["type"] = "function"
                piece["function"] = {"name": event.name or "", "arguments": event.arguments}
            else:
                piece["function"] = {"arguments": event.arguments}
            return self._chunk({"tool_calls": [piece]})
        if isinstance(event, ReasoningDelta):
            if event.text:
                return self._chunk({"reasoning_content": event.text})
            if event.redacted is None and event.signature is None:
                return b""
            block = thinking_block_json(ThinkingBlock("", event.signature, event.redacted))
            return self._chunk({"thinking_blocks": [block]})
        if isinstance(event, Finish):
            return self._chunk({}, event.reason)
        if isinstance(event, UsageReport):
            if not self._include_usage:
                return b""
            return self._frame({**self._head(), "choices": [], "usage": usage_json(event.usage)})
        # StreamStart: names the answer; its chunk opens the assistant message.
        self._id, self._model, self._created = event.id, event.model, event.created
        return self._chunk({"role": "assistant", "content": ""})

    def end(self) -> bytes:
        return DONE

    def _head(self) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self._frame({**self._head(), "choices": [choice]})

    @staticmethod
    def _frame(obj: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(obj) + b"\n\n"
