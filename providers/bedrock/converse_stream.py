"""ConverseStream events (decoded from the event stream, payloads parsed) -> ``StreamEvent``.

Reference: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html
and ``ConverseStreamOutput``: ``messageStart``, ``contentBlockStart`` (a tool call's
``toolUseId`` and ``name``), ``contentBlockDelta`` (``text``, ``toolUse.input`` JSON fragments,
``reasoningContent``), ``contentBlockStop``, ``messageStop`` (``stopReason``) and ``metadata``
(``usage``). Exception events are the adapter's business (``providers.bedrock.errors``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers.bedrock.converse import JSON_TOOL, finish_reason, parse_usage
from providers.formats.errors import FormatError
from providers.schema import (
    Finish,
    ReasoningDelta,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCallDelta,
    UsageReport,
)


class StreamParser:
    """One ConverseStream answer. Bedrock names neither the answer nor its time: ``StreamStart``
    carries the ``id``/``model``/``created`` given here, before anything else.

    With ``json_tool`` (the request wanted JSON), ``JSON_TOOL``'s input streams as text.
    """

    __slots__ = ("_json_blocks", "_json_tool", "_start", "_tools")

    def __init__(self, *, id: str, model: str, created: int, json_tool: bool = False) -> None:
        self._start: StreamStart | None = StreamStart(id, model, created)
        # contentBlockIndex of a tool call -> [our tool index, whether input has streamed]
        self._tools: dict[int, list[int | bool]] = {}
        self._json_tool = json_tool
        self._json_blocks: set[int] = set()

    def feed(self, event_type: str, payload: Mapping[str, Any]) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if self._start is not None:
            out.append(self._start)
            self._start = None
        if event_type == "contentBlockDelta":
            out += self._delta(payload)
        elif event_type == "contentBlockStart":
            use = (payload.get("start") or {}).get("toolUse")
            if isinstance(use, Mapping) and self._json_tool and use.get("name") == JSON_TOOL:
                self._json_blocks.add(_index(payload))
            elif isinstance(use, Mapping):
                ours = len(self._tools)
                self._tools[_index(payload)] = [ours, False]
                out.append(
                    ToolCallDelta(ours, "", str(use.get("toolUseId") or ""), str(use.get("name") or ""))
                )
        elif event_type == "contentBlockStop":
            tool = self._tools.get(_index(payload))
            if tool is not None and not tool[1]:
                # A call without arguments streams no input at all; OpenAI clients expect "{}".
                tool[1] = True
                out.append(ToolCallDelta(int(tool[0]), "{}"))
        elif event_type == "messageStop":
            reason = finish_reason(payload.get("stopReason"))
            if reason == "tool_calls" and self._json_blocks and not self._tools:
                reason = "stop"  # the only tool called was the JSON carrier: a plain answer
            out.append(Finish(reason))
        elif event_type == "metadata":
            usage = parse_usage(payload.get("usage"))
            if usage is not None:
                out.append(UsageReport(usage))
        # messageStart and event types added later carry nothing to translate.
        return out

    def _delta(self, payload: Mapping[str, Any]) -> list[StreamEvent]:
        delta = payload.get("delta")
        if not isinstance(delta, Mapping):
            return []
        text = delta.get("text")
        if isinstance(text, str):
            return [TextDelta(text)] if text else []
        use = delta.get("toolUse")
        if isinstance(use, Mapping) and _index(payload) in self._json_blocks:
            fragment = use.get("input")
            return [TextDelta(fragment)] if isinstance(fragment, str) and fragment else []
        if isinstance(use, Mapping):
            tool = self._tools.get(_index(payload))
            if tool is None:
                raise FormatError("toolUse input streamed for a content block that did not start a tool call")
            fragment = use.get("input")
            if not isinstance(fragment, str) or not fragment:
                return []
            tool[1] = True
            return [ToolCallDelta(int(tool[0]), fragment)]
        reasoning = delta.get("reasoningContent")
        if isinstance(reasoning, Mapping) and isinstance(reasoning.get("text"), str):
            return [ReasoningDelta(reasoning["text"])]
        return []  # a reasoning signature or redacted reasoning: no slot


def _index(payload: Mapping[str, Any]) -> int:
    index = payload.get("contentBlockIndex", 0)
    return index if isinstance(index, int) else 0
