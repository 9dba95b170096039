"""Google's ``generateContent`` body <-> ``providers.schema``: the request, the answer, finish
reasons, usage. Shared by ``providers.gemini`` (Google AI Studio) and ``providers.vertex_ai``: both
take the same body.

Reference: https://ai.google.dev/api/generate-content (request: ``contents`` of ``{role: user|model,
parts}``, ``systemInstruction``, ``tools[].functionDeclarations``, ``toolConfig``,
``generationConfig``, ``safetySettings``, ``cachedContent``; a part is ``text`` (``thought: true``
for reasoning), ``inlineData {mimeType, data}``, ``fileData {mimeType, fileUri}``, ``functionCall
{name, args}`` or ``functionResponse {name, response}``, with ``thoughtSignature`` beside it;
answer: ``candidates[].content.parts``, ``finishReason``, ``promptFeedback.blockReason``,
``usageMetadata``, ``modelVersion``, ``responseId``).

Translation choices:

- System messages (wherever they are) join into ``systemInstruction``, in order. Adjacent contents
  of one role merge into one (a turn's tool results, and the user text after them, are one
  ``user`` content, as Gemini expects: one ``functionResponse`` per ``functionCall`` of the turn).
- Gemini matches a tool result to its call by the function's *name*: a tool message's name is
  found from the assistant call with its ``tool_call_id`` earlier in the conversation (else the
  message's ``name``; else a 400). Its text goes as ``response``: the JSON object it holds, or
  ``{"content": <value>}`` for any other text (``{"error": <value>}`` for a failed tool).
- Calls have no ids in Gemini's answers: ``call_<answer>_<n>``. A call's ``thoughtSignature``
  (Gemini 2.5+ models ask for it back with the call) rides in its id after ``__thought__``, so a
  client that echoes the id sends the signature back unawares.
- Images: base64 data URLs as ``inlineData``; ``gs://`` URIs and Gemini Files API URLs as
  ``fileData``. Any other URL is a 400: the gateway does not fetch images for Gemini.
- ``tool_choice``: auto/none/required -> ``AUTO``/``NONE``/``ANY``; a named tool ``ANY`` with
  ``allowedFunctionNames``. ``parallel_tool_calls: false`` has no Gemini field: a 400, or dropped
  with ``drop_params``.
- ``response_format``: ``responseMimeType: application/json``, and ``responseSchema`` (converted
  by ``json_schema.to_gemini``) for ``json_schema``.
- Reasoning: Anthropic's ``budget_tokens`` or OpenAI's effort become ``thinkingConfig``; thought
  parts come back as reasoning. ``thoughtsTokenCount`` counts as completion tokens (OpenAI counts
  reasoning tokens there); ``cachedContentTokenCount`` as cache reads within the prompt.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from typing import Any

import orjson

from providers.formats import openai_chat
from providers.formats.errors import FormatError
from providers.gemini.errors import prompt_blocked
from providers.gemini.json_schema import to_gemini
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

FINISH_REASONS: dict[str, FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "MALFORMED_FUNCTION_CALL": "error",
    "UNEXPECTED_TOOL_CALL": "error",
}

# OpenAI Chat fields (``GenerationRequest.extra``) -> generationConfig fields ...
_CONFIG_EXTRAS = {
    "top_k": "topK",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}
# ... and top-level request fields (LiteLLM's spellings).
_TOP_LEVEL_EXTRAS = {
    "safety_settings": "safetySettings",
    "cached_content": "cachedContent",
    "labels": "labels",
}
ACCEPTED_EXTRA = frozenset({*_CONFIG_EXTRAS, *_TOP_LEVEL_EXTRAS})

SIGNATURE_SEPARATOR = "__thought__"
# OpenAI's reasoning_effort as a thinking budget (tokens); "none"/"minimal" turn thinking off.
_EFFORT_BUDGETS = {"none": 0, "minimal": 0, "low": 1024, "medium": 8192, "high": 24576}
_FILE_URI_PREFIXES = ("gs://", "https://generativelanguage.googleapis.com/")


# ---- request ---------------------------------------------------------------------------------


def build_request(req: GenerationRequest) -> dict[str, Any]:
    """The ``generateContent`` body for ``req``; ``FormatError`` naming a field Gemini cannot take."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, for the results that follow
    for i, msg in enumerate(req.messages):
        param = f"messages.{i}"
        if msg.role == "system":
            system.extend(_text_parts(msg, param, "a system message"))
            continue
        if msg.role == "tool":
            role, parts = "user", [_function_response(msg, names, param)]
        elif msg.role == "assistant":
            role, parts = "model", _model_parts(msg, param)
            names.update((c.id, c.name) for c in msg.tool_calls)
        else:
            role, parts = "user", _user_parts(msg, param)
        if not parts:
            if role == "model":
                continue  # an empty assistant turn says nothing; Gemini refuses empty parts
            raise FormatError(f"'{param}.content' must not be empty", f"{param}.content")
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    if not contents:
        raise FormatError("Gemini needs at least one user or assistant message", "messages")
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": system}
    if req.tools:
        body["tools"] = [{"functionDeclarations": [_declaration(t, i) for i, t in enumerate(req.tools)]}]
        config = _tool_config(req)
        if config is not None:
            body["toolConfig"] = {"functionCallingConfig": config}
    generation = _generation_config(req)
    if generation:
        body["generationConfig"] = generation
    if req.source_format == openai_chat.FORMAT:
        for key, field in _TOP_LEVEL_EXTRAS.items():
            if req.extra.get(key) is not None:
                body[field] = req.extra[key]
    return body


