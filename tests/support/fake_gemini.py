"""A fake Google generative-model server on loopback: the Gemini API (Google AI Studio) and the
same models at Vertex AI paths, plus an OAuth token endpoint for service-account keys.

Wire format followed:
- https://ai.google.dev/api/generate-content: ``POST /v1beta/models/{model}:generateContent`` and
  ``:streamGenerateContent`` (``?alt=sse``: one ``data: <GenerateContentResponse>`` event per
  chunk, the last with ``finishReason`` and ``usageMetadata``, then the connection closes;
  without ``alt=sse`` a JSON array of the chunks). Request fields checked as the API does: only
  known fields (``Unknown name "x"``: 400), ``contents`` present with roles ``user``/``model`` only
  (``assistant`` is a 400 INVALID_ARGUMENT), non-empty ``parts`` of one kind each, no empty text,
  ``inlineData`` base64, ``functionCall.args`` / ``functionResponse.response`` objects, a
  function-response turn right after a function-call turn with one response per call and the
  same names, declared function names, ``Schema`` objects with Schema fields only (no
  ``additionalProperties``), ``toolConfig`` modes, ``responseSchema`` only with a JSON
  ``responseMimeType``, at most 5 ``stopSequences``.
- https://ai.google.dev/api/embeddings: ``POST /v1beta/models/{model}:batchEmbedContents``
  (``requests`` of ``{model: "models/{model}", content, taskType?, outputDimensionality?}``, at
  most 100) -> ``{"embeddings": [{"values"}], "usageMetadata": {"promptTokenCount",
  "promptTokenDetails"}}`` (https://ai.google.dev/api/embeddings#EmbeddingUsageMetadata; the count
  is the fake's: one token a word; ``embed_usage = False`` answers without it, as older models do).
- Keys: the ``x-goog-api-key`` header (or ``?key=``). None: 403 PERMISSION_DENIED ("Method doesn't
  allow unregistered callers"); a wrong one: 400 INVALID_ARGUMENT with reason API_KEY_INVALID.
- Errors: ``{"error": {"code", "message", "status", "details"?}}`` (https://ai.google.dev/gemini-api/docs/troubleshooting);
  a 429 carries a ``google.rpc.RetryInfo`` detail.
- Vertex AI (https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/inference):
  ``POST /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:generateContent`` /
  ``:streamGenerateContent`` / ``:predict`` (text embeddings:
  https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/text-embeddings-api),
  ``Authorization: Bearer`` with a token this server issued (else 401 UNAUTHENTICATED).
- ``POST /token``: Google's OAuth 2.0 token endpoint for service accounts
  (https://developers.google.com/identity/protocols/oauth2/service-account#httprest):
  ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<RS256 JWT>``, the JWT
  verified against the registered account's public key (``iss``, ``aud``, ``scope``, ``exp``).

Usage::

    with FakeGemini(api_key="AIza-test") as fake:
        fake.base_url
        fake.set_behavior(Behavior(text="hi"))      # every request; enqueue() for one-shot
        info = fake.service_account()               # a key file's JSON, token_uri pointing here
        fake.requests, fake.token_requests
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.support.loopback_server import LoopbackServer

CHAT_MODELS = frozenset({"gemini-2.0-flash", "gemini-2.5-flash"})
EMBED_MODELS = frozenset({"text-embedding-004", "gemini-embedding-001", "text-embedding-005"})
EMBEDDING_DIMENSIONS = 8
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# The JWT's "aud" is always Google's token endpoint, wherever the key's token_uri points.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
CONTEXT_WINDOW_MESSAGE = (
    "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576)."
)

_REQUEST_FIELDS = frozenset(
    {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "safetySettings"}
    | {"cachedContent", "labels", "model"}
)
_CONFIG_FIELDS = frozenset(
    {"temperature", "topP", "topK", "maxOutputTokens", "stopSequences", "seed", "candidateCount"}
    | {"responseMimeType", "responseSchema", "responseJsonSchema", "presencePenalty", "frequencyPenalty"}
    | {"thinkingConfig", "responseLogprobs", "logprobs", "responseModalities"}
)
_SCHEMA_FIELDS = frozenset(
    {"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems", "properties"}
    | {"required", "minProperties", "maxProperties", "minLength", "maxLength", "pattern", "example"}
    | {"anyOf", "propertyOrdering", "default", "items", "minimum", "maximum"}
)
_SCHEMA_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object"})
_PART_KINDS = ("text", "inlineData", "fileData", "functionCall", "functionResponse")
_FUNCTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")


@dataclass
class Behavior:
    """How the fake answers one request."""

    status: int = 200
    message: str = "fake gemini error"
    google_status: str | None = None  # e.g. "RESOURCE_EXHAUSTED"; derived from status when None
    retry_delay: str | None = None  # a 429's RetryInfo.retryDelay, e.g. "17s"
    delay_s: float = 0.0
    text: str = "Hello from the fake Gemini."
    thought: str | None = None
    # Function calls after the text, each whole in its own part (and stream chunk).
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    thought_signature: str | None = None  # put on the first function call part
    finish_reason: str = "STOP"
    block_reason: str | None = None  # the prompt blocked: promptFeedback, no candidates
    prompt_tokens: int = 21
    candidates_tokens: int = 9
    cached_tokens: int = 0
    thoughts_tokens: int = 0
    fragment: int = 8  # characters per streamed text chunk
    chunk_delay_s: float = 0.0
    end_before_finish: bool = False  # streams: close after the text, with no finishReason

    def usage(self) -> dict[str, int]:
        usage = {
            "promptTokenCount": self.prompt_tokens,
            "candidatesTokenCount": self.candidates_tokens,
            "totalTokenCount": self.prompt_tokens + self.candidates_tokens + self.thoughts_tokens,
        }
        if self.cached_tokens:
            usage["cachedContentTokenCount"] = self.cached_tokens
        if self.thoughts_tokens:
            usage["thoughtsTokenCount"] = self.thoughts_tokens
        return usage


@dataclass
class RecordedRequest:
    path: str
    query: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class _Account:
    email: str
    public_key: rsa.RSAPublicKey


class FakeGemini:
    """The fake server; a context manager that runs it in a background thread."""

    def __init__(self, api_key: str = "AIza-fake-gemini-key", token_ttl_s: int = 3600) -> None:
        self.api_key = api_key
        self.token_ttl_s = token_ttl_s
        self.default = Behavior()
        self.queue: deque[Behavior] = deque()
        self.requests: list[RecordedRequest] = []
        self.token_requests: list[dict[str, Any]] = []  # verified JWT claims, one per token issued
        self.embed_usage = True  # batchEmbedContents answers with usageMetadata
        self.cancelled = 0
        self._cancel_event = threading.Event()
        self._accounts: dict[str, _Account] = {}
        self._tokens: set[str] = set()
        self._lock = threading.Lock()
        self._loopback: LoopbackServer | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_behavior(self, behavior: Behavior) -> None:
        with self._lock:
            self.default = behavior

    def enqueue(self, *behaviors: Behavior) -> None:
        with self._lock:
            self.queue.extend(behaviors)

    def reset(self) -> None:
        with self._lock:
            self.default = Behavior()
            self.queue.clear()
            self.requests.clear()
            self.token_requests.clear()
            self.embed_usage = True
            self.cancelled = 0
            self._cancel_event.clear()

    def last(self) -> RecordedRequest:
        with self._lock:
            return self.requests[-1]

    def wait_for_cancel(self, timeout: float) -> bool:
        return self._cancel_event.wait(timeout)

    def service_account(self, project: str = "fake-project") -> dict[str, str]:
        """A new service-account key file's contents (a fresh RSA key), accepted by ``/token``."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        email = f"gateway-{len(self._accounts)}@{project}.iam.gserviceaccount.com"
        with self._lock:
            self._accounts[email] = _Account(email, key.public_key())
        return {
            "type": "service_account",
            "project_id": project,
            "private_key_id": hashlib.sha1(pem.encode()).hexdigest(),
            "private_key": pem,
            "client_email": email,
            "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": f"{self.base_url}/token",
        }

    def _behavior(self) -> Behavior:
        with self._lock:
            return self.queue.popleft() if self.queue else self.default

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeGemini:
        app = Starlette(
            routes=[
                Route("/v1beta/models/{target:path}", self._gemini, methods=["POST"]),
                Route(
                    "/v1/projects/{project}/locations/{location}/publishers/google/models/{target:path}",
                    self._vertex,
                    methods=["POST"],
                ),
                Route("/token", self._token, methods=["POST"]),
            ]
        )
        self._loopback = LoopbackServer(
            app, log_level="warning", access_log=False, lifespan="off", http="h11", name="fake-gemini"
        )
        self.port = self._loopback.start()
        return self

    def stop(self) -> None:
        if self._loopback is not None:
            self._loopback.stop()

    def __enter__(self) -> FakeGemini:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ auth

    def _check_key(self, request: Request) -> Response | None:
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        if not key:
            return _error(
                403,
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API.",
            )
        if key != self.api_key:
            return _error(
                400,
                "API key not valid. Please pass a valid API key.",
                details=[
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                    }
                ],
            )
        return None

    def check_bearer(self, request: Request) -> Response | None:
        """Vertex AI's 401 for a request without a bearer token this server issued, else None."""
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        with self._lock:
            known = token in self._tokens
        if not known:
            return _error(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
                "cookie or other valid authentication credential.",
            )
        return None

    async def _token(self, request: Request) -> Response:
        form = parse_qs((await request.body()).decode())
        grant = form.get("grant_type", [""])[0]
        assertion = form.get("assertion", [""])[0]
        if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return _oauth_error("unsupported_grant_type", "Invalid grant_type")
        claims = self._verify_jwt(assertion)
        if claims is None:
            return _oauth_error("invalid_grant", "Invalid JWT Signature.")
        if claims.get("aud") != GOOGLE_TOKEN_AUDIENCE or SCOPE not in str(claims.get("scope", "")).split():
            return _oauth_error("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        if not isinstance(claims.get("exp"), int) or claims["exp"] < time.time():
            return _oauth_error("invalid_grant", "Invalid JWT: Token must be a short-lived token")
        with self._lock:
            token = f"ya29.fake-{len(self._tokens)}-{hashlib.sha256(assertion.encode()).hexdigest()[:16]}"
            self._tokens.add(token)
            self.token_requests.append(claims)
        return _json({"access_token": token, "expires_in": self.token_ttl_s, "token_type": "Bearer"})

    def _verify_jwt(self, jwt: str) -> dict[str, Any] | None:
        try:
            header_b64, claims_b64, sig_b64 = jwt.split(".")
            header = orjson.loads(_b64url(header_b64))
            claims = orjson.loads(_b64url(claims_b64))
            signature = _b64url(sig_b64)
        except (ValueError, orjson.JSONDecodeError, binascii.Error):
            return None
        if not isinstance(header, dict) or header.get("alg") != "RS256" or not isinstance(claims, dict):
            return None
        with self._lock:
            account = self._accounts.get(str(claims.get("iss")))
        if account is None:
            return None
        try:
            account.public_key.verify(
                signature, f"{header_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except Exception:
            return None
        return claims

    # ------------------------------------------------------------------ API

    async def _gemini(self, request: Request) -> Response:
        denied = self._check_key(request)
        if denied is not None:
            return denied
        return await self._serve(request, request.path_params["target"], vertex=False)

    async def _vertex(self, request: Request) -> Response:
        denied = self.check_bearer(request)
        if denied is not None:
            return denied
        return await self._serve(request, request.path_params["target"], vertex=True)

    async def _serve(self, request: Request, target: str, *, vertex: bool) -> Response:
        model, _, method = target.partition(":")
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "Invalid JSON payload received. Unexpected token.")
        if not isinstance(body, dict):
            return _error(400, "Invalid JSON payload received. Expected an object.")
        with self._lock:
            self.requests.append(
                RecordedRequest(request.url.path, request.url.query, dict(request.headers), body)
            )
        version = "v1" if vertex else "v1beta"
        chat = method in ("generateContent", "streamGenerateContent")
        embeds = method == ("predict" if vertex else "batchEmbedContents")
        if (chat and model not in CHAT_MODELS) or (embeds and model not in EMBED_MODELS):
            return _error(
                404,
                f"models/{model} is not found for API version {version}, or is not supported for "
                f"{method}. Call ListModels to see the list of available models and their supported methods.",
            )
        if not chat and not embeds:
            return _error(404, f"Method not found: {method}")
        if embeds:
            return self._predict(body, model) if vertex else self._batch_embed(body, model)
        problem = validate_generate(body)
        if problem is not None:
            return _error(400, problem)
        behavior = self._behavior()
        if behavior.delay_s and not await self._wait_unless_disconnected(request, behavior.delay_s):
            return Response(b"", 499)
        if behavior.status >= 400:
            details = []
            if behavior.retry_delay is not None:
                details.append(
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": behavior.retry_delay}
                )
            return _error(behavior.status, behavior.message, behavior.google_status, details)
        chunks = _chunks(behavior, model)
        if method == "generateContent":
            return _json(_merge(chunks, behavior, model))
        if request.query_params.get("alt") != "sse":
            return _json(chunks)
        return StreamingResponse(self._sse(chunks, behavior), media_type="text/event-stream")

    async def _sse(self, chunks: list[dict[str, Any]], behavior: Behavior) -> AsyncIterator[bytes]:
        completed = False
        try:
            for chunk in chunks:
                if behavior.chunk_delay_s:
                    await asyncio.sleep(behavior.chunk_delay_s)
                yield b"data: " + orjson.dumps(chunk) + b"\r\n\r\n"
            completed = True
        finally:
            if not completed:
                with self._lock:
                    self.cancelled += 1
                    self._cancel_event.set()

    def _batch_embed(self, body: dict[str, Any], model: str) -> Response:
        unknown = [k for k in body if k != "requests"]
        if unknown:
            return _error(
                400, f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.'
            )
        items = body.get("requests")
        if not isinstance(items, list) or not items:
            return _error(400, "* BatchEmbedContentsRequest.requests: requests is not specified")
        if len(items) > 100:
            return _error(
                400, "* BatchEmbedContentsRequest.requests: at most 100 requests can be in one batch"
            )
        vectors, tokens = [], 0
        for i, item in enumerate(items):
            if not isinstance(item, dict) or item.get("model") != f"models/{model}":
                return _error(
                    400,
                    f"* BatchEmbedContentsRequest.requests[{i}].model: the model in the request must be "
                    f"the same as the batch (models/{model})",
                )
            parts = (
                (item.get("content") or {}).get("parts") if isinstance(item.get("content"), dict) else None
            )
            if (
                not isinstance(parts, list)
                or not parts
                or not all(isinstance(p.get("text"), str) for p in parts)
            ):
                return _error(400, f"* BatchEmbedContentsRequest.requests[{i}].content: parts must hold text")
            dims = item.get("outputDimensionality") or EMBEDDING_DIMENSIONS
            text = "".join(p["text"] for p in parts)
            vectors.append({"values": fake_embedding(text, dims)})
            tokens += len(text.split())
        if not self.embed_usage:
            return _json({"embeddings": vectors})
        details = [{"modality": "TEXT", "tokenCount": tokens}]
        return _json(
            {
                "embeddings": vectors,
                "usageMetadata": {"promptTokenCount": tokens, "promptTokenDetails": details},
            }
        )

    def _predict(self, body: dict[str, Any], model: str) -> Response:
        instances = body.get("instances")
        if not isinstance(instances, list) or not instances:
            return _error(400, "Invalid JSON payload received. instances is required")
        limit = 1 if model.startswith("gemini-embedding") else 250
        if len(instances) > limit:
            return _error(
                400,
                f"Unable to submit request because the model supports up to {limit} instances per request.",
            )
        params = body.get("parameters") or {}
        dims = params.get("outputDimensionality") or EMBEDDING_DIMENSIONS
        predictions = []
        for i, instance in enumerate(instances):
            if not isinstance(instance, dict) or not isinstance(instance.get("content"), str):
                return _error(400, f"instances[{i}].content must be a string")
            text = instance["content"]
            predictions.append(
                {
                    "embeddings": {
                        "values": fake_embedding(text, dims),
                        "statistics": {"token_count": len(text.split()), "truncated": False},
                    }
                }
            )
        return _json({"predictions": predictions, "metadata": {"billableCharacterCount": 0}})

    async def _wait_unless_disconnected(self, request: Request, delay: float) -> bool:
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(0.02, left))
            if await request.is_disconnected():
                with self._lock:
                    self.cancelled += 1
                    self._cancel_event.set()
                return False
        return True


