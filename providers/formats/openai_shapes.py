"""The shapes OpenAI's two formats share: a function tool's fields and a JSON-schema output format.

Chat Completions nests them (``tools[].function``, ``response_format.json_schema``); Responses
puts the same fields one level up (``tools[]``, ``text.format``). Each codec picks the object and
its field path; these read and write the fields, naming the bad one in a ``FormatError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers.formats.fields import opt_bool, opt_str, req_obj, req_str
from providers.schema import ResponseFormat, Tool


def parse_function(fn: Mapping[str, Any], param: str) -> Tool:
    """``{name, description?, parameters?, strict?}`` at ``param`` -> ``Tool``."""
    parameters = fn.get("parameters")
    return Tool(
        name=req_str(fn.get("name"), f"{param}.name"),
        description=opt_str(fn.get("description"), f"{param}.description"),
        parameters=(
            dict(req_obj(parameters, f"{param}.parameters"))
            if parameters is not None
            else {"type": "object", "properties": {}}
        ),
        strict=opt_bool(fn.get("strict"), f"{param}.strict"),
    )


def function_json(tool: Tool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    out["parameters"] = tool.parameters
    if tool.strict is not None:
        out["strict"] = tool.strict
    return out


def parse_json_schema(spec: Mapping[str, Any], param: str) -> ResponseFormat:
    """``{name, schema?, strict?}`` at ``param`` -> a json_schema ``ResponseFormat``."""
    schema = spec.get("schema")
    return ResponseFormat(
        "json_schema",
        name=req_str(spec.get("name"), f"{param}.name"),
        schema=None if schema is None else dict(req_obj(schema, f"{param}.schema")),
        strict=opt_bool(spec.get("strict"), f"{param}.strict"),
    )


def json_schema_json(fmt: ResponseFormat) -> dict[str, Any]:
    out: dict[str, Any] = {"name": fmt.name or "response"}
    if fmt.schema is not None:
        out["schema"] = fmt.schema
    if fmt.strict is not None:
        out["strict"] = fmt.strict
    return out
