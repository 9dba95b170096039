"""A fake Vertex AI serving Anthropic's Claude models: real HTTP on loopback.

Wire format followed:
- https://cloud.google.com/vertex-ai/generative-ai/docs/partner-models/claude and
  https://docs.anthropic.com/en/api/claude-on-vertex-ai (with the official ``anthropic`` SDK's
  ``AnthropicVertex`` client as the reference request): ``POST /v1/projects/{project}/locations/
  {location}/publishers/anthropic/models/{model}:rawPredict`` and ``:streamRawPredict``, the
  Messages API body with ``anthropic_version: "vertex-2023-10-16"`` and without ``model`` (the URL
  names it), answered with the Messages API's ``message`` or its event stream.
- Vertex's front answers first, in Google's error shape
  (``{"error": {"code", "message", "status"}}``, https://cloud.google.com/apis/design/errors):
  a missing or unknown bearer token 401 UNAUTHENTICATED (tokens are the ones the fake Google
  token endpoint of ``tests.support.fake_gemini`` issued), a model not enabled in the project 404
  NOT_FOUND ("Publisher Model ... not found").
- Then the model, in Anthropic's error shape: a body without ``anthropic_version``, or with a
  ``model`` field ("Extra inputs are not permitted"), is a 400 ``invalid_request_error``; the rest
  is validated and answered as ``tests.support.fake_anthropic.FakeAnthropic`` does (this server
  extends it, so ``Behavior``, ``enqueue`` and ``requests`` work the same; ``requests`` record the
  body as sent)::

    with FakeGemini() as google, FakeVertexClaude(google, models={"claude-sonnet-4@20250514"}) as fake:
        fake.base_url                    # api_base of a vertex_ai/claude-* deployment
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.fake_anthropic import FakeAnthropic, RecordedRequest, _error
from tests.support.fake_gemini import FakeGemini
from tests.support.loopback_server import LoopbackServer

VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
_PATH = "/v1/projects/{project}/locations/{location}/publishers/anthropic/models/{target}"
_METHODS = ("rawPredict", "streamRawPredict")


class FakeVertexClaude(FakeAnthropic):
    """Claude models enabled in one (any) project, behind Vertex's bearer-token check."""

    def __init__(self, google: FakeGemini, models: Iterable[str] = ("claude-sonnet-4@20250514",)) -> None:
        super().__init__()
        self.google = google
        self.models = set(models)

    def start(self) -> FakeVertexClaude:
        self._loopback = LoopbackServer(
            Starlette(routes=[Route(_PATH, self._messages, methods=["POST"])]),
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            http="h11",
            name="fake-vertex-claude",
        )
        self.port = self._loopback.start()
        return self

    async def _read(self, request: Request) -> dict[str, Any] | Response:
        model, _, method = request.path_params["target"].rpartition(":")
        if method not in _METHODS:
            return _google_error(404, f"Method {method!r} not found.", "NOT_FOUND")
        denied = self.google.check_bearer(request)
        if denied is not None:
            return denied
        if model not in self.models:
            p = request.path_params
            return _google_error(
                404,
                f"Publisher Model `projects/{p['project']}/locations/{p['location']}/publishers/anthropic/"
                f"models/{model}` not found.",
                "NOT_FOUND",
            )
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "invalid_request_error", "There was an error parsing the body of your request")
        if not isinstance(body, dict):
            return _error(400, "invalid_request_error", "Input should be an object")
        with self._lock:
            self.requests.append(RecordedRequest(request.url.path, dict(request.headers), dict(body)))
        if "model" in body:
            return _error(400, "invalid_request_error", "model: Extra inputs are not permitted")
        version = body.pop("anthropic_version", None)
        if version is None:
            return _error(400, "invalid_request_error", "anthropic_version: Field required")
        if version != VERTEX_ANTHROPIC_VERSION:
            return _error(
                400,
                "invalid_request_error",
                f"anthropic_version: Input should be '{VERTEX_ANTHROPIC_VERSION}'",
            )
        # From here it is the Messages API: the model named by the URL.
        return {**body, "model": model}


def _google_error(status: int, message: str, google_status: str) -> Response:
    body = {"error": {"code": status, "message": message, "status": google_status}}
    return Response(orjson.dumps(body), status, media_type="application/json")