# ---- answers ----------------------------------------------------------------------------------


def _chunks(behavior: Behavior, model: str) -> list[dict[str, Any]]:
    """The stream's chunks; a whole answer is their merge."""
    response_id = hashlib.sha256(f"{time.time_ns()}".encode()).hexdigest()[:20]
    head = {"modelVersion": f"{model}-001", "responseId": response_id}
    if behavior.block_reason is not None:
        feedback = {"blockReason": behavior.block_reason, "safetyRatings": []}
        usage = {"promptTokenCount": behavior.prompt_tokens, "totalTokenCount": behavior.prompt_tokens}
        return [{"promptFeedback": feedback, "usageMetadata": usage, **head}]
    parts: list[dict[str, Any]] = []
    if behavior.thought:
        parts.append({"text": behavior.thought, "thought": True})
    text = behavior.text
    parts += [{"text": text[i : i + behavior.fragment]} for i in range(0, len(text), behavior.fragment)]
    for k, (name, args) in enumerate(behavior.tool_calls):
        part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
        if k == 0 and behavior.thought_signature:
            part["thoughtSignature"] = behavior.thought_signature
        parts.append(part)
    chunks = [
        {"candidates": [{"content": {"parts": [p], "role": "model"}, "index": 0}], **head} for p in parts
    ] or [{"candidates": [{"content": {"parts": [], "role": "model"}, "index": 0}], **head}]
    if behavior.end_before_finish:
        return chunks
    last = chunks[-1]["candidates"][0]
    last["finishReason"] = behavior.finish_reason
    chunks[-1]["usageMetadata"] = behavior.usage()
    return chunks


