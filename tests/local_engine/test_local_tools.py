"""Tools and structured output on the local engine, end to end: the gateway serving the bundled
SmolLM2 (``local/smollm2``) and a tiny model whose template uses an unknown tool syntax, called
with the official ``openai`` SDK. Constrained decoding makes the real model's answers parse and
validate every time; the forced tool call exercises the whole tools path (template, grammar,
parsing, streaming)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import anthropic
import jsonschema
import openai
import pytest

from tests.support.engine_models import make_hf_model
from tests.support.gateway_process import gateway_process

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "maxLength": 30}},
            "required": ["timezone"],
            "additionalProperties": False,
        },
    },
}
ASK_PERSON = [{"role": "user", "content": "Describe a person as JSON: name, age and city."}]
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]
# A template that renders tools in a syntax the engine does not parse (Mistral's).
UNKNOWN_TOOLS_TEMPLATE = (
    "{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}"
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    tiny = tmp_path_factory.mktemp("tiny") / "model"
    make_hf_model("llama", tiny)
    config_path = tiny / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["chat_template"] = UNKNOWN_TOOLS_TEMPLATE
    config_path.write_text(json.dumps(tokenizer_config))
    config = {
        "model_list": [
            {"model_name": "smollm2", "params": {"model": "local/smollm2", "max_model_len": 1024}},
            {
                "model_name": "tiny",
                "params": {"model": "local/tiny", "model_path": str(tiny), "dtype": "float32"},
            },
        ]
    }
    with gateway_process(config, ready_timeout=120) as gw:
        yield openai.OpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0, timeout=300)


def test_json_schema_output_parses_and_validates(client: openai.OpenAI) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON, "strict": True},
    }
    for seed in range(3):
        reply = client.chat.completions.create(
            model="smollm2",
            messages=ASK_PERSON,
            response_format=response_format,  # type: ignore[arg-type]
            temperature=1.0,
            seed=seed,
            max_tokens=200,
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content or ""), PERSON)

    stream = client.chat.completions.create(
        model="smollm2",
        messages=ASK_PERSON,
        response_format=response_format,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=200,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), PERSON)


def test_json_object_and_vllm_guided_extras(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2",
        messages=ASK_PERSON,
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=300,
    )
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)

    choice = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Is Paris in France? Answer yes or no."}],
        extra_body={"guided_choice": ["yes", "no"]},
        max_tokens=10,
    )
    assert choice.choices[0].message.content in ("yes", "no")

    phone = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Give me a phone number."}],
        extra_body={"guided_regex": r"[0-9]{3}-[0-9]{4}"},
        max_tokens=20,
    )
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", phone.choices[0].message.content or "")

    completion = client.completions.create(
        model="smollm2",
        prompt="A person as JSON:",
        max_tokens=200,
        temperature=0,
        extra_body={"guided_json": PERSON},
    )
    jsonschema.validate(json.loads(completion.choices[0].text), PERSON)


def test_required_tool_choice_gives_a_valid_call(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="smollm2",
        messages=ASK_WEATHER,
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=200,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].id.startswith("call_") and calls[0].type == "function"
    tool = {"get_weather": WEATHER, "get_time": TIME}[calls[0].function.name]
    jsonschema.validate(json.loads(calls[0].function.arguments), tool["function"]["parameters"])


def test_named_tool_choice_streams_name_then_argument_deltas(client: openai.OpenAI) -> None:
    kwargs = dict(
        model="smollm2",
        messages=ASK_WEATHER,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0,
        max_tokens=200,
    )
    full = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    [call] = full.choices[0].message.tool_calls or []
    assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), TIME["function"]["parameters"])

    chunks = list(client.chat.completions.create(stream=True, **kwargs))  # type: ignore[call-overload]
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].id.startswith("call_") and deltas[0].function.name == "get_time"
    assert all(d.id is None and d.function.name is None for d in deltas[1:])
    assert len(deltas) > 2, "arguments arrive as several deltas"
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]


def test_tool_history_renders_and_tool_choice_none_answers_in_text(client: openai.OpenAI) -> None:
    messages = [
        *ASK_WEATHER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
    ]
    reply = client.chat.completions.create(
        model="smollm2",
        messages=messages,
        tools=[WEATHER],
        tool_choice="none",
        temperature=0,
        max_tokens=20,  # type: ignore[arg-type, list-item]
    )
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("model", "extra", "message"),
    [
        ("tiny", {"tools": [WEATHER]}, "syntax the local engine does not parse"),
        ("smollm2", {"tool_choice": "required"}, "only allowed when tools are given"),
        (
            "smollm2",
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "no tool named",
        ),
        (
            "smollm2",
            {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            "tools.0.function.name",
        ),
        (
            "smollm2",
            {"response_format": {"type": "json_object"}, "guided_regex": "a+"},
            "only one output constraint",
        ),
        ("smollm2", {"guided_regex": "[a-"}, "invalid regex"),
        ("smollm2", {"guided_json": {"type": "object", "properties": {"a": {"type": 7}}}}, "JSON schema"),
        ("smollm2", {"response_format": {"type": "xml"}}, "response_format"),
    ],
)
def test_bad_requests_are_clear_400s(client: openai.OpenAI, model: str, extra: dict, message: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=model, messages=ASK_WEATHER, max_tokens=5, extra_body=extra)
    assert message in str(refused.value)


def test_logprobs_carry_raw_bytes_of_partial_characters(client: openai.OpenAI) -> None:
    text = "東京 😀"
    reply = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Name a city and an emoji."}],
        extra_body={"guided_choice": [text]},
        logprobs=True,
        top_logprobs=2,
        max_tokens=20,
    )
    choice = reply.choices[0]
    assert choice.message.content == text
    items = (choice.logprobs and choice.logprobs.content) or []
    assert any("\ufffd" in lp.token for lp in items), "the text splits characters across tokens"
    assert bytes(b for lp in items for b in lp.bytes or []).decode("utf-8") == text
    assert all(bytes(lp.bytes or []) != "\ufffd".encode() for lp in items)
    tops = [top for lp in items for top in lp.top_logprobs]
    assert tops and all(bytes(top.bytes or []) != "\ufffd".encode() for top in tops)


def test_messages_and_responses_doors_reach_the_same_machinery(client: openai.OpenAI) -> None:
    base = str(client.base_url).removesuffix("/v1/")
    weather = WEATHER["function"]
    message = anthropic.Anthropic(base_url=base, api_key="x", max_retries=0).messages.create(
        model="smollm2",
        max_tokens=200,
        messages=[{"role": "user", "content": "What is the weather like in Paris today?"}],
        tools=[
            {
                "name": weather["name"],
                "description": weather["description"],
                "input_schema": weather["parameters"],
            }
        ],
        tool_choice={"type": "any"},
    )
    assert message.stop_reason == "tool_use"
    uses = [block for block in message.content if block.type == "tool_use"]
    assert uses and uses[0].name == "get_weather"
    jsonschema.validate(uses[0].input, weather["parameters"])

    response = client.responses.create(
        model="smollm2",
        input="Describe a person as JSON: name, age and city.",
        max_output_tokens=200,
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}},
    )
    jsonschema.validate(json.loads(response.output_text), PERSON)
