"""A fake Azure OpenAI and Azure AI model inference service: real HTTP on loopback, Azure's wire format.

Wire format followed:
- https://learn.microsoft.com/en-us/azure/ai-services/openai/reference (Azure OpenAI data plane):
  ``POST /openai/deployments/{deployment}/chat/completions|completions|embeddings?api-version=...``
  with OpenAI's bodies; ``api-key`` header or ``Authorization: Bearer <Entra ID token>``; a missing
  ``api-version`` is 404 "Resource not found", a malformed one 400 "API version not supported";
  a wrong or missing credential 401 ("Access denied due to invalid subscription key or wrong API
  endpoint"; a bearer token is also accepted when ``tests.support.fake_entra`` issued it and it
  has not expired); an unknown deployment 404 ``DeploymentNotFound``; an argument the API does not have
  400 "Unrecognized request argument supplied"; a ``tool`` message that answers no preceding
  ``tool_calls`` 400. Answers carry ``prompt_filter_results`` and per-choice
  ``content_filter_results``; a stream opens with a chunk whose ``choices`` is empty and which
  carries ``prompt_filter_results`` (and ``id``/``model`` empty).
- https://learn.microsoft.com/en-us/azure/ai-services/openai/concepts/content-filter (a filtered
  prompt: 400 ``code: "content_filter"`` with ``innererror.content_filter_result``; a filtered
  answer: ``finish_reason: "content_filter"``).
- https://learn.microsoft.com/en-us/rest/api/aifoundry/model-inference/reference/reference-model-inference-chat-completions
  (Azure AI model inference): ``POST /models/chat/completions|embeddings?api-version=...`` with
  ``model`` in the body naming a deployed model (else 400 ``unknown_model``); parameters the API
  does not define are a 400 unless the ``extra-parameters`` header says ``drop`` (removed) or
  ``pass-through``; streams report ``usage`` on their last chunk without being asked.

The answers themselves (text, tool calls, streaming, usage, embeddings, one-shot behaviours) are
``tests.support.fake_openai.FakeOpenAI``'s, which this server extends::

    with FakeAzure(deployments={"gpt4o-prod"}, ai_models={"mistral-large"}) as fake:
        fake.endpoint                    # "http://127.0.0.1:PORT" (the resource endpoint)
        fake.ai_endpoint                 # "http://127.0.0.1:PORT/models"
        fake.enqueue(content_filter_error())
"""

from __future__ import annotations

import contextvars
import re
from collections.abc import AsyncIterator, Iterable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.fake_entra import FakeEntra
from tests.support.fake_openai import Behavior, FakeOpenAI

API_KEY = "azure-fake-key-0123456789"
AD_TOKEN = "entra-fake-token-0123456789"

_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}(-preview)?")
_CHAT_FIELDS = frozenset(
    {
        "messages", "model", "temperature", "top_p", "n", "stream", "stream_options", "stop",
        "max_tokens", "max_completion_tokens", "presence_penalty", "frequency_penalty",
        "logit_bias", "user", "data_sources", "logprobs", "top_logprobs", "response_format",
        "seed", "tools", "tool_choice", "parallel_tool_calls", "functions", "function_call",
        "store", "metadata", "reasoning_effort", "prediction", "audio", "modalities",
    }
)  # fmt: skip
_COMPLETIONS_FIELDS = frozenset(
    {
        "prompt", "model", "max_tokens", "temperature", "top_p", "logit_bias", "user", "n",
        "stream", "stream_options", "logprobs", "suffix", "echo", "stop", "presence_penalty",
        "frequency_penalty", "best_of", "seed",
    }
)  # fmt: skip
_EMBEDDINGS_FIELDS = frozenset({"input", "model", "user", "input_type", "encoding_format", "dimensions"})
_AI_CHAT_FIELDS = frozenset(
    {
        "messages", "model", "frequency_penalty", "presence_penalty", "temperature", "top_p",
        "max_tokens", "stream", "stop", "tools", "tool_choice", "seed", "response_format",
        "modalities",
    }
)  # fmt: skip
_AI_EMBEDDINGS_FIELDS = frozenset({"input", "model", "dimensions", "encoding_format", "input_type"})

_FILTER_OK = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}
_PROMPT_FILTER = [{"prompt_index": 0, "content_filter_results": _FILTER_OK}]

# Which surface a request came in on; the streaming answer differs (set per request).
_surface: contextvars.ContextVar[str] = contextvars.ContextVar("azure_surface", default="openai")


