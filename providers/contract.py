"""The provider contract: what the router calls to reach an upstream, one method per operation.

An adapter declares the operations it serves in ``capabilities``; the router sends an operation
only to deployments whose adapter lists it. Two paths per generation:

- **Raw** (the fast path): the client's OpenAI-format body goes upstream with only ``model``
  replaced, and the upstream's bytes come back untouched (``chat``/``chat_stream``,
  ``completions``/``completions_stream``, ``embeddings``). Used when the client's door and the
  upstream both speak OpenAI's format.
- **Typed**: a ``GenerationRequest`` (``providers.schema``) in, a ``GenerationResponse`` or
  ``StreamEvent``s out (``generate``/``generate_stream``). Used by doors of another format
  (Anthropic Messages, Responses), and by adapters whose upstream is not OpenAI-format.

Every failure is raised as a ``ProviderError`` (``providers.errors``). Streams yield complete
events; closing the iterator (``aclose``) must cancel the upstream request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from providers.schema import GenerationRequest, GenerationResponse, StreamEvent
from providers.usage import Usage

# What a deployment may be asked to do. A door of another wire format (Messages, Responses)
# still asks for "chat": the operation is what the upstream does, not how the client spoke.
Operation = Literal["chat", "embeddings", "completions"]
OPERATIONS: tuple[Operation, ...] = get_args(Operation)

# Adapters written before the contract had capabilities served chat only.
DEFAULT_CAPABILITIES: frozenset[Operation] = frozenset({"chat"})


@dataclass(slots=True)
class ProviderCall:
    """One request to one upstream deployment.

    ``body`` is the caller's OpenAI-format request body (already parsed) for the raw path, and
    empty on the typed path (the request travels as a ``GenerationRequest`` beside it). Adapters
    must not mutate it (the router may reuse it for a retry on another deployment) and must send
    ``model`` as ``upstream_model``. Unknown fields in ``body`` pass through unchanged.
    ``params`` are the deployment's full params from the config (provider-specific extras).
    """

    upstream_model: str
    body: dict[str, Any]
    api_base: str | None = None
    api_key: str | None = None
    timeout: float = 600.0  # whole request (non-streaming)
    stream_timeout: float | None = None  # time to first byte and between chunks when streaming
    request_id: str = ""
    extra_headers: dict[str, str] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    # Told about the phases of the work the adapter itself runs for this call (the local engine's
    # queue, prefill and decode): ``(name, start, end, attributes)``, times on ``time.monotonic()``.
    # None when nobody listens (the gateway sets it when tracing is on).
    on_phase: Callable[[str, float, float, dict[str, Any]], None] | None = None


@dataclass(slots=True)
class ProviderResponse:
    """A complete raw upstream response: ``body`` is returned to the client as it is."""

    status: int
    body: bytes
    usage: Usage | None = None
    headers: dict[str, str] = field(default_factory=dict)


@runtime_checkable
class ChatProvider(Protocol):
    """The minimum an adapter has: raw OpenAI chat completions (``capabilities`` = {"chat"})."""

    async def chat(self, call: ProviderCall) -> ProviderResponse:
        """A non-streaming chat completion (OpenAI body in, OpenAI JSON bytes out)."""
        ...

    def chat_stream(self, call: ProviderCall) -> AsyncIterator[bytes]:
        """A chat completion as OpenAI-format SSE events.

        Each item is one complete event, ``b"data: {...}\\n\\n"`` (a ``chat.completion.chunk``),
        never the ``data: [DONE]`` sentinel (the gateway appends it). Upstream usage must be
        requested always (``stream_options.include_usage``) so accounting never loses tokens;
        the gateway strips the usage chunk if the client did not ask for it.
        """
        ...


class Provider(ChatProvider, Protocol):
    """The full operation-aware contract; an adapter implements the methods of its ``capabilities``.

    ``"chat"`` means ``chat``/``chat_stream`` and ``generate``/``generate_stream``;
    ``"completions"`` means ``completions``/``completions_stream``; ``"embeddings"`` means
    ``embeddings``.
    """

    capabilities: frozenset[Operation]

    async def generate(self, request: GenerationRequest, call: ProviderCall) -> GenerationResponse:
        """A complete generation on the typed path (``call.body`` is empty)."""
        ...

    def generate_stream(self, request: GenerationRequest, call: ProviderCall) -> AsyncIterator[StreamEvent]:
        """A generation as typed events: ``StreamStart`` first, ``UsageReport`` when the upstream
        reports usage (always requested), ``Finish`` last but for a trailing ``UsageReport``."""
        ...

    async def completions(self, call: ProviderCall) -> ProviderResponse:
        """A legacy text completion (OpenAI ``/v1/completions`` body in, JSON bytes out)."""
        ...

    def completions_stream(self, call: ProviderCall) -> AsyncIterator[bytes]:
        """A legacy text completion as OpenAI SSE events (``text_completion`` chunks, usage
        always requested, no ``[DONE]``), as ``chat_stream``."""
        ...

    async def embeddings(self, call: ProviderCall) -> ProviderResponse:
        """Embeddings (OpenAI ``/v1/embeddings`` body in, JSON bytes out, usage parsed)."""
        ...


def capabilities_of(provider: object) -> frozenset[Operation]:
    """The operations ``provider`` serves (chat only for an adapter that does not say)."""
    caps = getattr(provider, "capabilities", None)
    return frozenset(caps) if caps is not None else DEFAULT_CAPABILITIES
