"""Golden translations of the Gemini codec (``providers.gemini.chat``, ``json_schema``, ``errors``),
shared by the Gemini and Vertex AI adapters: OpenAI Chat bodies to ``generateContent`` bodies,
Google's answers and error bodies back."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from providers.errors import ContextWindowExceededError, ProviderError
from providers.formats import openai_chat
from providers.gemini import chat
from providers.gemini.errors import upstream_error
from providers.schema import GenerationRequest, Message, TextPart, ToolCall
from providers.usage import Usage
from tests.support.fake_gemini import CONTEXT_WINDOW_MESSAGE, validate_generate

PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": ["string", "null"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
HI = [{"role": "user", "content": "hi"}]


def parse(body: dict[str, Any]) -> dict[str, Any]:
    return chat.build_request(openai_chat.parse_request({"model": "m", **body}))


# ---- golden translations -----------------------------------------------------------------------


def test_a_conversation_with_tools_images_and_config_translates_exactly() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather where this was taken?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
                    {"type": "image_url", "image_url": {"url": "gs://bucket/photo.jpg"}},
                ],
            },
            {
                "role": "assistant",
                "content": "Looking.",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    },
                    {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": '{"sky": "sunny"}'},
            {"role": "tool", "tool_call_id": "c2", "content": "noon"},
            {"role": "user", "content": "Thanks"},
        ],
        "tools": [
            WEATHER_TOOL,
            {
                "type": "function",
                "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
            },
        ],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 100,
        "stop": ["END"],
        "seed": 7,
        "top_k": 40,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "w",
                "schema": {
                    "type": "object",
                    "properties": {"sky": {"$ref": "#/$defs/sky"}},
                    "required": ["sky"],
                    "additionalProperties": False,
                    "$defs": {"sky": {"type": "string", "enum": ["sunny", "rainy"]}},
                },
            },
        },
    }
    translated = parse(body)
    assert validate_generate(translated) is None  # the fake, strict as Google, takes it
    assert translated == {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "Weather where this was taken?"},
                    {"inlineData": {"mimeType": "image/png", "data": PIXEL}},
                    {"fileData": {"mimeType": "image/jpeg", "fileUri": "gs://bucket/photo.jpg"}},
                ],
            },
            {
                "role": "model",
                "parts": [
                    {"text": "Looking."},
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                    {"functionCall": {"name": "get_time", "args": {}}},
                ],
            },
            {
                "role": "user",
                "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"sky": "sunny"}}},
                    {"functionResponse": {"name": "get_time", "response": {"content": "noon"}}},
                    {"text": "Thanks"},
                ],
            },
        ],
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "description": "Weather for a city",
                        "parameters": {
                            "type": "object",
                            "properties": {
                                "city": {"type": "string"},
                                "unit": {"type": "string", "nullable": True},
                            },
                            "required": ["city"],
                        },
                    },
                    {"name": "get_time"},
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
        "generationConfig": {
            "temperature": 0.2,
            "topP": 0.9,
            "maxOutputTokens": 100,
            "seed": 7,
            "stopSequences": ["END"],
            "responseMimeType": "application/json",
            "responseSchema": {
                "type": "object",
                "properties": {"sky": {"type": "string", "enum": ["sunny", "rainy"]}},
                "required": ["sky"],
            },
            "topK": 40,
        },
    }


@pytest.mark.parametrize(
    ("choice", "config"),
    [("auto", {"mode": "AUTO"}), ("none", {"mode": "NONE"}), ("required", {"mode": "ANY"})],
)
def test_tool_choice_modes(choice: str, config: dict[str, Any]) -> None:
    assert parse({"messages": HI, "tools": [WEATHER_TOOL], "tool_choice": choice})["toolConfig"] == {
        "functionCallingConfig": config
    }


def test_reasoning_effort_becomes_a_thinking_budget() -> None:
    config = parse({"messages": HI, "reasoning_effort": "low"})["generationConfig"]
    assert config == {"thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": True}}


def test_an_answer_translates_exactly() -> None:
    body = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [
                        {"text": "Let me think.", "thought": True},
                        {"text": "Calling."},
                        {
                            "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                            "thoughtSignature": "c2ln",
                        },
                    ],
                },
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 30,
            "candidatesTokenCount": 12,
            "cachedContentTokenCount": 10,
            "thoughtsTokenCount": 5,
            "totalTokenCount": 47,
        },
        "modelVersion": "gemini-2.5-flash-001",
        "responseId": "abc",
    }
    resp = chat.parse_response(body, id="chatcmpl-x", model="gemini-2.5-flash", created=1)
    assert (resp.id, resp.model, resp.text, resp.reasoning) == (
        "chatcmpl-abc",
        "gemini-2.5-flash-001",
        "Calling.",
        "Let me think.",
    )
    (call,) = resp.tool_calls
    assert (call.id, call.name, orjson.loads(call.arguments)) == (
        "call_abc_0__thought__c2ln",
        "get_weather",
        {"city": "Paris"},
    )
    assert resp.finish_reason == "tool_calls"
    assert resp.usage == Usage(prompt_tokens=30, completion_tokens=17, cache_read_tokens=10)


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("STOP", "stop"),
    ],
)
def test_finish_reasons(reason: str, finish: str) -> None:
    body = {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]}
    assert chat.parse_response(body, id="i", model="m", created=1).finish_reason == finish


def test_google_error_bodies_map_to_openai_errors() -> None:
    def err(status: int, google: str, message: str, details: list[Any] | None = None) -> ProviderError:
        body = {"error": {"code": status, "message": message, "status": google, "details": details or []}}
        return upstream_error(status, orjson.dumps(body), None, lambda s: s)

    limited = err(
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded",
        [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}],
    )
    assert (limited.status_code, limited.type, limited.retry_after, limited.retryable) == (
        429,
        "rate_limit_error",
        17.0,
        True,
    )
    assert limited.message == "Quota exceeded"
    too_long = err(400, "INVALID_ARGUMENT", CONTEXT_WINDOW_MESSAGE)
    assert isinstance(too_long, ContextWindowExceededError) and too_long.code == "context_length_exceeded"
    bad_key = err(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.")
    assert (bad_key.status_code, bad_key.type) == (401, "authentication_error")
    assert err(403, "PERMISSION_DENIED", "no").type == "permission_error"
    assert err(503, "UNAVAILABLE", "The model is overloaded.").retryable
    plain = err(400, "INVALID_ARGUMENT", "bad thing")
    assert (plain.status_code, plain.code, plain.retryable) == (400, "invalid_argument", False)


def test_the_fake_refuses_what_google_refuses() -> None:
    """The fake's strictness, which the adapter tests lean on, checked directly."""
    user = {"role": "user", "parts": [{"text": "hi"}]}
    call = {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]}

    def answer(name: str) -> dict[str, Any]:
        return {"role": "user", "parts": [{"functionResponse": {"name": name, "response": {}}}]}

    assert validate_generate({"contents": [user, call, answer("f")]}) is None
    assert "valid role" in str(
        validate_generate({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]})
    )
    assert "names match" in str(validate_generate({"contents": [user, call, answer("g")]}))
    assert "immediately after" in str(validate_generate({"contents": [user, answer("f")]}))
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}
    tools = [{"functionDeclarations": [{"name": "f", "parameters": schema}]}]
    assert "additionalProperties" in str(validate_generate({"contents": [user], "tools": tools}))
    assert "Unknown name" in str(validate_generate({"contents": [user], "messages": []}))


def test_a_failed_tool_result_goes_as_an_error() -> None:
    messages = [
        Message("user", [TextPart("hi")]),
        Message("assistant", tool_calls=[ToolCall("t1", "f", "{}")]),
        Message("tool", [TextPart("boom")], tool_call_id="t1", is_error=True),
    ]
    body = chat.build_request(GenerationRequest("m", messages))
    assert body["contents"][2]["parts"] == [
        {"functionResponse": {"name": "f", "response": {"error": "boom"}}}
    ]