def azure_error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def content_filter_error() -> Behavior:
    """Azure's refusal of a prompt its content filter blocked."""
    body = azure_error(
        "content_filter",
        "The response was filtered due to the prompt triggering Azure OpenAI's content management "
        "policy. Please modify your prompt and retry.",
        param="prompt",
        status=400,
        innererror={
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {**_FILTER_OK, "violence": {"filtered": True, "severity": "high"}},
        },
    )
    return Behavior(status=400, raw_body=orjson.dumps(body), headers={"content-type": "application/json"})


def rate_limited(retry_after: int) -> Behavior:
    """Azure's 429 for a deployment over its tokens-per-minute quota."""
    body = azure_error(
        "429",
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 "
        "have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after "
        f"{retry_after} seconds.",
    )
    headers = {
        "content-type": "application/json",
        "retry-after": str(retry_after),
        "retry-after-ms": str(retry_after * 1000),
    }
    return Behavior(status=429, raw_body=orjson.dumps(body), headers=headers)


def context_window_error() -> Behavior:
    return Behavior(
        status=400,
        error_type="invalid_request_error",
        error_code="context_length_exceeded",
        error_message="This model's maximum context length is 128000 tokens. However, your messages "
        "resulted in 130000 tokens. Please reduce the length of the messages.",
    )


class FakeAzure(FakeOpenAI):
    """Azure OpenAI deployments under ``/openai/deployments``, Azure AI models under ``/models``."""

    def __init__(
        self,
        deployments: Iterable[str] = ("gpt4o-prod",),
        ai_models: Iterable[str] = ("mistral-large",),
        api_key: str = API_KEY,
        ad_token: str = AD_TOKEN,
        entra: FakeEntra | None = None,
    ) -> None:
        super().__init__()
        self.deployments = set(deployments)
        self.ai_models = set(ai_models)
        self.api_key = api_key
        self.ad_token = ad_token
        # Bearer tokens this (fake) Entra ID tenant issued are accepted until they expire.
        self.entra = entra

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ai_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/models"

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/openai/deployments/{deployment}/chat/completions", self._az_chat, methods=["POST"]),
                Route("/openai/deployments/{deployment}/completions", self._az_completions, methods=["POST"]),
                Route("/openai/deployments/{deployment}/embeddings", self._az_embeddings, methods=["POST"]),
                Route("/models/chat/completions", self._ai_chat, methods=["POST"]),
                Route("/models/embeddings", self._ai_embeddings, methods=["POST"]),
            ]
        )

    # ---- Azure OpenAI

    async def _az_chat(self, request: Request) -> Response:
        refused = await self._az_gate(request, _CHAT_FIELDS)
        if refused is not None:
            return refused
        _surface.set("openai")
        return _with_filter_results(await self._chat(request))

    async def _az_completions(self, request: Request) -> Response:
        return await self._az_gate(request, _COMPLETIONS_FIELDS) or await self._completions(request)

    async def _az_embeddings(self, request: Request) -> Response:
        return await self._az_gate(request, _EMBEDDINGS_FIELDS) or await self._embeddings(request)

    async def _az_gate(self, request: Request, fields: frozenset[str]) -> Response | None:
        """Azure's own checks, in its order: api-version, credentials, deployment, body."""
        refused = self._version_and_auth(request)
        if refused is not None:
            return refused
        if request.path_params["deployment"] not in self.deployments:
            return _json(
                azure_error(
                    "DeploymentNotFound",
                    "The API deployment for this resource does not exist. If you created the "
                    "deployment within the last 5 minutes, please wait a moment and try again.",
                ),
                404,
            )
        body = await _body(request)
        if body is None:
            return _invalid("We could not parse the JSON body of your request.")
        unknown = sorted(set(body) - fields)
        if unknown:
            return _invalid(f"Unrecognized request argument supplied: {unknown[0]}")
        if fields is _CHAT_FIELDS:
            return _check_messages(body)
        return None

    def _version_and_auth(self, request: Request) -> Response | None:
        version = request.query_params.get("api-version")
        if version is None:
            return _json(azure_error("404", "Resource not found"), 404)
        if not _VERSION.fullmatch(version):
            return _json(azure_error("BadRequest", "API version not supported"), 400)
        key = request.headers.get("api-key")
        bearer = request.headers.get("authorization", "")
        if key != self.api_key and bearer != f"Bearer {self.ad_token}" and not self._entra_token(bearer):
            return _json(
                azure_error(
                    "401",
                    "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
                    "to provide a valid key for an active subscription and use a correct regional "
                    "API endpoint for your resource.",
                ),
                401,
            )
        return None

    def _entra_token(self, bearer: str) -> bool:
        scheme, _, token = bearer.partition(" ")
        return self.entra is not None and scheme == "Bearer" and self.entra.accepts(token)

    # ---- Azure AI model inference

    async def _ai_chat(self, request: Request) -> Response:
        refused = await self._ai_gate(request, _AI_CHAT_FIELDS)
        if refused is not None:
            return refused
        _surface.set("inference")
        return await self._chat(request)

    async def _ai_embeddings(self, request: Request) -> Response:
        return await self._ai_gate(request, _AI_EMBEDDINGS_FIELDS) or await self._embeddings(request)

    async def _ai_gate(self, request: Request, fields: frozenset[str]) -> Response | None:
        refused = self._version_and_auth(request)
        if refused is not None:
            return refused
        body = await _body(request)
        if body is None:
            return _invalid("We could not parse the JSON body of your request.")
        if body.get("model") not in self.ai_models:
            return _json(azure_error("unknown_model", f"Unknown model: {body.get('model')}"), 400)
        extra = sorted(set(body) - fields)
        mode = request.headers.get("extra-parameters", "error")
        if extra and mode == "drop":
            # Dropped as the service does: the rest of the request is served without them.
            request._body = orjson.dumps({k: v for k, v in body.items() if k in fields})
        elif extra and mode != "pass-through":
            return _json(
                azure_error(
                    "Invalid input",
                    f"Extra parameters {extra} are not allowed when extra-parameters is not set or "
                    "set to be 'error'. Set extra-parameters to 'pass-through' to pass to the model.",
                ),
                400,
            )
        if fields is _AI_CHAT_FIELDS:
            return _check_messages(body)
        return None

    # ---- streams: Azure's shapes around FakeOpenAI's chunks

    async def _stream(self, model: str, behavior: Behavior, include_usage: bool) -> AsyncIterator[bytes]:
        if _surface.get() == "inference":
            inner = super()._stream(model, behavior, True)
            try:
                held: bytes | None = None
                async for event in inner:
                    if b'"choices":[]' in event and held is not None:
                        # The usage arrives on the last chunk that has choices, unasked.
                        last = orjson.loads(held[6:])
                        last["usage"] = orjson.loads(event[6:])["usage"]
                        yield b"data: " + orjson.dumps(last) + b"\n\n"
                        held = None
                        continue
                    if held is not None:
                        yield held
                    held = event if b'"finish_reason":"' in event else None
                    if held is None:
                        yield event
            finally:
                await inner.aclose()
            return
        opening = {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": _PROMPT_FILTER,
        }
        yield b"data: " + orjson.dumps(opening) + b"\n\n"
        inner = super()._stream(model, behavior, include_usage)
        try:
            async for event in inner:
                yield event
        finally:
            await inner.aclose()


