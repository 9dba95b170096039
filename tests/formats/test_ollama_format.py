"""Golden translations of the Ollama codec (``providers.ollama.chat``), both ways."""

from __future__ import annotations

import orjson

from providers.formats import openai_chat
from providers.ollama import chat as ollama_chat
from providers.usage import Usage

PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_openai_body_to_ollama_golden() -> None:
    body = {
        "model": "public",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this? And the weather?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
        "tools": [WEATHER_TOOL],
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 50,
        "stop": ["END"],
        "seed": 7,
        "top_k": 40,
        "keep_alive": "10m",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": {"type": "object"}},
        },
    }
    request = openai_chat.parse_request(body)
    request.model = "llama3.2"
    assert ollama_chat.build_request(request, {}, stream=True) == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is this? And the weather?", "images": [PIXEL]},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
            },
            {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        ],
        "stream": True,
        "options": {
            "temperature": 0.2,
            "top_p": 0.9,
            "num_predict": 50,
            "seed": 7,
            "stop": ["END"],
            "top_k": 40,
        },
        "tools": [WEATHER_TOOL],
        "format": {"type": "object"},
        "keep_alive": "10m",
    }


def test_deployment_defaults_fill_unset_options_and_json_mode() -> None:
    request = openai_chat.parse_request(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0.5,
            "response_format": {"type": "json_object"},
        }
    )
    params = {"temperature": 0.9, "max_tokens": 64, "stop": "STOP"}
    body = ollama_chat.build_request(request, params, stream=False)
    assert body["options"] == {"temperature": 0.5, "num_predict": 64, "stop": ["STOP"]}
    assert body["format"] == "json" and body["stream"] is False


def test_ollama_answer_to_generation_response_golden() -> None:
    answer = {
        "model": "llama3.2",
        "created_at": "2024-07-22T20:33:28.123648Z",
        "message": {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}},
                {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
            ],
        },
        "done_reason": "stop",
        "done": True,
        "prompt_eval_count": 122,
        "eval_count": 33,
    }
    resp = ollama_chat.parse_response(answer, id="chatcmpl-abc", model="fallback", created=5)
    assert [(c.id, c.name, orjson.loads(c.arguments)) for c in resp.tool_calls] == [
        ("call_abc_0", "get_weather", {"city": "Paris", "unit": "c"}),
        ("call_abc_1", "get_weather", {"city": "Oslo"}),
    ]
    assert resp.finish_reason == "tool_calls" and resp.model == "llama3.2"
    assert resp.usage == Usage(122, 33)
    assert openai_chat.build_response(resp)["choices"][0]["message"]["tool_calls"][1]["function"] == {
        "name": "get_weather",
        "arguments": '{"city":"Oslo"}',
    }


def test_done_reason_length_and_ids_sent_by_newer_ollama() -> None:
    answer = {"message": {"role": "assistant", "content": "abc"}, "done": True, "done_reason": "length"}
    assert ollama_chat.parse_response(answer, id="chatcmpl-x", model="m", created=0).finish_reason == "length"
    with_id = {"message": {"tool_calls": [{"id": "call_up", "function": {"name": "f", "arguments": {}}}]}}
    assert (
        ollama_chat.parse_response(with_id, id="chatcmpl-x", model="m", created=0).tool_calls[0].id
        == "call_up"
    )