def _text_parts(msg: Message, param: str, where: str) -> list[dict[str, Any]]:
    if any(isinstance(p, ImagePart) for p in msg.content):
        raise FormatError(f"Gemini takes only text in {where}", f"{param}.content")
    return [{"text": p.text} for p in msg.content if isinstance(p, TextPart) and p.text]


def _user_parts(msg: Message, param: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(msg.content):
        if isinstance(part, TextPart):
            if part.text:
                parts.append({"text": part.text})
        else:
            parts.append(_image(part, f"{param}.content.{j}.image_url.url"))
    return parts


def _image(part: ImagePart, param: str) -> dict[str, Any]:
    if part.data is not None:
        return {"inlineData": {"mimeType": part.media_type or "image/png", "data": part.data}}
    url = part.url or ""
    if url.startswith(_FILE_URI_PREFIXES):
        mime = part.media_type or mimetypes.guess_type(url)[0] or "image/jpeg"
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    raise FormatError(
        "Gemini takes images inline (a base64 data URL) or as a gs:// or Files API URI; "
        "the gateway does not fetch image URLs",
        param,
    )


def _model_parts(msg: Message, param: str) -> list[dict[str, Any]]:
    parts = _text_parts(msg, param, "an assistant message")
    for k, call in enumerate(msg.tool_calls):
        part: dict[str, Any] = {
            "functionCall": {"name": call.name, "args": _arguments(call, f"{param}.tool_calls.{k}")}
        }
        _, sep, signature = call.id.partition(SIGNATURE_SEPARATOR)
        if sep and signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _arguments(call: ToolCall, param: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(call.arguments or "{}")
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise FormatError("tool call arguments must be a JSON object", f"{param}.function.arguments")
    return parsed


def _function_response(msg: Message, names: Mapping[str, str], param: str) -> dict[str, Any]:
    name = names.get(msg.tool_call_id or "") or msg.name
    if not name:
        raise FormatError(
            f"tool message answers tool_call_id {msg.tool_call_id!r}, which no earlier assistant "
            "message called (Gemini matches tool results to calls by function name)",
            f"{param}.tool_call_id",
        )
    _text_parts(msg, param, "a tool result")  # refuses an image in a tool result
    text = msg.text()
    try:
        value = orjson.loads(text) if text else ""
    except orjson.JSONDecodeError:
        value = text
    if msg.is_error:  # an Anthropic tool_result marked is_error: Gemini's documented "error" key
        response = {"error": value}
    else:
        response = value if isinstance(value, dict) else {"content": value}
    return {"functionResponse": {"name": name, "response": response}}


def _declaration(tool: Tool, index: int) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name}
    if tool.description:
        out["description"] = tool.description
    params = tool.parameters or {}
    if params.get("properties"):  # Gemini refuses an OBJECT schema with no properties
        out["parameters"] = to_gemini(params, f"tools.{index}.function.parameters")
    return out


def _tool_config(req: GenerationRequest) -> dict[str, Any] | None:
    choice = req.tool_choice
    if choice is None:
        return None
    if choice == "auto":
        return {"mode": "AUTO"}
    if choice == "none":
        return {"mode": "NONE"}
    if choice == "required":
        return {"mode": "ANY"}
    if not any(t.name == choice for t in req.tools):
        raise FormatError(f"tool_choice names {choice!r}, which is not in 'tools'", "tool_choice")
    return {"mode": "ANY", "allowedFunctionNames": [choice]}


def _generation_config(req: GenerationRequest) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for field, value in (
        ("temperature", req.temperature),
        ("topP", req.top_p),
        ("maxOutputTokens", req.max_tokens),
        ("seed", req.seed),
    ):
        if value is not None:
            config[field] = value
    if req.stop:
        config["stopSequences"] = list(req.stop)
    fmt = req.response_format
    if fmt is not None and fmt.type != "text":
        config["responseMimeType"] = "application/json"
        if fmt.type == "json_schema" and fmt.schema is not None:
            config["responseSchema"] = to_gemini(fmt.schema, "response_format.json_schema.schema")
    thinking = _thinking(req.reasoning)
    if thinking is not None:
        config["thinkingConfig"] = thinking
    if req.source_format == openai_chat.FORMAT:
        for key, field in _CONFIG_EXTRAS.items():
            if req.extra.get(key) is not None:
                config[field] = req.extra[key]
    return config


def _thinking(reasoning: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not reasoning:
        return None
    if reasoning.get("type") == "disabled":
        return {"thinkingBudget": 0}
    budget = reasoning.get("budget_tokens")
    if reasoning.get("type") == "enabled" and isinstance(budget, int):
        return {"thinkingBudget": budget, "includeThoughts": True}
    effort = reasoning.get("effort")
    if isinstance(effort, str) and effort in _EFFORT_BUDGETS:
        budget = _EFFORT_BUDGETS[effort]
        return {"thinkingBudget": budget, "includeThoughts": True} if budget else {"thinkingBudget": 0}
    return None


# ---- answers -----------------------------------------------------------------------------------


def answer_id(body: Mapping[str, Any], fallback: str) -> str:
    given = body.get("responseId")
    return f"chatcmpl-{given}" if isinstance(given, str) and given else fallback


def check_prompt(body: Mapping[str, Any]) -> None:
    """Raise the content-policy error for an answer that blocked the prompt (no candidates)."""
    feedback = body.get("promptFeedback")
    if isinstance(feedback, Mapping) and feedback.get("blockReason") and not body.get("candidates"):
        message = feedback.get("blockReasonMessage")
        raise prompt_blocked(str(feedback["blockReason"]), message if isinstance(message, str) else None)


def first_candidate(body: Mapping[str, Any]) -> Mapping[str, Any] | None:
    candidates = body.get("candidates")
    if candidates is None:
        return None
    if not isinstance(candidates, list):
        raise FormatError("'candidates' must be an array", "candidates")
    first = candidates[0] if candidates else None
    if first is not None and not isinstance(first, Mapping):
        raise FormatError("'candidates.0' must be an object", "candidates.0")
    return first


def candidate_parts(candidate: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    content = candidate.get("content")
    if content is None:
        return []
    if not isinstance(content, Mapping):
        raise FormatError("'candidates.0.content' must be an object", "candidates.0.content")
    parts = content.get("parts") or []
    if not isinstance(parts, list) or not all(isinstance(p, Mapping) for p in parts):
        raise FormatError(
            "'candidates.0.content.parts' must be an array of objects", "candidates.0.content.parts"
        )
    return parts


def tool_call(part: Mapping[str, Any], answer: str, index: int) -> ToolCall | None:
    """The part's ``functionCall`` as a ``ToolCall`` (arguments as JSON text), or None."""
    fn = part.get("functionCall")
    if fn is None:
        return None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise FormatError("'functionCall.name' must be a string", "functionCall.name")
    args = fn.get("args")
    given = fn.get("id")
    call_id = (
        given if isinstance(given, str) and given else f"call_{answer.removeprefix('chatcmpl-')}_{index}"
    )
    signature = part.get("thoughtSignature")
    if isinstance(signature, str) and signature:
        call_id += SIGNATURE_SEPARATOR + signature
    return ToolCall(call_id, fn["name"], orjson.dumps(args if args is not None else {}).decode())


def finish_reason(raw: Any, called_tools: bool) -> FinishReason:
    reason = FINISH_REASONS.get(str(raw), "stop")
    # Gemini says STOP when the model called functions; OpenAI clients expect "tool_calls".
    return "tool_calls" if called_tools and reason == "stop" else reason


def usage(raw: Any) -> Usage | None:
    if not isinstance(raw, Mapping):
        return None

    def count(name: str) -> int:
        value = raw.get(name)
        return value if isinstance(value, int) else 0

    return Usage(
        prompt_tokens=count("promptTokenCount") + count("toolUsePromptTokenCount"),
        completion_tokens=count("candidatesTokenCount") + count("thoughtsTokenCount"),
        cache_read_tokens=count("cachedContentTokenCount"),
    )


def parse_response(body: Mapping[str, Any], *, id: str, model: str, created: int) -> GenerationResponse:
    """A whole ``generateContent`` answer as a ``GenerationResponse`` (the prompt blocked: a
    ``ContentPolicyError``)."""
    check_prompt(body)
    candidate = first_candidate(body)
    answer = answer_id(body, id)
    text: list[str] = []
    thoughts: list[str] = []
    calls: list[ToolCall] = []
    for part in candidate_parts(candidate) if candidate is not None else []:
        call = tool_call(part, answer, len(calls))
        if call is not None:
            calls.append(call)
        elif isinstance(part.get("text"), str):
            (thoughts if part.get("thought") else text).append(part["text"])
    version = body.get("modelVersion")
    return GenerationResponse(
        id=answer,
        model=version if isinstance(version, str) and version else model,
        created=created,
        text="".join(text),
        reasoning="".join(thoughts) or None,
        tool_calls=calls,
        finish_reason=finish_reason(candidate.get("finishReason") if candidate else None, bool(calls)),
        usage=usage(body.get("usageMetadata")),
    )
