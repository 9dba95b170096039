"""AWS Bedrock, natively: Converse and ConverseStream for chat, InvokeModel for embeddings.

References: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html
(``POST /model/{modelId}/converse``), .../API_runtime_ConverseStream.html
(``POST /model/{modelId}/converse-stream``, answered as a binary event stream) and
.../API_runtime_InvokeModel.html (``POST /model/{modelId}/invoke``). The host is
``bedrock-runtime.{region}.amazonaws.com``; ``api_base`` (or LiteLLM's
``aws_bedrock_runtime_endpoint``) replaces it, e.g. for a VPC endpoint. Every request is
SigV4-signed (``providers.bedrock.signing``).

``model`` is ``bedrock/<modelId>``; LiteLLM's ``bedrock/converse/<modelId>`` means the same.
A model id (``anthropic.claude-3-5-sonnet-20240620-v1:0``, an inference profile, an ARN) is
percent-encoded whole into the path.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from providers.bedrock import converse, embeddings, errors
from providers.bedrock.converse_stream import StreamParser
from providers.bedrock.credentials import CredentialSource, Identity, region_of
from providers.bedrock.eventstream import EventMessage, EventStreamDecoder, EventStreamError
from providers.bedrock.signing import sign
from providers.contract import Operation, ProviderCall
from providers.errors import ProviderError
from providers.formats.errors import FormatError
from providers.http import shared_client
from providers.native import NativeProvider, unsupported_parameter
from providers.redaction import Scrubber, call_scrubber
from providers.schema import (
    EmbeddingRequest,
    EmbeddingResponse,
    Finish,
    GenerationRequest,
    GenerationResponse,
    StreamEvent,
)
from providers.usage import Usage

_JSON = "application/json"
_EVENT_STREAM = "application/vnd.amazon.eventstream"
# InvokeModel calls in flight at once for one embeddings request (Titan embeds one text a call).
_EMBED_CONCURRENCY = 8


class BedrockProvider(NativeProvider):
    """``Provider`` for AWS Bedrock; ``client`` defaults to the shared pool."""

    capabilities: frozenset[Operation] = frozenset({"chat", "embeddings"})
    accepted_extra = converse.ACCEPTED_EXTRA

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client
        self._credentials = CredentialSource()

    def _http(self) -> httpx.AsyncClient:
        return self._client if self._client is not None else shared_client()

    # ---- chat

    async def generate(self, request: GenerationRequest, call: ProviderCall) -> GenerationResponse:
        payload = self._converse_body(request, call)
        body, headers = await self._post(call, "converse", payload)
        try:
            return converse.parse_response(
                body,
                id=_answer_id(headers),
                model=call.upstream_model,
                created=int(time.time()),
                json_tool=converse.wants_json(request),
            )
        except FormatError as exc:
            raise errors.malformed(f"upstream answer is malformed: {exc.message}") from None

    async def generate_stream(
        self, request: GenerationRequest, call: ProviderCall
    ) -> AsyncIterator[StreamEvent]:
        payload = self._converse_body(request, call)
        identity, url, headers = await self._prepare(call, "converse-stream", payload, _EVENT_STREAM)
        client = self._http()
        read_timeout = call.stream_timeout or call.timeout
        http_request = client.build_request(
            "POST",
            url,
            content=payload,
            headers=headers,
            timeout=httpx.Timeout(call.timeout, read=read_timeout, connect=min(10.0, call.timeout)),
        )
        try:
            resp = await client.send(http_request, stream=True)
        except httpx.HTTPError as exc:
            raise errors.transport_error(exc, f"upstream timed out after {read_timeout:g}s") from exc
        # Closing the response on any exit (the consumer's aclose included) drops the connection,
        # which cancels the upstream request.
        try:
            if resp.status_code >= 300:
                try:
                    error_body = await resp.aread()
                except httpx.HTTPError as exc:
                    raise errors.transport_error(exc, f"upstream timed out after {read_timeout:g}s") from exc
                raise _http_error(call, identity, resp.status_code, error_body, resp.headers)
            decoder = EventStreamDecoder()
            parser = StreamParser(
                id=_answer_id(resp.headers),
                model=call.upstream_model,
                created=int(time.time()),
                json_tool=converse.wants_json(request),
            )
            finished = False
            try:
                async for data in resp.aiter_bytes():
                    for message in decoder.feed(data):
                        for event in _translate(message, parser, call, identity):
                            finished = finished or isinstance(event, Finish)
                            yield event
            except httpx.HTTPError as exc:
                raise errors.transport_error(
                    exc, f"upstream stream stalled for {read_timeout:g}s", "upstream stream broke"
                ) from exc
            except (EventStreamError, FormatError, orjson.JSONDecodeError) as exc:
                raise errors.malformed(f"upstream sent a malformed event stream: {exc}") from None
            if decoder.pending or not finished:
                # The body ended inside a message, or before messageStop: cut short.
                raise ProviderError(
                    502, "upstream closed the stream before messageStop", "api_error", "stream_truncated"
                )
        finally:
            await resp.aclose()

    def _converse_body(self, request: GenerationRequest, call: ProviderCall) -> bytes:
        _refuse_unsendable(request, call)
        self.check_params(request, call)
        try:
            return orjson.dumps(converse.build_request(request))
        except FormatError as exc:
            raise ProviderError(400, exc.message, "invalid_request_error", param=exc.param) from None

    # ---- embeddings

    async def embed(self, request: EmbeddingRequest, call: ProviderCall) -> EmbeddingResponse:
        model_id = _model_id(call)
        family = embeddings.family_of(model_id)
        try:
            invocations = embeddings.build_invocations(model_id, request)
        except FormatError as exc:
            raise ProviderError(400, exc.message, "invalid_request_error", param=exc.param) from None
        gate = asyncio.Semaphore(_EMBED_CONCURRENCY)

        async def one(inv: embeddings.Invocation) -> tuple[list[list[float]], int]:
            async with gate:
                body, headers = await self._post(call, "invoke", orjson.dumps(inv.body))
            vectors, tokens = embeddings.parse_vectors(family, body, inv.count)
            if tokens is None:
                tokens = _int_header(headers, "x-amzn-bedrock-input-token-count")
            return vectors, tokens

        tasks = [asyncio.ensure_future(one(inv)) for inv in invocations]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            # One call failed (or we were cancelled): the others are not waited for, nor left running.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        vectors = [v for batch, _ in results for v in batch]
        return EmbeddingResponse(call.upstream_model, vectors, Usage(sum(t for _, t in results)))

    # ---- HTTP

    async def _prepare(
        self, call: ProviderCall, operation: str, payload: bytes, accept: str
    ) -> tuple[Identity, str, dict[str, str]]:
        """The identity, the URL and the signed headers of one request."""
        params = call.params
        region = region_of(params)
        identity = await self._credentials.identity(params, call.api_key)
        base = call.api_base or params.get("aws_bedrock_runtime_endpoint")
        if not isinstance(base, str) or not base:
            base = f"https://bedrock-runtime.{region}.amazonaws.com"
        url = f"{base.rstrip('/')}/model/{quote(_model_id(call), safe='')}/{operation}"
        headers = {"content-type": _JSON, "accept": accept}
        extra = params.get("extra_headers")
        if isinstance(extra, Mapping):
            headers.update({str(k).lower(): str(v) for k, v in extra.items()})
        headers.update({k.lower(): v for k, v in call.extra_headers.items()})
        return identity, url, sign(identity, region, url, payload, headers)

    async def _post(
        self, call: ProviderCall, operation: str, payload: bytes
    ) -> tuple[dict[str, Any], httpx.Headers]:
        identity, url, headers = await self._prepare(call, operation, payload, _JSON)
        try:
            resp = await self._http().post(url, content=payload, headers=headers, timeout=call.timeout)
        except httpx.HTTPError as exc:
            raise errors.transport_error(exc, f"upstream timed out after {call.timeout:g}s") from exc
        if resp.status_code >= 300:
            raise _http_error(call, identity, resp.status_code, resp.content, resp.headers)
        try:
            parsed = orjson.loads(resp.content)
        except orjson.JSONDecodeError:
            raise errors.malformed("upstream returned a body that is not JSON") from None
        if not isinstance(parsed, dict):
            raise errors.malformed("upstream returned JSON that is not an object")
        return parsed, resp.headers

    async def aclose(self) -> None:
        """Nothing to release: the shared client is closed by the gateway at shutdown."""
        return None


def _model_id(call: ProviderCall) -> str:
    model = call.upstream_model
    return model.removeprefix("converse/")


def _answer_id(headers: Mapping[str, str]) -> str:
    # Bedrock's answers carry no id; its request id names the call in AWS's own logs.
    return "chatcmpl-" + (headers.get("x-amzn-requestid") or uuid.uuid4().hex)


def _int_header(headers: Mapping[str, str], name: str) -> int:
    try:
        return int(headers.get(name) or 0)
    except ValueError:
        return 0


def _translate(
    message: EventMessage, parser: StreamParser, call: ProviderCall, identity: Identity
) -> list[StreamEvent]:
    """One event-stream message of a ConverseStream: its events, or the error it reports."""
    kind = message.headers.get(":message-type")
    if kind == "exception":
        name = str(message.headers.get(":exception-type") or "")
        text = errors.stream_payload_message(message.payload)
        raise errors.from_stream_exception(name, text, _scrubber(call, identity))
    if kind == "error":
        name = str(message.headers.get(":error-code") or "")
        text = str(message.headers.get(":error-message") or "upstream stream error")
        raise errors.from_stream_exception(name, text, _scrubber(call, identity))
    payload = orjson.loads(message.payload) if message.payload else {}
    if not isinstance(payload, dict):
        raise errors.malformed("upstream sent a stream event that is not a JSON object")
    return parser.feed(str(message.headers.get(":event-type") or ""), payload)


def _refuse_unsendable(request: GenerationRequest, call: ProviderCall) -> None:
    """Fields with a slot in ``GenerationRequest`` that Converse cannot express: a 400 naming
    them, or ignored with ``drop_params``."""
    if call.params.get("drop_params"):
        return
    if request.seed is not None:
        raise unsupported_parameter("seed", "Bedrock Converse has no seed")


def _scrubber(call: ProviderCall, identity: Identity) -> Scrubber:
    """This call's secrets, those resolved from the AWS chain included (an upstream may echo them)."""
    return call_scrubber(call.api_key, call.params, call.extra_headers).union(Scrubber(identity.secrets()))


def _http_error(
    call: ProviderCall, identity: Identity, status: int, body: bytes, headers: Mapping[str, str]
) -> ProviderError:
    if status < 400:
        # Redirects are not followed: an api_base that redirects is misconfigured.
        return ProviderError(
            502, f"upstream answered HTTP {status} (check api_base)", "api_error", "upstream_redirect"
        )
    return errors.from_http(status, body, headers, _scrubber(call, identity))
