"""Which tool-call syntax a model speaks, read off its chat template.

- ``hermes``: ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` blocks, any
  number, after optional text (Hermes 2/3, Qwen 2/2.5/3, SmolLM3 and most ChatML models).
- ``llama3_json``: the whole reply is ``{"name": ..., "parameters": {...}}`` (Llama 3.1/3.2/3.3;
  several calls separated by ``;``).

A template that never mentions ``tools`` gets the Hermes syntax through a system prompt
(``native=False``); one that renders tools in a syntax not listed here cannot do tools here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class ToolsUnsupported(ValueError):
    """The model's chat template renders tools in a syntax the engine cannot parse back."""


@dataclass(frozen=True, slots=True)
class ToolFormat:
    name: str
    # Does the chat template render ``tools`` itself (else the engine writes a system prompt)?
    native: bool
    # The key holding a call's arguments in the generated JSON.
    arguments_key: str


HERMES_START = "<tool_call>"
HERMES_END = "</tool_call>"

_USES_TOOLS = re.compile(r"\btools\b")


def tool_format(template: str | None) -> ToolFormat:
    """The syntax for a chat template's source (``ToolsUnsupported`` when tools cannot work)."""
    if not template:
        raise ToolsUnsupported("this model has no chat template, so it cannot be given tools")
    if not _USES_TOOLS.search(template):
        return ToolFormat("hermes", native=False, arguments_key="arguments")
    if HERMES_START in template:
        return ToolFormat("hermes", native=True, arguments_key="arguments")
    if "<|python_tag|>" in template or "ipython" in template:
        return ToolFormat("llama3_json", native=True, arguments_key="parameters")
    raise ToolsUnsupported(
        "this model's chat template writes tool calls in a syntax the local engine does not parse "
        "(supported: Hermes/Qwen <tool_call> blocks, Llama 3 JSON)"
    )
