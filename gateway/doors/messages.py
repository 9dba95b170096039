"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: the Anthropic Messages door.

The door declares (``gateway.doors.base``); the pipeline conducts the stages. Requests take the
typed path: the body becomes a ``GenerationRequest``, the provider answers with a
``GenerationResponse`` or ``StreamEvent``s (an OpenAI-compatible adapter translates with
``providers.formats.openai_chat``), written back as Anthropic's ``message`` or its event
sequence. Errors on this door are Anthropic's ``{"type": "error", "error": {"type", "message"}}``.

Auth: the ``anthropic`` SDK sends its key as ``x-api-key``; every header of ``gateway.auth.KEY_HEADERS``
is read, in LiteLLM's order.
``anthropic-version`` is accepted and not checked (one version of the API is spoken).

``count_tokens`` authenticates and checks model access like the door, then counts: exactly when
the model's deployments are served by an adapter that counts (``TokenCounter``: the local engine,
with its own chat template and tokenizer, and Anthropic's own endpoint), else the stated estimate
below. It generates nothing, is not admitted against limits and spends nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import orjson

from gateway.auth import KEY_HEADERS
from gateway.doors.base import Door, DoorCall, DoorOperation, DoorRequest, ErrorFormat, EventWriter
from gateway.errors import GatewayError, as_gateway_error, bad_request
from gateway.limits.estimate import MAX_COMPLETION_TOKENS
from gateway.pipeline.conductor import check_model
from gateway.pipeline.respond import Receive, Scope, Send, send_body, send_error
from gateway.server.body import ClientGone, check_json_depth, read_body
from providers.contract import ProviderCall
from providers.formats import anthropic_messages
from providers.formats.errors import FormatError
from providers.schema import (
    Finish,
    GenerationRequest,
    GenerationResponse,
    Message,
    ReasoningDelta,
    StreamStart,
    TextDelta,
    TextPart,
    ToolCallDelta,
    UsageReport,
)

if TYPE_CHECKING:
    from gateway.routing.deployment import Deployment
    from gateway.routing.router import Router

# Anthropic's error type for each status (https://docs.anthropic.com/en/api/errors).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "invalid_request_error" if 400 <= status < 500 else "api_error")


def error_body(status: int, message: str) -> bytes:
    """Anthropic's error shape for an answer with ``status``."""
    return orjson.dumps({"type": "error", "error": {"type": error_type(status), "message": message}})


def _anthropic_type(err: GatewayError) -> str:
    # A spent budget keeps the gateway's status (400, as on every door) but says what it is:
    # Anthropic's shape has no ``code`` field to carry ``budget_exceeded``.
    return "billing_error" if err.code == "budget_exceeded" else error_type(err.status)


def gateway_error_body(err: GatewayError) -> bytes:
    """``err`` in Anthropic's shape (its message names the offending field where there is one)."""
    return orjson.dumps({"type": "error", "error": {"type": _anthropic_type(err), "message": err.message}})


# Rough but stated: ~4 characters a token plus a few per message, as the limiter's admission
# estimate does. Used where no adapter of the model counts (``TokenCounter`` below).
_CHARS_PER_TOKEN = 4
_PER_MESSAGE = 4


def estimate_input_tokens(req: GenerationRequest) -> int:
    """An estimate of the prompt's tokens (text, tool calls, tool schemas)."""
    chars = sum(_message_chars(m) for m in req.messages)
    chars += sum(len(t.name) + len(t.description or "") + len(orjson.dumps(t.parameters)) for t in req.tools)
    return chars // _CHARS_PER_TOKEN + _PER_MESSAGE * len(req.messages)


def _message_chars(msg: Message) -> int:
    text = sum(len(p.text) for p in msg.content if isinstance(p, TextPart))
    return text + sum(len(c.name) + len(c.arguments) for c in msg.tool_calls)


def _parse(raw: bytes) -> dict[str, Any]:
    check_json_depth(raw)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    return body


def _read(body: Mapping[str, Any], *, require_max_tokens: bool) -> GenerationRequest:
    try:
        req = anthropic_messages.parse_request(body, require_max_tokens=require_max_tokens)
    except FormatError as exc:
        raise bad_request(exc.message, exc.param) from None
    # The limiter reserves max_tokens in a Redis integer: bound it as the chat door does.
    if req.max_tokens is not None and not 1 <= req.max_tokens <= MAX_COMPLETION_TOKENS:
        raise bad_request(f"'max_tokens' must be an integer from 1 to {MAX_COMPLETION_TOKENS}", "max_tokens")
    return req


