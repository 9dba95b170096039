"""The gateway's own model of a generation: the request, the complete response, the stream events.

Every wire format is translated to and from these types (``providers/formats/``): OpenAI Chat
Completions, OpenAI Responses and Anthropic Messages on the client side, and each provider's own
format on the upstream side. A door reads its body into a ``GenerationRequest``; an adapter turns
that into its provider's request and its provider's answer back into a ``GenerationResponse`` or a
stream of ``StreamEvent``; the door writes those in its own format. Two translations per request
at most, and adding a format means one translator, not one per pair.

When the client's format and the upstream's are the same (OpenAI Chat to an OpenAI-compatible
upstream), none of this runs: the body passes through as bytes (the fast path).

Design choices, so translators agree:

- System prompts are ``Message(role="system")`` entries, in order (Anthropic's top-level
  ``system`` and Responses' ``instructions`` become the first message).
- Tool calls are assistant-side ``ToolCall`` values with ``arguments`` as JSON *text*, exactly as
  the model produced it (Anthropic's parsed ``input`` is serialised; never re-parsed in between).
- A tool's result is a ``Message(role="tool", tool_call_id=...)``; Anthropic's ``tool_result``
  blocks inside a user turn become such messages (one each, in order).
- ``extra`` keeps fields of the source format the model has no slot for; an adapter whose
  upstream speaks that same format may send them on, any other ignores them.
- Usage travels as a side channel (``UsageReport`` in a stream), never inside text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from providers.usage import Usage

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]


# ---- content -----------------------------------------------------------------------------------


@dataclass(slots=True)
class TextPart:
    text: str
    # Anthropic's prompt-caching marker, passed through untouched to upstreams that take it.
    cache_control: dict[str, Any] | None = None


@dataclass(slots=True)
class ImagePart:
    """An image by URL, or inline as base64 ``data`` with its ``media_type``."""

    url: str | None = None
    data: str | None = None
    media_type: str | None = None
    detail: str | None = None  # OpenAI's "low" / "high" / "auto"


Part = TextPart | ImagePart


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


@dataclass(slots=True)
class ThinkingBlock:
    """One block of a model's extended thinking as Anthropic returns it, kept so that a later turn
    can send it back verbatim (Anthropic verifies ``signature``, and wants the thinking before a
    tool use answered in the next turn). ``redacted`` holds a redacted block's opaque ``data``."""

    thinking: str = ""
    signature: str | None = None
    redacted: str | None = None


@dataclass(slots=True)
class Message:
    role: Role
    content: list[Part] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)  # assistant messages only
    thinking: list[ThinkingBlock] = field(default_factory=list)  # assistant messages only
    tool_call_id: str | None = None  # tool messages only: the call this answers
    is_error: bool = False  # tool messages only: Anthropic's ``is_error``
    name: str | None = None

    def text(self) -> str:
        """The message's text parts joined (images dropped)."""
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


# ---- request -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Tool:
    """A function the model may call; ``parameters`` is its JSON schema."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


# "auto", "none", "required" (any tool), or the name of the one tool to call.
ToolChoice = str


@dataclass(slots=True)
class ResponseFormat:
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


@dataclass(slots=True)
class GenerationRequest:
    """One chat-style generation, whichever door it came through."""

    model: str
    messages: list[Message]
    stream: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = None
    user: str | None = None
    # Anthropic's extended thinking ({"type": "enabled", "budget_tokens": N}), or OpenAI's
    # reasoning effort ({"effort": "low"}): passed to upstreams that understand it.
    reasoning: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The wire format ``extra`` came from ("openai_chat", "anthropic_messages", "openai_responses"):
    # a codec sends ``extra`` on only to an upstream of that same format.
    source_format: str | None = None


# ---- response ----------------------------------------------------------------------------------


@dataclass(slots=True)
class GenerationResponse:
    """A complete answer (one choice)."""

    id: str
    model: str
    created: int  # unix seconds
    text: str = ""
    reasoning: str | None = None
    # The reasoning as signed blocks, when the upstream gives them (Anthropic): what a client
    # sends back in its next turn. ``reasoning`` is their text.
    thinking: list[ThinkingBlock] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: FinishReason = "stop"
    usage: Usage | None = None


# ---- stream events -----------------------------------------------------------------------------


@dataclass(slots=True)
class StreamStart:
    """First event of every stream: what the answer will be called."""

    id: str
    model: str
    created: int


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ReasoningDelta:
    """Reasoning text; or, with ``text`` empty, the ``signature`` that ends the current thinking
    block, or a whole ``redacted`` thinking block (its opaque data)."""

    text: str
    signature: str | None = None
    redacted: str | None = None


@dataclass(slots=True)
class ToolCallDelta:
    """A piece of the ``index``-th tool call of this answer.

    The first piece of a call carries its ``id`` and ``name``; later pieces only ``arguments``
    fragments, which concatenate to the call's JSON text. Pieces of one call arrive in order, and
    a call's pieces all arrive before the next call's first piece.
    """

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


@dataclass(slots=True)
class Finish:
    reason: FinishReason


@dataclass(slots=True)
class UsageReport:
    usage: Usage


StreamEvent = StreamStart | TextDelta | ReasoningDelta | ToolCallDelta | Finish | UsageReport


# ---- embeddings --------------------------------------------------------------------------------


@dataclass(slots=True)
class EmbeddingRequest:
    model: str
    # Strings, or token-id arrays (OpenAI accepts both); one string is a list of one.
    inputs: list[str] | list[list[int]]
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class EmbeddingResponse:
    model: str
    vectors: list[list[float]]
    usage: Usage | None = None