def _with_filter_results(resp: Response) -> Response:
    """A whole answer as Azure writes it: filter results for the prompt and for each choice."""
    if resp.status_code != 200 or resp.media_type != "application/json":
        return resp
    body = orjson.loads(resp.body)
    if body.get("object") != "chat.completion":
        return resp
    body["prompt_filter_results"] = _PROMPT_FILTER
    for choice in body["choices"]:
        choice["content_filter_results"] = _FILTER_OK
    headers = {k: v for k, v in resp.headers.items() if k not in ("content-length", "content-type")}
    return Response(orjson.dumps(body), 200, headers=headers, media_type="application/json")


def _check_messages(body: dict[str, Any]) -> Response | None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return _invalid("'messages' must be a non-empty array", "messages")
    open_calls: set[str] = set()
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in (
            "system",
            "developer",
            "user",
            "assistant",
            "tool",
        ):
            return _invalid(f"Invalid value for 'messages[{i}].role'", f"messages[{i}].role")
        if msg["role"] == "assistant":
            open_calls = {c.get("id") for c in msg.get("tool_calls") or []}
        elif msg["role"] == "tool":
            if msg.get("tool_call_id") not in open_calls:
                return _invalid(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
                    "message with 'tool_calls'.",
                    f"messages.[{i}].role",
                )
        else:
            open_calls = set()
    return None


async def _body(request: Request) -> dict[str, Any] | None:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return None
    return body if isinstance(body, dict) else None


def _invalid(message: str, param: str | None = None) -> Response:
    return _json(
        {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}, 400
    )


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status, media_type="application/json")