class MessagesDoor(Door):
    operation: ClassVar[DoorOperation] = "messages"
    error_format: ClassVar[ErrorFormat] = "anthropic"
    extra_headers: ClassVar[tuple[bytes, ...]] = (b"anthropic-version",)
    # A stream is served from a cached plain answer (``replay``); a streamed answer itself is
    # not stored (the recorder reads OpenAI chunks, which this door's typed stream never feeds).
    cache_streams: ClassVar[bool] = True

    async def read(self, raw: bytes, call: DoorCall) -> DoorRequest:
        body = _parse(raw)
        req = _read(body, require_max_tokens=True)
        prompt = estimate_input_tokens(req)
        # Everything but ``stream`` decides the answer: a plain answer also serves a stream.
        material = {k: v for k, v in body.items() if k != "stream"}
        return DoorRequest(
            model=req.model,
            stream=req.stream,
            request=req,
            cache_material=material,
            estimated_tokens=prompt + (req.max_tokens or 0),
            state=prompt,
        )

    def write(self, response: GenerationResponse, req: DoorRequest) -> bytes:
        return orjson.dumps(anthropic_messages.build_response(response))

    def stream_writer(self, req: DoorRequest) -> EventWriter:
        return anthropic_messages.StreamWriter(input_tokens=req.state or 0)

    def write_error(self, err: GatewayError) -> bytes:
        return gateway_error_body(err)

    def stream_error(self, err: GatewayError) -> bytes:
        return anthropic_messages.error_event(_anthropic_type(err), err.message)

    def replay(self, cached: bytes, req: DoorRequest) -> bytes | None:
        """A cached plain ``message`` as the event sequence a live stream of it would have sent."""
        answer = anthropic_messages.parse_response(orjson.loads(cached))
        writer = anthropic_messages.StreamWriter(input_tokens=req.state or 0)
        out = writer.write(StreamStart(answer.id, answer.model, answer.created))
        if answer.reasoning:
            out += writer.write(ReasoningDelta(answer.reasoning))
        if answer.text:
            out += writer.write(TextDelta(answer.text))
        for i, call in enumerate(answer.tool_calls):
            out += writer.write(ToolCallDelta(i, call.arguments, call.id, call.name))
        out += writer.write(Finish(answer.finish_reason))
        if answer.usage is not None:
            out += writer.write(UsageReport(answer.usage))
        return out + writer.end()


def read_count_request(raw: bytes) -> GenerationRequest:
    """A ``count_tokens`` body as the typed request (the ``messages`` body without ``max_tokens``)."""
    return _read(_parse(raw), require_max_tokens=False)


@runtime_checkable
class TokenCounter(Protocol):
    """An adapter that counts a prompt's tokens as its upstream does: ``LocalProvider`` (the
    engine's chat template and tokenizer) and ``AnthropicProvider`` (Anthropic's own
    ``POST /v1/messages/count_tokens``). Every other adapter gets the estimate, including Anthropic
    models behind an OpenAI-compatible upstream.
    """

    async def count_tokens(self, request: GenerationRequest, call: ProviderCall) -> int: ...


def exact_counter(router: Router, model: str) -> tuple[TokenCounter, Deployment] | None:
    """The adapter and deployment that count ``model``'s prompts: its first deployment's (config
    order) when every deployment's adapter counts; None when any would be estimated, as the
    router may send the request to that one.
    """
    group = router.groups.get(model)
    if group is None and router.wildcards is not None:
        # A name a wildcard entry serves: its deployments, with the name as their upstream model.
        group = router.wildcards.group(model, "chat")
    if group is None:
        return None
    states = group.deployments
    adapters = [router.providers.get(state.deployment.provider) for state in states]
    counters = [adapter for adapter in adapters if isinstance(adapter, TokenCounter)]
    if len(counters) < len(adapters):
        return None
    first = states[0]
    return counters[0], group.concrete[first.id] if group.concrete is not None else first.deployment


async def count_input_tokens(router: Router, req: GenerationRequest, request_id: str) -> int:
    """``req``'s prompt tokens: counted by the model's adapter where it counts, else estimated."""
    counter = exact_counter(router, req.model)
    if counter is None:
        return estimate_input_tokens(req)
    adapter, deployment = counter
    return await adapter.count_tokens(req, deployment.provider_call({}, request_id))


class CountTokens:
    """``POST /v1/messages/count_tokens`` (an ASGI app: Starlette would wrap a plain function as a
    request handler): authenticate, read, check model access, count (``count_input_tokens``).

    Nothing is generated, admitted or spent (Anthropic counts it apart from messages too); a key
    still needs access to the model it asks about, checked before any model is loaded to count.
    """

    __slots__ = ("door",)

    def __init__(self) -> None:
        self.door = MessagesDoor()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = scope["app"].state.services
        wanted = (*(h.encode() for h in KEY_HEADERS), b"content-length")
        headers = {k: v for k, v in scope["headers"] if k in wanted}
        request_id = uuid.uuid4().hex  # not a hot path: a uuid4 per request is fine here
        try:
            principal = await services.auth.authenticate(self.door.token(headers))
            limit = services.config.max_request_body_bytes
            raw = await read_body(receive, headers.get(b"content-length"), limit)
            req = read_count_request(raw)
            check_model(services, principal, req.model, self.door)
            counted = await count_input_tokens(services.router, req, request_id)
            answer = orjson.dumps({"input_tokens": counted})
            ok = [(b"content-type", b"application/json"), (b"x-request-id", request_id.encode())]
            await send_body(send, 200, answer, ok)
        except ClientGone:
            return
        except Exception as exc:
            err = as_gateway_error(exc)
            body = gateway_error_body(err)
            await send_error(send, err.status, body, request_id, err.headers, b"application/json")
