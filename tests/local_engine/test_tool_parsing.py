"""Tool-call syntax on fixed strings: format detection, prompt rendering, parsing whole and streamed
(streamed argument deltas must add up to the non-streamed arguments), forced-call grammars."""

from __future__ import annotations

import json

import llguidance
import pytest

from local_engine.structured import GrammarError, choice_grammar, json_schema_grammar, regex_grammar
from local_engine.tokenizer import Tokenizer
from local_engine.tools import (
    ToolStreamParser,
    ToolsUnsupported,
    forced_call_grammar,
    parse_tool_calls,
    prepare_messages,
    tool_format,
)
from tests.support.engine_models import CHAT_TEMPLATE

HERMES = tool_format("{% for t in tools %}{{ t | tojson }}{% endfor %}<tool_call>")
LLAMA3 = tool_format("{% if tools %}Environment: ipython{% endif %}<|python_tag|>")
FALLBACK = tool_format(CHAT_TEMPLATE)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
HERMES_REPLY = (
    "Let me check.\n<tool_call>\n"
    '{"name": "get_weather", "arguments": {"city": "Paris \\"{x}\\"", "nested": [1, {"a": "}"}]}}\n'
    '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
)


def _stream(text: str, fmt, step: int = 1) -> tuple[str, dict[int, dict[str, str]]]:
    parser = ToolStreamParser(fmt)
    content = ""
    calls: dict[int, dict[str, str]] = {}
    pieces = [text[i : i + step] for i in range(0, len(text), step)]
    for i, piece in enumerate(pieces):
        text_delta, deltas = parser.feed(piece, final=i == len(pieces) - 1)
        content += text_delta
        for d in deltas:
            if d.id is not None:
                assert d.index not in calls, "id and name go out once, in the call's first delta"
                calls[d.index] = {"id": d.id, "name": d.name or "", "arguments": ""}
            calls[d.index]["arguments"] += d.arguments
    return content, calls


def test_formats_read_off_the_template() -> None:
    assert (HERMES.name, HERMES.native) == ("hermes", True)
    assert (LLAMA3.name, LLAMA3.native, LLAMA3.arguments_key) == ("llama3_json", True, "parameters")
    assert (FALLBACK.name, FALLBACK.native) == ("hermes", False)
    with pytest.raises(ToolsUnsupported, match="syntax"):
        tool_format("{% if tools %}[AVAILABLE_TOOLS]{{ tools }}{% endif %}[TOOL_CALLS]")
    with pytest.raises(ToolsUnsupported, match="no chat template"):
        tool_format(None)


def test_hermes_calls_parse_whole_and_streamed_alike() -> None:
    content, calls = parse_tool_calls(HERMES_REPLY, HERMES)
    assert content == "Let me check.\n"
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].arguments) == {"city": 'Paris "{x}"', "nested": [1, {"a": "}"}]}
    assert calls[1].arguments == "{}"
    assert calls[0].id.startswith("call_") and calls[0].id != calls[1].id
    for step in (1, 3, 7, len(HERMES_REPLY)):
        streamed_content, streamed = _stream(HERMES_REPLY, HERMES, step)
        assert streamed_content == content
        assert [(c["name"], c["arguments"]) for c in streamed.values()] == [
            (c.name, c.arguments) for c in calls
        ]


def test_stream_sends_the_name_before_any_argument() -> None:
    parser = ToolStreamParser(HERMES)
    assert parser.feed("<tool_") == ("", [])  # could be the start of a call: held back
    assert parser.feed('call>\n{"name": "get_wea') == ("", [])
    _, deltas = parser.feed('ther", "arguments": {"ci')
    assert [(d.name, d.arguments) for d in deltas] == [("get_weather", '{"ci')]
    _, deltas = parser.feed('ty": "Oslo"}}\n</tool_call>', final=True)
    assert [(d.id, d.arguments) for d in deltas] == [(None, 'ty": "Oslo"}')]


def test_plain_text_and_malformed_calls_stay_content() -> None:
    assert parse_tool_calls("Paris is the capital.", HERMES) == ("Paris is the capital.", [])
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>'
    assert parse_tool_calls(broken, HERMES) == (broken, [])
    assert parse_tool_calls('<tool_call>{"arguments": {}}</tool_call>', HERMES)[1] == []
    assert _stream("a < b, and <tool_cal is not a tag", HERMES, 2) == (
        "a < b, and <tool_cal is not a tag",
        {},
    )