def _merge(chunks: list[dict[str, Any]], behavior: Behavior, model: str) -> dict[str, Any]:
    if "promptFeedback" in chunks[0]:
        return chunks[0]
    parts: list[dict[str, Any]] = []
    for chunk in chunks:
        parts.extend(chunk["candidates"][0]["content"]["parts"])
    # Adjacent plain text parts are one part in a whole answer.
    merged: list[dict[str, Any]] = []
    for part in parts:
        if merged and set(part) == {"text"} and set(merged[-1]) == {"text"}:
            merged[-1] = {"text": merged[-1]["text"] + part["text"]}
        else:
            merged.append(part)
    candidate = {
        "content": {"parts": merged, "role": "model"},
        "finishReason": behavior.finish_reason,
        "index": 0,
        "safetyRatings": [],
    }
    return {
        "candidates": [candidate],
        "usageMetadata": behavior.usage(),
        "modelVersion": chunks[0]["modelVersion"],
        "responseId": chunks[0]["responseId"],
    }


# ---- request validation -------------------------------------------------------------------------


def validate_generate(body: dict[str, Any]) -> str | None:
    """Google's 400 message for a ``generateContent`` body it would refuse, or None."""
    unknown = [k for k in body if k not in _REQUEST_FIELDS]
    if unknown:
        return f'Invalid JSON payload received. Unknown name "{unknown[0]}": Cannot find field.'
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    declared: set[str] = set()
    for t, tool in enumerate(body.get("tools") or []):
        for d, decl in enumerate(tool.get("functionDeclarations") or []):
            where = f"tools[{t}].function_declarations[{d}]"
            name = decl.get("name")
            if not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
                return f"* GenerateContentRequest.{where}.name: Invalid function name."
            declared.add(name)
            unknown = [k for k in decl if k not in ("name", "description", "parameters")]
            if unknown:
                return _unknown_field(unknown[0], where)
            if "parameters" in decl:
                problem = _validate_schema(decl["parameters"], f"{where}.parameters")
                if problem:
                    return problem
    system = body.get("systemInstruction")
    if system is not None:
        parts = system.get("parts") if isinstance(system, dict) else None
        if not isinstance(parts, list) or not all(
            isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts
        ):
            return "* GenerateContentRequest.system_instruction: parts must be text"
    previous_calls: list[str] | None = None
    for i, content in enumerate(contents):
        where = f"contents[{i}]"
        if not isinstance(content, dict):
            return f"* GenerateContentRequest.{where}: must be an object"
        role = content.get("role")
        if role not in ("user", "model"):
            return "Please use a valid role: user, model."
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            return f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty."
        calls: list[str] = []
        responses: list[str] = []
        for j, part in enumerate(parts):
            problem = _validate_part(part, f"{where}.parts[{j}]")
            if problem:
                return problem
            if "functionCall" in part:
                if role != "model":
                    return "Please ensure that function call turns come from the model."
                calls.append(part["functionCall"]["name"])
            if "functionResponse" in part:
                responses.append(part["functionResponse"]["name"])
        if responses:
            if previous_calls is None:
                return (
                    "Please ensure that function response turn comes immediately after a function call turn."
                )
            if len(responses) != len(previous_calls):
                return (
                    "Please ensure that the number of function response parts is equal to the number of "
                    "function call parts of the function call turn."
                )
            if sorted(responses) != sorted(previous_calls):
                return "Please ensure that function response names match the function call names."
        previous_calls = calls or None
    config = body.get("toolConfig")
    if config is not None:
        fcc = config.get("functionCallingConfig") if isinstance(config, dict) else None
        if not isinstance(fcc, dict) or fcc.get("mode") not in ("AUTO", "ANY", "NONE", "VALIDATED"):
            return "* GenerateContentRequest.tool_config.function_calling_config.mode: invalid mode"
        allowed = fcc.get("allowedFunctionNames")
        if allowed is not None:
            if fcc["mode"] != "ANY":
                return f"* {_ALLOWED_NAMES}: only allowed with mode ANY"
            if not set(allowed) <= declared:
                return f"* {_ALLOWED_NAMES}: names a function that is not declared"
    generation = body.get("generationConfig")
    if generation is not None:
        unknown = [k for k in generation if k not in _CONFIG_FIELDS]
        if unknown:
            return _unknown_field(unknown[0], "generation_config")
        if len(generation.get("stopSequences") or []) > 5:
            return "* GenerateContentRequest.generation_config.stop_sequences: at most 5 stop sequences"
        temperature = generation.get("temperature")
        if temperature is not None and not 0 <= temperature <= 2:
            return "* GenerateContentRequest.generation_config.temperature: must be in [0.0, 2.0]"
        if "responseSchema" in generation:
            if generation.get("responseMimeType") != "application/json":
                return (
                    "* GenerateContentRequest.generation_config.response_mime_type: "
                    "must be application/json when response_schema is set"
                )
            problem = _validate_schema(generation["responseSchema"], "generation_config.response_schema")
            if problem:
                return problem
    return None


