"""A fake AWS bedrock-runtime: a real HTTP server on loopback speaking Bedrock's wire formats.

Wire formats followed (AWS documentation):
- https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html
  (``POST /model/{modelId}/converse``: ``messages`` of ContentBlock unions, ``system``,
  ``inferenceConfig``, ``toolConfig``, ``additionalModelRequestFields``; the answer's
  ``output.message``, ``stopReason``, ``usage``, ``metrics``; the error list)
- https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_ConverseStream.html
  (``POST /model/{modelId}/converse-stream``, answered as ``application/vnd.amazon.eventstream``:
  messageStart, contentBlockStart/Delta/Stop, messageStop, metadata; exception events)
- https://docs.aws.amazon.com/transcribe/latest/dg/streaming-setting-up.html (the event-stream
  binary framing: prelude, CRC32s, typed headers), encoded here independently of the adapter
- https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_InvokeModel.html with
  https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-titan-embed-text.html and
  .../model-parameters-embed.html (Titan and Cohere embeddings bodies)
- https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html
  (SigV4: every request's signature is recomputed with botocore for the one known key pair; an
  unsigned, badly signed, stale or foreign-key request is refused with 403 as AWS refuses it)
- https://docs.aws.amazon.com/STS/latest/APIReference/API_AssumeRole.html (``POST /`` with
  ``Action=AssumeRole``, XML answer with temporary credentials; XML ``ErrorResponse``)
- https://docs.aws.amazon.com/bedrock/latest/APIReference/CommonErrors.html (errors:
  ``{"message"}`` with the exception's name in ``x-amzn-ErrorType``)

Usage::

    with FakeBedrock() as fake:
        fake.base_url                      # the api_base to configure
        fake.enqueue(Behavior(error=THROTTLED))
        fake.requests                      # every request that passed authentication
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime
import hashlib
import hmac
import re
import struct
import threading
import uuid
import zlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.support.loopback_server import LoopbackServer

ACCESS_KEY_ID = "AKIAFAKEBEDROCK00001"
SECRET_ACCESS_KEY = "fake/bedrock/secret+key/0123456789abcdefghij"
# A temporary-credentials triple (the session token must be signed along).
SESSION_KEY_ID = "ASIAFAKEBEDROCK00002"
SESSION_SECRET = "fake/bedrock/session+secret/0123456789abcdefgh"
SESSION_TOKEN = "FwoGZXIvYXdzEfakeSessionToken//0123456789"
API_KEY = "ABSKfakeBedrockApiKey0123456789"  # a Bedrock API key (bearer)
REGION = "us-east-1"
ROLE_ARN = "arn:aws:iam::123456789012:role/bedrock-caller"  # the base key pair may assume it (STS)

CHAT_MODELS = frozenset(
    {
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
        "amazon.nova-lite-v1:0",
    }
)
TITAN_EMBED = "amazon.titan-embed-text-v2:0"
COHERE_EMBED = "cohere.embed-english-v3"
# Past this many characters of input, Claude on Bedrock refuses the prompt.
MAX_INPUT_CHARS = 20_000

_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"
_IMAGE_MAGIC = {
    "png": b"\x89PNG\r\n\x1a\n",
    "jpeg": b"\xff\xd8\xff",
    "gif": b"GIF8",
    "webp": b"RIFF",
}
_BLOCK_KINDS = frozenset(
    {"text", "image", "document", "video", "toolUse", "toolResult", "guardContent", "cachePoint"}
    | {"reasoningContent", "citationsContent"}
)
_INFERENCE_KEYS = frozenset({"maxTokens", "temperature", "topP", "stopSequences"})
_TOP_LEVEL = frozenset(
    {
        "messages",
        "system",
        "inferenceConfig",
        "toolConfig",
        "guardrailConfig",
        "additionalModelRequestFields",
        "additionalModelResponseFieldPaths",
        "promptVariables",
        "requestMetadata",
        "performanceConfig",
    }
)


@dataclass
class Error:
    status: int
    name: str  # the exception, e.g. "ThrottlingException"
    message: str


THROTTLED = Error(429, "ThrottlingException", "Too many requests, please wait before trying again.")


@dataclass
class Behavior:
    """How the fake answers one Converse / ConverseStream request."""

    text: str = "Hello from Bedrock."
    chunks: int = 3  # text deltas in a stream
    # Tool calls (toolUseId, name, input JSON text), after the text; stopReason becomes tool_use.
    tool_calls: list[tuple[str, str, str]] = field(default_factory=list)
    # The input of a tool the request forces (toolChoice.tool) when ``tool_calls`` is empty: as a
    # model does, the fake then answers with that one call and no text.
    forced_input: str = "{}"
    reasoning: str | None = None
    stop_reason: str | None = None  # default: end_turn, or tool_use with tool calls
    input_tokens: int = 11
    output_tokens: int = 5
    cache_read: int = 0
    cache_write: int = 0
    error: Error | None = None  # an HTTP error instead of an answer
    headers: dict[str, str] = field(default_factory=dict)  # extra response headers
    # Streams: a lowercase exception event (e.g. "throttlingException") after the text deltas.
    stream_exception: tuple[str, str] | None = None
    corrupt_crc: bool = False  # the second stream message's CRC is wrong
    truncate_stream: bool = False  # the body ends in the middle of a message, before messageStop
    write_size: int | None = None  # stream bytes in pieces of this size (frames split anywhere)
    chunk_delay_s: float = 0.0

    def pieces(self) -> list[str]:
        n = max(1, self.chunks)
        size = max(1, -(-len(self.text) // n))
        return [self.text[i : i + size] for i in range(0, len(self.text), size)]


@dataclass
class RecordedRequest:
    operation: str  # converse, converse-stream, invoke
    model_id: str  # decoded from the path
    raw_path: str
    headers: dict[str, str]
    body: dict[str, Any]


class _Refused(Exception):
    def __init__(self, error: Error) -> None:
        self.error = error


def _validation(message: str) -> _Refused:
    return _Refused(Error(400, "ValidationException", message))


# ---- the event-stream encoder ----------------------------------------------------------------


def encode_message(headers: dict[str, str], payload: bytes, *, corrupt: bool = False) -> bytes:
    """One event-stream message with string-typed (7) headers and correct CRCs."""
    raw_headers = b"".join(
        struct.pack(">B", len(k.encode()))
        + k.encode()
        + b"\x07"
        + struct.pack(">H", len(v.encode()))
        + v.encode()
        for k, v in headers.items()
    )
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack(">II", total, len(raw_headers))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + raw_headers + payload
    crc = zlib.crc32(message) ^ (0xFFFFFFFF if corrupt else 0)
    return message + struct.pack(">I", crc)


def event(event_type: str, payload: dict[str, Any], *, corrupt: bool = False) -> bytes:
    # Real AWS pads payloads with a "p" field (so lengths do not leak content); so does the fake.
    body = orjson.dumps({**payload, "p": "abcdefghijklmnop"[: 1 + len(event_type) % 16]})
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_message(headers, body, corrupt=corrupt)


def exception_event(exception_type: str, message: str) -> bytes:
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, orjson.dumps({"message": message}))


# ---- the server ------------------------------------------------------------------------------


class FakeBedrock:
    """The fake server; a context manager that runs it in a background thread."""

    def __init__(self, region: str = REGION) -> None:
        self.region = region
        self.default = Behavior()
        self.queue: deque[Behavior] = deque()
        self.requests: list[RecordedRequest] = []
        self.refused: list[Error] = []  # requests refused before an answer (auth, validation)
        self.assumed: list[tuple[str, str]] = []  # STS AssumeRole calls granted: (role, session)
        self.cancelled = 0
        self._cancel_event = threading.Event()
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
            self.refused.clear()
            self.assumed.clear()
            self.cancelled = 0
            self._cancel_event.clear()

    def wait_for_cancel(self, timeout: float) -> bool:
        return self._cancel_event.wait(timeout)

    def _behavior(self) -> Behavior:
        with self._lock:
            return self.queue.popleft() if self.queue else self.default

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeBedrock:
        self._loopback = LoopbackServer(
            self.app(),
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http="h11",
            name="fake-bedrock",
        )
        self.port = self._loopback.start()
        return self

    def stop(self) -> None:
        if self._loopback is not None:
            self._loopback.stop()

    def __enter__(self) -> FakeBedrock:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ HTTP

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/model/{model_id:path}/converse", self._converse, methods=["POST"]),
                Route("/model/{model_id:path}/converse-stream", self._converse_stream, methods=["POST"]),
                Route("/model/{model_id:path}/invoke", self._invoke, methods=["POST"]),
                Route("/", self._sts, methods=["POST"]),
            ]
        )

    async def _accept(self, request: Request, operation: str) -> RecordedRequest:
        """Authenticate, parse and record a request; ``_Refused`` when AWS would refuse it."""
        raw = await request.body()
        raw_path = request.scope["raw_path"].decode("ascii")
        self._authenticate(request, raw_path, raw)
        # The model id is one path segment, percent-encoded (an ARN's "/" included).
        match = re.fullmatch(r"/model/([^/]+)/" + re.escape(operation), raw_path)
        if match is None:
            raise _Refused(Error(404, "UnknownOperationException", "Unknown operation"))
        model_id = unquote(match.group(1))
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise _validation("Content-Type must be application/json")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _Refused(Error(400, "SerializationException", "Could not parse the request body")) from None
        if not isinstance(body, dict):
            raise _Refused(Error(400, "SerializationException", "The request body must be a JSON object"))
        recorded = RecordedRequest(operation, model_id, raw_path, dict(request.headers), body)
        with self._lock:
            self.requests.append(recorded)
        return recorded

    def _authenticate(
        self, request: Request, raw_path: str, body: bytes, service_name: str = "bedrock"
    ) -> None:
        auth = request.headers.get("authorization")
        if auth is None:
            raise _Refused(Error(403, "MissingAuthenticationTokenException", "Missing Authentication Token"))
        if auth.startswith("Bearer "):
            if not hmac.compare_digest(auth[7:], API_KEY):
                raise _Refused(Error(403, "UnrecognizedClientException", "Invalid API Key format"))
            return
        m = re.fullmatch(
            r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
            r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
            auth,
        )
        if m is None:
            raise _Refused(
                Error(403, "IncompleteSignatureException", "Authorization header requires a valid signature")
            )
        key_id, date, region, service, signed_names, signature = m.groups()
        secrets = {ACCESS_KEY_ID: (SECRET_ACCESS_KEY, None), SESSION_KEY_ID: (SESSION_SECRET, SESSION_TOKEN)}
        if key_id not in secrets:
            raise _Refused(
                Error(
                    403,
                    "UnrecognizedClientException",
                    "The security token included in the request is invalid.",
                )
            )
        secret, token = secrets[key_id]
        if token is not None and request.headers.get("x-amz-security-token") != token:
            raise _Refused(
                Error(
                    403,
                    "UnrecognizedClientException",
                    "The security token included in the request is invalid.",
                )
            )
        if service != service_name or region != self.region:
            raise _Refused(
                Error(
                    403,
                    "InvalidSignatureException",
                    "Credential should be scoped to correct service/region: "
                    f"'{service_name}'/'{self.region}'.",
                )
            )
        names = signed_names.split(";")
        amz_date = request.headers.get("x-amz-date", "")
        if "host" not in names or "x-amz-date" not in names or not amz_date.startswith(date):
            raise _Refused(Error(403, "IncompleteSignatureException", "Host and X-Amz-Date must be signed"))
        if token is not None and "x-amz-security-token" not in names:
            raise _Refused(Error(403, "IncompleteSignatureException", "X-Amz-Security-Token must be signed"))
        try:
            signed_at = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
        except ValueError:
            raise _Refused(Error(403, "IncompleteSignatureException", "X-Amz-Date is malformed")) from None
        if abs((datetime.datetime.now(datetime.UTC) - signed_at).total_seconds()) > 300:
            raise _Refused(Error(403, "InvalidSignatureException", "Signature expired"))
        missing = [n for n in names if n not in request.headers]
        if missing:
            raise _Refused(Error(403, "InvalidSignatureException", f"Signed header {missing[0]} is missing"))
        # Recompute the signature over exactly what arrived: the raw (encoded) path, the signed
        # headers' values, the body's bytes.
        aws_request = AWSRequest(
            method=request.method,
            url=f"http://{request.headers['host']}{raw_path}",
            data=body,
            headers={n: request.headers[n] for n in names},
        )
        aws_request.context["timestamp"] = amz_date
        signer = SigV4Auth(Credentials(key_id, secret, token), service, region)
        canonical = signer.canonical_request(aws_request)
        expected = signer.signature(signer.string_to_sign(aws_request, canonical), aws_request)
        if not hmac.compare_digest(expected, signature):
            raise _Refused(
                Error(
                    403,
                    "InvalidSignatureException",
                    "The request signature we calculated does not match the signature you provided. "
                    "Check your AWS Secret Access Key and signing method. Consult the service documentation "
                    "for details.",
                )
            )

    def _error(self, error: Error, headers: dict[str, str] | None = None) -> Response:
        with self._lock:
            self.refused.append(error)
        return Response(
            orjson.dumps({"message": error.message}),
            status_code=error.status,
            media_type="application/json",
            headers={
                "x-amzn-ErrorType": f"{error.name}:{_NAMESPACE}",
                "x-amzn-RequestId": str(uuid.uuid4()),
                **(headers or {}),
            },
        )

    async def _converse(self, request: Request) -> Response:
        try:
            recorded = await self._accept(request, "converse")
            _validate_converse(recorded.model_id, recorded.body)
        except _Refused as refused:
            return self._error(refused.error)
        behavior = _answering(self._behavior(), recorded.body)
        if behavior.error is not None:
            return self._error(behavior.error, behavior.headers)
        content: list[dict[str, Any]] = []
        if behavior.reasoning is not None:
            content.append(
                {"reasoningContent": {"reasoningText": {"text": behavior.reasoning, "signature": "sig"}}}
            )
        reply = _reply_text(behavior, recorded.body)
        if reply:
            content.append({"text": reply})
        for tool_id, name, arguments in behavior.tool_calls:
            content.append(
                {"toolUse": {"toolUseId": tool_id, "name": name, "input": orjson.loads(arguments)}}
            )
        answer = {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": _stop_reason(behavior),
            "usage": _usage(behavior),
            "metrics": {"latencyMs": 42},
        }
        return Response(
            orjson.dumps(answer),
            media_type="application/json",
            headers={"x-amzn-RequestId": str(uuid.uuid4()), **behavior.headers},
        )

    async def _converse_stream(self, request: Request) -> Response:
        try:
            recorded = await self._accept(request, "converse-stream")
            _validate_converse(recorded.model_id, recorded.body)
        except _Refused as refused:
            return self._error(refused.error)
        behavior = _answering(self._behavior(), recorded.body)
        if behavior.error is not None:
            return self._error(behavior.error, behavior.headers)
        frames = _stream_frames(behavior, _reply_text(behavior, recorded.body))
        return StreamingResponse(
            self._send(request, frames, behavior),
            media_type="application/vnd.amazon.eventstream",
            headers={"x-amzn-RequestId": str(uuid.uuid4()), **behavior.headers},
        )

    async def _send(self, request: Request, frames: list[bytes], behavior: Behavior) -> AsyncIterator[bytes]:
        completed = False
        try:
            if behavior.write_size:
                data = b"".join(frames)
                frames = [data[i : i + behavior.write_size] for i in range(0, len(data), behavior.write_size)]
            for frame in frames:
                if behavior.chunk_delay_s:
                    await asyncio.sleep(behavior.chunk_delay_s)
                    if await request.is_disconnected():
                        return
                yield frame
            completed = True
        finally:
            if not completed:
                with self._lock:
                    self.cancelled += 1
                    self._cancel_event.set()

    async def _invoke(self, request: Request) -> Response:
        try:
            recorded = await self._accept(request, "invoke")
            body, tokens = _embed(recorded.model_id, recorded.body)
        except _Refused as refused:
            return self._error(refused.error)
        return Response(
            orjson.dumps(body),
            media_type="application/json",
            headers={
                "x-amzn-RequestId": str(uuid.uuid4()),
                "X-Amzn-Bedrock-Input-Token-Count": str(tokens),
                "X-Amzn-Bedrock-Invocation-Latency": "12",
            },
        )

    async def _sts(self, request: Request) -> Response:
        """STS AssumeRole (query protocol): the base key pair may assume ``ROLE_ARN`` and gets the
        session key triple, which the Bedrock routes accept."""
        raw = await request.body()
        try:
            self._authenticate(request, "/", raw, "sts")
        except _Refused as refused:
            return _sts_error(refused.error.status, refused.error.name, refused.error.message)
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        if form.get("Action") != "AssumeRole" or form.get("Version") != "2011-06-15":
            return _sts_error(400, "InvalidAction", "Could not find operation")
        caller = request.headers["authorization"].split("Credential=")[1].split("/")[0]
        if caller != ACCESS_KEY_ID or form.get("RoleArn") != ROLE_ARN:
            return _sts_error(
                403,
                "AccessDenied",
                f"User: arn:aws:iam::123456789012:user/test is not authorized to perform: sts:AssumeRole "
                f"on resource: {form.get('RoleArn')}",
            )
        with self._lock:
            self.assumed.append((form["RoleArn"], form.get("RoleSessionName", "")))
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
        session = form.get("RoleSessionName", "")
        xml = (
            '<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>'
            f"<Credentials><AccessKeyId>{SESSION_KEY_ID}</AccessKeyId>"
            f"<SecretAccessKey>{SESSION_SECRET}</SecretAccessKey><SessionToken>{SESSION_TOKEN}</SessionToken>"
            f"<Expiration>{expires.strftime('%Y-%m-%dT%H:%M:%SZ')}</Expiration></Credentials>"
            f"<AssumedRoleUser><AssumedRoleId>AROAFAKEROLE:{session}</AssumedRoleId>"
            f"<Arn>arn:aws:sts::123456789012:assumed-role/bedrock-caller/{session}</Arn></AssumedRoleUser>"
            f"</AssumeRoleResult><ResponseMetadata><RequestId>{uuid.uuid4()}</RequestId></ResponseMetadata>"
            "</AssumeRoleResponse>"
        )
        return Response(xml, media_type="text/xml")


def _sts_error(status: int, code: str, message: str) -> Response:
    xml = (
        '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>'
        f"<Code>{code}</Code><Message>{message}</Message></Error><RequestId>{uuid.uuid4()}</RequestId>"
        "</ErrorResponse>"
    )
    return Response(xml, status_code=status, media_type="text/xml")


# ---- answers ---------------------------------------------------------------------------------


def _answering(behavior: Behavior, body: dict[str, Any]) -> Behavior:
    forced = ((body.get("toolConfig") or {}).get("toolChoice") or {}).get("tool")
    if forced is None or behavior.tool_calls:
        return behavior
    call = (f"tooluse_{uuid.uuid4().hex[:12]}", forced["name"], behavior.forced_input)
    return dataclasses.replace(behavior, text="", tool_calls=[call])


def _stop_reason(behavior: Behavior) -> str:
    if behavior.stop_reason is not None:
        return behavior.stop_reason
    return "tool_use" if behavior.tool_calls else "end_turn"


def _usage(behavior: Behavior) -> dict[str, int]:
    usage = {
        "inputTokens": behavior.input_tokens,
        "outputTokens": behavior.output_tokens,
        "totalTokens": behavior.input_tokens
        + behavior.output_tokens
        + behavior.cache_read
        + behavior.cache_write,
    }
    if behavior.cache_read or behavior.cache_write:
        usage["cacheReadInputTokens"] = behavior.cache_read
        usage["cacheWriteInputTokens"] = behavior.cache_write
    return usage


def _reply_text(behavior: Behavior, body: dict[str, Any]) -> str:
    """The behaviour's text; after a tool result, the text says which result it read (so a
    follow-up turn shows the result arrived)."""
    last = body["messages"][-1]
    results = [b["toolResult"] for b in last["content"] if "toolResult" in b]
    if not results:
        return behavior.text
    said = [item.get("text", "") for r in results for item in r.get("content", []) if "text" in item]
    return f"The tool said: {' | '.join(said)}"


def _stream_frames(behavior: Behavior, text: str) -> list[bytes]:
    frames = [event("messageStart", {"role": "assistant"})]
    index = 0
    if behavior.reasoning is not None:
        frames.append(
            event(
                "contentBlockDelta",
                {"contentBlockIndex": index, "delta": {"reasoningContent": {"text": behavior.reasoning}}},
            )
        )
        frames.append(
            event(
                "contentBlockDelta",
                {"contentBlockIndex": index, "delta": {"reasoningContent": {"signature": "sig"}}},
            )
        )
        frames.append(event("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    if text:
        pieces = Behavior(text=text, chunks=behavior.chunks).pieces()
        for piece in pieces:
            frames.append(event("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": piece}}))
        frames.append(event("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    if behavior.stream_exception is not None:
        frames.append(exception_event(*behavior.stream_exception))
        return frames
    for tool_id, name, arguments in behavior.tool_calls:
        start = {"toolUse": {"toolUseId": tool_id, "name": name}}
        frames.append(event("contentBlockStart", {"contentBlockIndex": index, "start": start}))
        third = -(-len(arguments) // 3) or 1
        for i in range(0, len(arguments), third):
            delta = {"toolUse": {"input": arguments[i : i + third]}}
            frames.append(event("contentBlockDelta", {"contentBlockIndex": index, "delta": delta}))
        frames.append(event("contentBlockStop", {"contentBlockIndex": index}))
        index += 1
    if behavior.corrupt_crc:
        frames[1] = frames[1][:-4] + struct.pack(">I", struct.unpack(">I", frames[1][-4:])[0] ^ 1)
    if behavior.truncate_stream:
        frames[-1] = frames[-1][: len(frames[-1]) // 2]
        return frames
    frames.append(event("messageStop", {"stopReason": _stop_reason(behavior)}))
    frames.append(event("metadata", {"usage": _usage(behavior), "metrics": {"latencyMs": 42}}))
    return frames


# ---- request validation (what Bedrock refuses with a ValidationException) --------------------


def _validate_converse(model_id: str, body: dict[str, Any]) -> None:
    if model_id not in CHAT_MODELS:
        raise _validation("The provided model identifier is invalid.")
    unknown = sorted(set(body) - _TOP_LEVEL)
    if unknown:
        raise _validation(f'Unknown parameter in input: "{unknown[0]}"')
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _validation("The messages field is required and must not be empty.")
    tool_ids: set[str] = set()
    uses_tools = False
    chars = 0
    previous = None
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
            raise _validation(f"messages.{i}.role must be user or assistant")
        role = msg["role"]
        if i == 0 and role != "user":
            raise _validation(
                "A conversation must start with a user message. Try again with a conversation that starts "
                "with a user message."
            )
        if role == previous:
            raise _validation(
                "A conversation must alternate between user and assistant roles. Make sure the conversation "
                "alternates between user and assistant roles and try again."
            )
        previous = role
        content = msg.get("content")
        if not isinstance(content, list) or not content:
            raise _validation(f"messages.{i}.content must be a non-empty list of content blocks")
        answered: set[str] = set()
        for j, block in enumerate(content):
            where = f"messages.{i}.content.{j}"
            chars += _validate_block(block, role, where, tool_ids, answered)
            uses_tools = uses_tools or "toolUse" in block or "toolResult" in block
    system = body.get("system", [])
    if not isinstance(system, list):
        raise _validation("system must be a list")
    for k, block in enumerate(system):
        if (
            not isinstance(block, dict)
            or len(block) != 1
            or next(iter(block)) not in ("text", "cachePoint", "guardContent")
        ):
            raise _validation(f"system.{k} must be one of text, cachePoint, guardContent")
        if "text" in block:
            if not isinstance(block["text"], str) or not block["text"].strip():
                raise _validation("The text field in the SystemContentBlock object is blank.")
            chars += len(block["text"])
    _validate_inference(body.get("inferenceConfig"))
    _validate_tools(body.get("toolConfig"), uses_tools)
    if chars > MAX_INPUT_CHARS:
        raise _validation("Input is too long for requested model.")


def _validate_block(block: Any, role: str, where: str, tool_ids: set[str], answered: set[str]) -> int:
    if not isinstance(block, dict) or len(block) != 1 or next(iter(block)) not in _BLOCK_KINDS:
        raise _validation(f"{where} must set exactly one ContentBlock member")
    kind, value = next(iter(block.items()))
    if kind == "text":
        if not isinstance(value, str) or not value.strip():
            raise _validation(
                "The text field in the ContentBlock object is blank. Add text to the text field, and try "
                "again."
            )
        return len(value)
    if kind == "image":
        _validate_image(value, where)
        return 0
    if kind == "cachePoint":
        if value != {"type": "default"}:
            raise _validation(f"{where}.cachePoint.type must be default")
        return 0
    if kind == "toolUse":
        if role != "assistant":
            raise _validation(f"{where}: toolUse blocks belong to assistant messages")
        if (
            not isinstance(value, dict)
            or not isinstance(value.get("toolUseId"), str)
            or not isinstance(value.get("name"), str)
        ):
            raise _validation(f"{where}.toolUse needs toolUseId and name")
        if not isinstance(value.get("input"), dict):
            raise _validation(f"{where}.toolUse.input must be a JSON object")
        tool_ids.add(value["toolUseId"])
        return len(orjson.dumps(value["input"]))
    if kind == "toolResult":
        if role != "user":
            raise _validation(f"{where}: toolResult blocks belong to user messages")
        if (
            not isinstance(value, dict)
            or value.get("toolUseId") not in tool_ids
            or value["toolUseId"] in answered
        ):
            raise _validation(
                f"The number of toolResult blocks at messages.{where.split('.')[1]}.content exceeds the "
                "number of toolUse blocks of previous turn."
            )
        answered.add(value["toolUseId"])
        if value.get("status", "success") not in ("success", "error"):
            raise _validation(f"{where}.toolResult.status must be success or error")
        items = value.get("content")
        if not isinstance(items, list) or not items:
            raise _validation(f"{where}.toolResult.content must be a non-empty list")
        size = 0
        for item in items:
            if (
                not isinstance(item, dict)
                or len(item) != 1
                or next(iter(item)) not in ("text", "json", "image", "document")
            ):
                raise _validation(f"{where}.toolResult.content items must be text, json, image or document")
            if "text" in item:
                size += len(item["text"])
            if "image" in item:
                _validate_image(item["image"], where)
        return size
    return 0


def _validate_image(value: Any, where: str) -> None:
    if not isinstance(value, dict) or value.get("format") not in _IMAGE_MAGIC:
        raise _validation(f"{where}.image.format must be one of png, jpeg, gif, webp")
    source = value.get("source")
    if not isinstance(source, dict) or len(source) != 1:
        raise _validation(f"{where}.image.source must set exactly one of bytes, s3Location")
    if "bytes" not in source:
        return
    try:
        data = base64.b64decode(source["bytes"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise _validation(f"{where}.image.source.bytes is not valid base64") from None
    if not data.startswith(_IMAGE_MAGIC[value["format"]]):
        raise _validation("Could not process image: the bytes do not match the declared format")


def _validate_inference(config: Any) -> None:
    if config is None:
        return
    if not isinstance(config, dict) or set(config) - _INFERENCE_KEYS:
        raise _validation("inferenceConfig takes maxTokens, temperature, topP, stopSequences")
    max_tokens = config.get("maxTokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise _validation("inferenceConfig.maxTokens must be at least 1")
    for key, top in (("temperature", 1.0), ("topP", 1.0)):
        value = config.get(key)
        if value is not None and (not isinstance(value, int | float) or not 0 <= value <= top):
            raise _validation(f"inferenceConfig.{key} must be between 0 and {top}")
    stops = config.get("stopSequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops)
    ):
        raise _validation("inferenceConfig.stopSequences must be non-empty strings")


def _validate_tools(config: Any, uses_tools: bool) -> None:
    if config is None:
        if uses_tools:
            raise _validation(
                "The toolConfig field must be defined when using toolUse and toolResult content blocks."
            )
        return
    tools = config.get("tools") if isinstance(config, dict) else None
    if not isinstance(tools, list) or not tools:
        raise _validation("toolConfig.tools must be a non-empty list")
    names = set()
    for k, tool in enumerate(tools):
        spec = tool.get("toolSpec") if isinstance(tool, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise _validation(f"toolConfig.tools.{k}.toolSpec.name is required")
        if not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", spec["name"]):
            raise _validation(f"toolConfig.tools.{k}.toolSpec.name must match [a-zA-Z0-9_-]+")
        schema = spec.get("inputSchema")
        if not isinstance(schema, dict) or not isinstance(schema.get("json"), dict):
            raise _validation(f"toolConfig.tools.{k}.toolSpec.inputSchema.json must be a JSON schema object")
        names.add(spec["name"])
    choice = config.get("toolChoice")
    if choice is None:
        return
    if not isinstance(choice, dict) or len(choice) != 1 or next(iter(choice)) not in ("auto", "any", "tool"):
        raise _validation("toolChoice must set exactly one of auto, any, tool")
    if "tool" in choice and choice["tool"].get("name") not in names:
        raise _validation("toolChoice.tool.name must name one of the tools")


# ---- embeddings ------------------------------------------------------------------------------


def vector_for(text: str, dims: int) -> list[float]:
    """A deterministic unit-ish vector per text (tests recompute it to check order)."""
    seed = hashlib.sha256(text.encode()).digest()
    return [round((seed[i % 32] - 128) / 128, 6) for i in range(dims)]


def _embed(model_id: str, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    if model_id == TITAN_EMBED:
        extra = set(body) - {"inputText", "dimensions", "normalize", "embeddingTypes"}
        if extra:
            raise _validation(
                f"Malformed input request: extraneous key [{sorted(extra)[0]}] is not permitted"
            )
        text = body.get("inputText")
        if not isinstance(text, str) or not text:
            raise _validation("Malformed input request: inputText must be a non-empty string")
        dims = body.get("dimensions", 1024)
        if dims not in (256, 512, 1024):
            raise _validation("Malformed input request: dimensions must be 256, 512 or 1024")
        tokens = len(text.split())
        return {"embedding": vector_for(text, dims), "inputTextTokenCount": tokens}, tokens
    if model_id == COHERE_EMBED:
        extra = set(body) - {"texts", "input_type", "truncate", "embedding_types", "images"}
        if extra:
            raise _validation(
                f"Malformed input request: extraneous key [{sorted(extra)[0]}] is not permitted"
            )
        texts = body.get("texts")
        if (
            not isinstance(texts, list)
            or not 0 < len(texts) <= 96
            or not all(isinstance(t, str) for t in texts)
        ):
            raise _validation("Malformed input request: texts must hold 1 to 96 strings")
        if body.get("input_type") not in ("search_document", "search_query", "classification", "clustering"):
            raise _validation("Malformed input request: input_type is required")
        tokens = sum(len(t.split()) for t in texts)
        answer = {
            "embeddings": [vector_for(t, 1024) for t in texts],
            "id": str(uuid.uuid4()),
            "response_type": "embeddings_floats",
            "texts": texts,
        }
        return answer, tokens
    raise _validation("The provided model identifier is invalid.")