def test_llama3_json_calls() -> None:
    reply = ' {"name": "get_weather", "parameters": {"city": "Rome"}}; {"name": "get_time", "parameters": {}}'
    content, calls = parse_tool_calls(reply, LLAMA3)
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Rome"}),
        ("get_time", {}),
    ]
    assert [(c["name"], c["arguments"]) for c in _stream(reply, LLAMA3, 2)[1].values()] == [
        (c.name, c.arguments) for c in calls
    ]
    assert parse_tool_calls("The weather is fine.", LLAMA3) == ("The weather is fine.", [])


def test_fallback_renders_tools_calls_and_results_in_hermes_style() -> None:
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]
    messages, tools = prepare_messages(history, [WEATHER], FALLBACK)
    assert tools is None
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert "<tools>\n" + json.dumps(WEATHER) + "\n</tools>" in messages[0]["content"]
    assert (
        messages[2]["content"]
        == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    )
    assert messages[3]["content"] == "<tool_response>\n18C\n</tool_response>"
    tokenizer = Tokenizer(backend=None, chat_template=CHAT_TEMPLATE)  # type: ignore[arg-type]
    prompt = tokenizer.apply_chat_template(messages)
    assert "<tool_call>" in prompt and "get_weather" in prompt

    native, native_tools = prepare_messages(history, [WEATHER], HERMES)
    assert native_tools == [WEATHER]
    assert native[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert history[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'  # not mutated


def _accepts(grammar: str, text: str) -> bool:
    tokenizer = llguidance.LLTokenizer(_byte_tokenizer_json())
    matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
    return matcher.consume_tokens(tokenizer.tokenize_str(text)) and matcher.is_accepting()


def _byte_tokenizer_json() -> str:
    """A tokenizers JSON whose vocabulary is the 256 byte-level characters (any text tokenizes)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["</s>"] = len(vocab)
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["</s>"])
    return tok.to_str()


def test_forced_call_grammars_accept_only_calls_of_the_given_tools() -> None:
    one = forced_call_grammar(HERMES, [WEATHER], parallel=False)
    good = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    assert _accepts(one, good)
    assert not _accepts(one, good + "\n" + good)
    assert not _accepts(one, '<tool_call>\n{"name": "other", "arguments": {"city": "Oslo"}}\n</tool_call>')
    assert not _accepts(one, '<tool_call>\n{"name": "get_weather", "arguments": {"days": 2}}\n</tool_call>')
    assert _accepts(forced_call_grammar(HERMES, [WEATHER], parallel=True), good + "\n" + good)
    llama = forced_call_grammar(LLAMA3, [WEATHER], parallel=False)
    assert _accepts(llama, '{"name": "get_weather", "parameters": {"city": "Oslo"}}')
    assert not _accepts(llama, good)


def test_output_grammars() -> None:
    assert _accepts(choice_grammar(["yes", "no"]), "no")
    assert not _accepts(choice_grammar(["yes", "no"]), "maybe")
    assert _accepts(regex_grammar(r"[0-9]{3}-[0-9]{4}"), "555-1234")
    assert not _accepts(regex_grammar(r"[0-9]{3}-[0-9]{4}"), "555-12345")
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    assert _accepts(json_schema_grammar(schema), '{"n": 3}')
    assert not _accepts(json_schema_grammar(schema), '{"n": "3"}')
    assert _accepts(json_schema_grammar(schema), "{\n" + " " * 39 + '"n": 3}')
    assert not _accepts(json_schema_grammar(schema), "{\n" + " " * 40 + '"n": 3}')  # bounded runs
    forced = forced_call_grammar(HERMES, [WEATHER], parallel=False)
    padded = (
        '<tool_call>\n{"name": "get_weather",' + " " * 41 + '"arguments": {"city": "Oslo"}}\n</tool_call>'
    )
    assert not _accepts(forced, padded)
    with pytest.raises(GrammarError, match="regex"):
        regex_grammar("[a-")
    with pytest.raises(GrammarError, match="JSON schema"):
        json_schema_grammar({"type": "object", "properties": {"n": {"type": "no-such-type"}}})