def _validate_part(part: Any, where: str) -> str | None:
    if not isinstance(part, dict):
        return f"* GenerateContentRequest.{where}: must be an object"
    kinds = [k for k in _PART_KINDS if k in part]
    extra = [k for k in part if k not in _PART_KINDS and k not in ("thought", "thoughtSignature")]
    if extra:
        return _unknown_field(extra[0], where)
    if len(kinds) != 1:
        return (
            f"* GenerateContentRequest.{where}.data: "
            "required oneof field 'data' must have one initialized field"
        )
    kind = kinds[0]
    value = part[kind]
    if kind == "text":
        if not isinstance(value, str) or not value:
            return (
                "Unable to submit request because it has an empty text parameter. "
                "Add a value to the parameter and try again."
            )
    elif kind == "inlineData":
        if not isinstance(value, dict) or not isinstance(value.get("mimeType"), str):
            return f"* GenerateContentRequest.{where}.inline_data.mime_type: mime_type is required"
        try:
            base64.b64decode(value.get("data", ""), validate=True)
        except (binascii.Error, TypeError, ValueError):
            return f"Invalid value at '{where}.inline_data.data' (TYPE_BYTES), Base64 decoding failed"
    elif kind == "fileData":
        if not isinstance(value, dict) or not isinstance(value.get("fileUri"), str):
            return f"* GenerateContentRequest.{where}.file_data.file_uri: file_uri is required"
    elif kind == "functionCall":
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return f"* GenerateContentRequest.{where}.function_call.name: name is required"
        if not isinstance(value.get("args", {}), dict):
            return (
                f"Invalid value at '{where}.function_call.args' (type.googleapis.com/google.protobuf.Struct)"
            )
    elif kind == "functionResponse":
        if not isinstance(value, dict) or not isinstance(value.get("name"), str):
            return f"* GenerateContentRequest.{where}.function_response.name: name is required"
        if not isinstance(value.get("response"), dict):
            return f"Invalid value at '{where}.function_response.response' ({_STRUCT})"
    return None


