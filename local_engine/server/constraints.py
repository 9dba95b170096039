"""What a chat or completion request asks of the output: which tool syntax to parse (``tools``,
``tool_choice``) and which grammar to force (``response_format``, vLLM's ``guided_*``, or a
required tool call). Every refusal is an ``OpenAIError`` 400 naming the field."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from local_engine.server.protocol import ChatCompletionRequest, CompletionRequest, OpenAIError
from local_engine.structured import (
    GrammarError,
    choice_grammar,
    json_object_grammar,
    json_schema_grammar,
    regex_grammar,
)
from local_engine.tools import ToolFormat, ToolsUnsupported, forced_call_grammar, tool_format


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """How tools take part in one chat request."""

    fmt: ToolFormat | None  # None: the model has no tool syntax (only for tool_choice "none")
    tools: list[dict[str, Any]]  # the tools the template renders (none for tool_choice "none")
    forced: list[dict[str, Any]]  # the tools one of which must be called (empty: not forced)
    parse: bool  # parse tool calls out of the reply
    parallel: bool = False  # a forced reply may hold several calls (not for a named tool_choice)


def _template_source(chat_template: str | dict[str, str] | None) -> str | None:
    if isinstance(chat_template, dict):
        return chat_template.get("tool_use") or chat_template.get("default")
    return chat_template


def tool_plan(req: ChatCompletionRequest, chat_template: str | dict[str, str] | None) -> ToolPlan | None:
    """None when the request has no tools (and then ``tool_choice`` must be unset)."""
    choice = req.tool_choice
    if not req.tools:
        if choice not in (None, "none"):
            raise OpenAIError(400, "tool_choice is only allowed when tools are given", param="tool_choice")
        return None
    tools = [t.model_dump(exclude_none=True) for t in req.tools]
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise OpenAIError(400, "tools: function names must be unique", param="tools")
    forced: list[dict[str, Any]] = []
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        if not isinstance(name, str):
            raise OpenAIError(
                400,
                'tool_choice: must be "none", "auto", "required" or {"type": "function", "function": '
                '{"name": ...}}',
                param="tool_choice",
            )
        if name not in names:
            raise OpenAIError(400, f"tool_choice: no tool named {name!r} among {names}", param="tool_choice")
        forced = [tools[names.index(name)]]
    elif choice == "required":
        forced = tools
    try:
        fmt = tool_format(_template_source(chat_template))
    except ToolsUnsupported as exc:
        if choice == "none":
            return ToolPlan(None, [], [], parse=False)
        raise OpenAIError(400, f"tools: {exc}", param="tools") from None
    if choice == "none":
        return ToolPlan(fmt, [], [], parse=False)
    parallel = req.parallel_tool_calls is not False and not isinstance(choice, dict)
    return ToolPlan(fmt, tools, forced, parse=True, parallel=parallel)


def _schema(value: dict[str, Any] | str, param: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise OpenAIError(400, f"{param}: not valid JSON", param=param) from None
    if not isinstance(value, dict):
        raise OpenAIError(400, f"{param}: must be a JSON schema object", param=param)
    return value


def output_grammar(
    req: ChatCompletionRequest | CompletionRequest, plan: ToolPlan | None = None
) -> str | None:
    """The grammar the output must match, or None for free text."""
    wanted: list[tuple[str, Any]] = []
    fmt = req.response_format
    if fmt is not None and fmt.type != "text":
        wanted.append(("response_format", fmt))
    for name in ("guided_json", "guided_regex", "guided_choice"):
        if getattr(req, name) is not None:
            wanted.append((name, getattr(req, name)))
    if plan is not None and plan.forced:
        wanted.append(("tool_choice", plan))
    if not wanted:
        return None
    if len(wanted) > 1:
        fields = ", ".join(name for name, _ in wanted)
        raise OpenAIError(400, f"only one output constraint may be set, got {fields}", param=wanted[1][0])
    param, value = wanted[0]
    try:
        if param == "response_format":
            if value.type == "json_object":
                return json_object_grammar()
            if value.json_schema is None:
                raise OpenAIError(400, "response_format.json_schema: required", param="response_format")
            schema = value.json_schema.schema_
            return json_schema_grammar(schema) if schema is not None else json_object_grammar()
        if param == "guided_json":
            return json_schema_grammar(_schema(value, param))
        if param == "guided_regex":
            return regex_grammar(value)
        if param == "guided_choice":
            return choice_grammar(value)
        assert plan is not None and plan.fmt is not None
        return forced_call_grammar(plan.fmt, plan.forced, parallel=plan.parallel)
    except GrammarError as exc:
        raise OpenAIError(400, f"{param}: {exc}", param=param) from None
