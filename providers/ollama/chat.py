"""Ollama's native chat format <-> ``providers.schema``: the ``/api/chat`` body and its answers.

Reference: https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion.
Request: ``{model, messages, tools?, format?, options?, stream, think?, keep_alive?}``; a message
is ``{role, content, images?, tool_calls?, tool_name?}`` where ``images`` are bare base64 strings
and a tool call is ``{"function": {"name", "arguments": <object>}}``. Answer (whole, or the last
line of a stream): ``{model, created_at, message, done: true, done_reason, prompt_eval_count,
eval_count}``.

Translation choices:

- Sampling parameters go in ``options``: ``temperature``, ``top_p``, ``num_predict`` (from
  ``max_tokens``), ``stop``, ``seed``; OpenAI's ``top_k``, ``frequency_penalty`` and
  ``presence_penalty`` too. Deployment defaults in the params fill what the caller left unset.
- ``response_format`` becomes ``format``: ``"json"`` for json_object, the schema itself for
  json_schema.
- Tool-call arguments are JSON text in the gateway and objects in Ollama: parsed on the way up
  (a 400 if they are not a JSON object), serialised on the way down. Ollama's calls have no ids
  (newer versions may send one, which is kept): ``call_<answer>_<n>``, so a call's id is the same
  in every event that names it and unique across answers.
- A tool result names its tool (``tool_name``), found from the assistant call it answers.
- Images must be inline (base64 data URLs): Ollama cannot fetch a URL.
- ``reasoning_effort`` (or Anthropic-style thinking) turns on ``think``; ``message.thinking`` comes
  back as reasoning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from providers.formats import openai_chat
from providers.formats.errors import FormatError
from providers.schema import (
    FinishReason,
    GenerationRequest,
    GenerationResponse,
    ImagePart,
    Message,
    ToolCall,
)
from providers.usage import Usage

# OpenAI Chat fields (``GenerationRequest.extra``) translated into Ollama ``options`` ...
OPTION_EXTRAS = ("top_k", "frequency_penalty", "presence_penalty")
# ... or sent as top-level fields of the same name.
TOP_LEVEL_EXTRAS = ("keep_alive",)
ACCEPTED_EXTRA = frozenset(OPTION_EXTRAS + TOP_LEVEL_EXTRAS)

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length"}


def build_request(req: GenerationRequest, params: Mapping[str, Any], *, stream: bool) -> dict[str, Any]:
    """The ``/api/chat`` body for ``req`` (``req.model`` is the upstream model); ``FormatError``
    naming a field Ollama cannot take."""
    body: dict[str, Any] = {"model": req.model, "messages": _messages(req.messages), "stream": stream}
    options = _options(req, params)
    if options:
        body["options"] = options
    if req.tools and req.tool_choice != "none":
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    **({"description": t.description} if t.description is not None else {}),
                    "parameters": t.parameters,
                },
            }
            for t in req.tools
        ]
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        body["format"] = "json"
    elif fmt is not None and fmt.type == "json_schema":
        body["format"] = fmt.schema if fmt.schema is not None else "json"
    if req.reasoning is not None:
        effort = req.reasoning.get("effort")
        body["think"] = effort if isinstance(effort, str) else True
    if req.source_format == openai_chat.FORMAT:
        for key in TOP_LEVEL_EXTRAS:
            if key in req.extra:
                body[key] = req.extra[key]
    return body


def _options(req: GenerationRequest, params: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, given, default in (
        ("temperature", req.temperature, params.get("temperature")),
        ("top_p", req.top_p, params.get("top_p")),
        ("num_predict", req.max_tokens, params.get("max_tokens")),
        ("seed", req.seed, params.get("seed")),
    ):
        value = default if given is None else given
        if value is not None:
            options[name] = value
    stop = req.stop or _stops(params.get("stop"))
    if stop:
        options["stop"] = stop
    if req.source_format == openai_chat.FORMAT:
        for key in OPTION_EXTRAS:
            if req.extra.get(key) is not None:
                options[key] = req.extra[key]
    return options


def _stops(configured: Any) -> list[str]:
    if isinstance(configured, str):
        return [configured]
    if isinstance(configured, list):
        return [str(s) for s in configured]
    return []


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    names: dict[str, str] = {}  # tool call id -> the tool's name, for the results that follow
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        entry: dict[str, Any] = {"role": msg.role, "content": msg.text()}
        images = []
        for j, part in enumerate(msg.content):
            if isinstance(part, ImagePart):
                if part.data is None:
                    raise FormatError(
                        "Ollama takes images inline only: send a base64 data URL, not a link",
                        f"messages.{i}.content.{j}.image_url.url",
                    )
                images.append(part.data)
        if images:
            entry["images"] = images
        if msg.tool_calls:
            entry["tool_calls"] = [
                {"function": {"name": c.name, "arguments": _arguments(c, f"messages.{i}.tool_calls.{k}")}}
                for k, c in enumerate(msg.tool_calls)
            ]
            names.update((c.id, c.name) for c in msg.tool_calls)
        if msg.role == "tool":
            name = names.get(msg.tool_call_id or "") or msg.name
            if name:
                entry["tool_name"] = name
        out.append(entry)
    return out


def _arguments(call: ToolCall, param: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(call.arguments or "{}")
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise FormatError("tool call arguments must be a JSON object", f"{param}.function.arguments")
    return parsed


# ---- answers --------------------------------------------------------------------------------


def tool_calls(raw: Any, answer_id: str, first_index: int = 0) -> list[ToolCall]:
    """Ollama's ``message.tool_calls`` as ``ToolCall``s (arguments as JSON text, ids made up)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise FormatError("'message.tool_calls' must be an array", "message.tool_calls")
    calls = []
    for offset, item in enumerate(raw):
        param = f"message.tool_calls.{offset}"
        fn = item.get("function") if isinstance(item, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise FormatError(f"'{param}.function.name' must be a string", param)
        args = fn.get("arguments")
        text = args if isinstance(args, str) else orjson.dumps(args if args is not None else {}).decode()
        given = item.get("id")
        call_id = given if isinstance(given, str) and given else tool_call_id(answer_id, first_index + offset)
        calls.append(ToolCall(call_id, fn["name"], text))
    return calls


def tool_call_id(answer_id: str, index: int) -> str:
    return f"call_{answer_id.removeprefix('chatcmpl-')}_{index}"


def finish_reason(done_reason: Any, called_tools: bool) -> FinishReason:
    # Ollama says "stop" when the model called tools; OpenAI clients expect "tool_calls".
    if called_tools:
        return "tool_calls"
    return _FINISH.get(str(done_reason), "stop")


def usage(body: Mapping[str, Any]) -> Usage:
    prompt = body.get("prompt_eval_count")
    completion = body.get("eval_count")
    return Usage(prompt if isinstance(prompt, int) else 0, completion if isinstance(completion, int) else 0)


def parse_response(body: Mapping[str, Any], *, id: str, model: str, created: int) -> GenerationResponse:
    """A whole ``/api/chat`` answer (``stream: false``) as a ``GenerationResponse``."""
    message = body.get("message")
    if not isinstance(message, Mapping):
        raise FormatError("'message' must be an object", "message")
    content = message.get("content")
    thinking = message.get("thinking")
    calls = tool_calls(message.get("tool_calls"), id)
    return GenerationResponse(
        id=id,
        model=str(body.get("model") or model),
        created=created,
        text=content if isinstance(content, str) else "",
        reasoning=thinking if isinstance(thinking, str) and thinking else None,
        tool_calls=calls,
        finish_reason=finish_reason(body.get("done_reason"), bool(calls)),
        usage=usage(body),
    )