def _validate_schema(schema: Any, where: str) -> str | None:
    if not isinstance(schema, dict):
        return f"Invalid value at '{where}': must be a Schema object"
    unknown = [k for k in schema if k not in _SCHEMA_FIELDS]
    if unknown:
        return (
            f"Invalid JSON payload received. Unknown name \"{unknown[0]}\" at '{where}': Cannot find field."
        )
    kind = schema.get("type")
    if kind is not None and (not isinstance(kind, str) or kind.lower() not in _SCHEMA_TYPES):
        return f"Invalid value at '{where}.type' (google.ai.generativelanguage.v1beta.Type), {kind!r}"
    properties = schema.get("properties")
    if properties is not None:
        if not isinstance(properties, dict) or not properties:
            return f"* GenerateContentRequest.{where}.properties: should be non-empty for OBJECT type"
        for name, sub in properties.items():
            problem = _validate_schema(sub, f"{where}.properties[{name}].value")
            if problem:
                return problem
    for name in schema.get("required") or []:
        if name not in (properties or {}):
            return f"* GenerateContentRequest.{where}.required[{name}]: property is not defined"
    if "items" in schema:
        problem = _validate_schema(schema["items"], f"{where}.items")
        if problem:
            return problem
    for k, sub in enumerate(schema.get("anyOf") or []):
        problem = _validate_schema(sub, f"{where}.any_of[{k}]")
        if problem:
            return problem
    return None


# ---- helpers ------------------------------------------------------------------------------------

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


_STRUCT = "type.googleapis.com/google.protobuf.Struct"
_ALLOWED_NAMES = "GenerateContentRequest.tool_config.function_calling_config.allowed_function_names"


def _unknown_field(name: str, where: str) -> str:
    return f"Invalid JSON payload received. Unknown name \"{name}\" at '{where}': Cannot find field."


def fake_embedding(text: str, dims: int) -> list[float]:
    """A deterministic vector for ``text``, float32-exact so base64 encodings round-trip."""
    seed = hashlib.sha256(text.encode()).digest()
    return [(seed[i % len(seed)] - 128) / 128.0 for i in range(dims)]


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status, media_type="application/json")


def _error(
    status: int, message: str, google_status: str | None = None, details: list[Any] | None = None
) -> Response:
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": google_status or _STATUS_NAMES.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    return _json({"error": error}, status)


def _oauth_error(error: str, description: str) -> Response:
    return _json({"error": error, "error_description": description}, 400)
