"""The door contract: what a client API (an HTTP endpoint) tells the one pipeline.

A door does not run stages. It declares its ``operation`` (recorded on spend rows) and the
``capability`` a deployment must serve, reads its wire body into a ``DoorRequest``, writes the
pipeline's answer back in its own format, and says how its errors look. ``gateway.pipeline``
does the rest, identically for every door: authenticate -> model access -> admit -> cache ->
route -> provider -> settle limits, store in cache, record spend.

Two paths:

- Raw (``DoorRequest.request is None``): ``body`` is an OpenAI-format body sent upstream with
  ``model`` replaced, and the upstream's bytes go back to the client untouched (OpenAI Chat,
  Completions, Embeddings to OpenAI-format upstreams: the fast path).
- Typed (``DoorRequest.request`` set): the provider answers with a ``GenerationResponse`` or
  ``StreamEvent``s, which the door writes (``write``, ``stream_writer``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from gateway.auth import KEY_HEADERS, request_token
from gateway.errors import GatewayError
from providers.contract import Operation
from providers.schema import GenerationRequest, GenerationResponse, StreamEvent

if TYPE_CHECKING:
    from gateway.pipeline import Principal
    from gateway.services import Services

# Recorded in spend_logs.operation: the client API the request came through.
DoorOperation = Literal["chat", "embeddings", "completions", "messages", "responses"]
ErrorFormat = Literal["openai", "anthropic"]
_KEY_HEADER_BYTES = {name: name.encode() for name in KEY_HEADERS}  # ASGI header names are bytes


@dataclass(slots=True)
class DoorRequest:
    """What the pipeline needs from a request body, as a door read it.

    ``cache_material``: the fields that decide the answer (the cache key is computed from it, the
    operation and the tenant); ``None`` when the request must not be cached. ``estimated_tokens``
    is what the limiter reserves against TPM before the answer is known. ``include_usage`` (raw
    streams): the client asked for the usage chunk (it is always requested upstream and stripped
    otherwise). ``state`` is the door's own, carried from ``read`` to ``write``.
    """

    model: str
    stream: bool = False
    body: dict[str, Any] | None = None
    request: GenerationRequest | None = None
    cache_material: Mapping[str, Any] | None = None
    estimated_tokens: int = 0
    include_usage: bool = False
    state: Any = None


@dataclass(slots=True)
class DoorCall:
    """What ``read`` may consult besides the body (``Services`` for doors that load stored state)."""

    headers: Mapping[bytes, bytes]
    principal: Principal
    services: Services
    request_id: str
    metadata: dict[str, Any] = field(default_factory=dict)


class EventWriter(Protocol):
    """Writes typed stream events as this door's SSE bytes (stateful: block indexes, open/close)."""

    def write(self, event: StreamEvent) -> bytes:
        """The bytes for one event (``b""`` when it produces none yet)."""
        ...

    def end(self) -> bytes:
        """The closing bytes after the last event (OpenAI's ``[DONE]``, Anthropic's message_stop...)."""
        ...


class Door:
    """Base class of every door; subclasses set the class attributes and override what they need."""

    operation: ClassVar[DoorOperation]
    capability: ClassVar[Operation] = "chat"
    error_format: ClassVar[ErrorFormat] = "openai"
    # Request headers the door reads besides the ones every request uses (the key headers of
    # ``gateway.auth.KEY_HEADERS``, x-request-id, content-length, cache-control), lower-case.
    extra_headers: ClassVar[tuple[bytes, ...]] = ()
    # Streams this door answers are SSE; content type of its plain answers:
    content_type: ClassVar[bytes] = b"application/json"
    # Whether streamed answers are cached (recorded as they pass, replayed with ``replay``);
    # otherwise a stream neither reads nor fills the cache.
    cache_streams: ClassVar[bool] = False

    def token(self, headers: Mapping[bytes, bytes]) -> str | None:
        """The caller's API key from any header LiteLLM accepts, in its order (``KEY_HEADERS``)."""

        def get(name: str) -> str | None:
            value = headers.get(_KEY_HEADER_BYTES[name])
            return None if value is None else value.decode("latin-1")

        return request_token(get)

    async def read(self, raw: bytes, call: DoorCall) -> DoorRequest:
        """Parse and check ``raw``; raise ``GatewayError`` (400) with the offending param."""
        raise NotImplementedError

    def write(self, response: GenerationResponse, req: DoorRequest) -> bytes:
        """The plain answer body for a typed response."""
        raise NotImplementedError

    def stream_writer(self, req: DoorRequest) -> EventWriter:
        """A fresh writer for one typed stream."""
        raise NotImplementedError

    def write_error(self, err: GatewayError) -> bytes:
        """The error body in this door's format (OpenAI's ``{"error": {...}}`` by default)."""
        return err.body()

    def stream_error(self, err: GatewayError) -> bytes:
        """The SSE event that ends a stream which failed after its headers were sent."""
        return b"data: " + err.body() + b"\n\n"

    def replay(self, cached: bytes, req: DoorRequest) -> bytes | None:
        """A whole SSE stream from a cached plain answer, or ``None`` when streams are not
        served from the cache on this door."""
        return None

    async def completed(self, req: DoorRequest, response: GenerationResponse, call: DoorCall) -> None:
        """Called once with a whole typed answer just before its last bytes go out (the plain
        body; a stream's closing event), so what it stores can be read back as soon as the client
        has the answer (stored Responses). Raising fails the request with that error."""
        return None
