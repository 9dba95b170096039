"""Tools into the prompt, and the grammar that forces a tool call.

Native templates get the OpenAI ``tools`` list and the conversation as Hugging Face templates
expect it (a past call's ``arguments`` as an object, not a JSON string). Templates without tool
support get the Hermes convention written out: a system prompt listing the tools, past calls as
``<tool_call>`` text and tool results as ``<tool_response>`` user turns (any template renders
system/user/assistant turns; many reject a ``tool`` role).
"""

from __future__ import annotations

import json
from typing import Any

from local_engine.structured import lark_grammar
from local_engine.structured.grammar import JSON_OPTIONS
from local_engine.tools.formats import HERMES_END, HERMES_START, ToolFormat

_HERMES_SYSTEM = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _arguments_object(arguments: Any) -> Any:
    """OpenAI sends a call's arguments as a JSON string; templates dump them as an object."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def _native(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls:
            message = {
                **message,
                "tool_calls": [
                    {
                        **call,
                        "function": {
                            **call.get("function", {}),
                            "arguments": _arguments_object(call.get("function", {}).get("arguments")),
                        },
                    }
                    for call in calls
                ],
            }
        out.append(message)
    return out


def _hermes_call_text(call: dict[str, Any]) -> str:
    function = call.get("function", {})
    body = {"name": function.get("name"), "arguments": _arguments_object(function.get("arguments"))}
    return f"{HERMES_START}\n{_dumps(body)}\n{HERMES_END}"


def _hermes_fallback(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "tool":
            response = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            if out and out[-1].get("_tool_responses"):
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response, "_tool_responses": True})
            continue
        calls = message.get("tool_calls")
        if role == "assistant" and calls:
            parts = [message.get("content") or ""] + [_hermes_call_text(c) for c in calls]
            message = {"role": "assistant", "content": "\n".join(p for p in parts if p)}
        out.append(message)
    for message in out:
        message.pop("_tool_responses", None)
    if tools:
        prompt = _HERMES_SYSTEM.format(tools="\n".join(_dumps(t) for t in tools))
        if out and out[0].get("role") == "system":
            out[0] = {**out[0], "content": f"{out[0].get('content') or ''}\n\n{prompt}".lstrip()}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def prepare_messages(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, fmt: ToolFormat
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and ``tools`` argument to render the chat template with."""
    if fmt.native:
        return _native(messages), tools
    return _hermes_fallback(messages, tools), None


def _call_schema(tool: dict[str, Any], fmt: ToolFormat) -> dict[str, Any]:
    function = tool["function"]
    parameters = function.get("parameters") or {"type": "object"}
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, fmt.arguments_key: parameters},
        "required": ["name", fmt.arguments_key],
        "additionalProperties": False,
    }


def forced_call_grammar(fmt: ToolFormat, tools: list[dict[str, Any]], parallel: bool) -> str:
    """A grammar whose every output is a call (several when ``parallel``) of one of ``tools``."""
    schemas = [_call_schema(t, fmt) for t in tools]
    body = _dumps({**(schemas[0] if len(schemas) == 1 else {"anyOf": schemas}), "x-guidance": JSON_OPTIONS})
    if fmt.name == "hermes":
        call = f'call: "{HERMES_START}\\n" body "\\n{HERMES_END}"\n'
        start = 'start: call ("\\n" call)*\n' if parallel else "start: call\n"
    else:
        call = "call: body\n"
        start = 'start: call ("; " call)*\n' if parallel else "start: call\n"
    return lark_grammar(f"{start}{call}body: %json {body}\n")
