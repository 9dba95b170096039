"""A typed stream put back together: the ``GenerationResponse`` the events add up to.

Doors that keep answers (stored Responses) get the whole answer after a stream, as after a
plain request, without each writing its own accumulator.
"""

from __future__ import annotations

from providers.schema import (
    Finish,
    GenerationResponse,
    ReasoningDelta,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    UsageReport,
)


class Assembler:
    """Feed every event in order; ``response`` is the answer so far."""

    __slots__ = ("_reasoning", "_text", "response")

    def __init__(self) -> None:
        self.response = GenerationResponse(id="", model="", created=0)
        self._text: list[str] = []
        self._reasoning: list[str] = []

    def feed(self, event: StreamEvent) -> None:
        r = self.response
        if isinstance(event, TextDelta):
            self._text.append(event.text)
        elif isinstance(event, ToolCallDelta):
            if event.id is not None or event.index >= len(r.tool_calls):
                r.tool_calls.append(ToolCall(event.id or "", event.name or "", event.arguments))
            else:
                call = r.tool_calls[event.index]
                call.arguments += event.arguments
        elif isinstance(event, ReasoningDelta):
            self._reasoning.append(event.text)
        elif isinstance(event, Finish):
            r.finish_reason = event.reason
        elif isinstance(event, UsageReport):
            r.usage = event.usage
        elif isinstance(event, StreamStart):
            r.id, r.model, r.created = event.id, event.model, event.created

    def result(self) -> GenerationResponse:
        self.response.text = "".join(self._text)
        if self._reasoning:
            self.response.reasoning = "".join(self._reasoning)
        return self.response
