"""A fake Vertex AI OpenAI-compatible endpoint (Model as a Service open models): real HTTP on loopback.

Wire format followed: https://cloud.google.com/vertex-ai/generative-ai/docs/maas/call-open-model-apis
(``POST /v1/projects/{project}/locations/{location}/endpoints/openapi/chat/completions`` with
OpenAI's Chat Completions body, ``model`` the publisher-qualified id such as
``meta/llama-3.3-70b-instruct-maas``; answers and SSE streams as OpenAI's). Vertex's front answers
first, in Google's error shape (``{"error": {"code", "message", "status"}}``,
https://cloud.google.com/apis/design/errors): a missing or unknown bearer token 401
UNAUTHENTICATED (tokens are those the fake Google token endpoint of ``tests.support.fake_gemini``
issued), a model not served there 404 NOT_FOUND. The answers themselves are
``tests.support.fake_openai.FakeOpenAI``'s, which this server extends::

    with FakeGemini() as google, FakeVertexOpenAPI(google, models={"meta/llama-x-maas"}) as fake:
        fake.endpoint                    # api_base of a vertex_ai/meta/llama-x-maas deployment
"""

from __future__ import annotations

from collections.abc import Iterable

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.fake_gemini import FakeGemini
from tests.support.fake_openai import FakeOpenAI

_PATH = "/v1/projects/{project}/locations/{location}/endpoints/openapi/chat/completions"


class FakeVertexOpenAPI(FakeOpenAI):
    """Open models at Vertex's OpenAI-compatible endpoint, behind its bearer-token check."""

    def __init__(
        self, google: FakeGemini, models: Iterable[str] = ("meta/llama-3.3-70b-instruct-maas",)
    ) -> None:
        super().__init__()
        self.google = google
        self.models = set(models)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> Starlette:
        return Starlette(routes=[Route(_PATH, self._openapi_chat, methods=["POST"])])

    async def _openapi_chat(self, request: Request) -> Response:
        denied = self.google.check_bearer(request)
        if denied is not None:
            return denied
        try:
            model = orjson.loads(await request.body()).get("model")
        except (orjson.JSONDecodeError, AttributeError):
            return _google_error(400, "Invalid JSON payload received.", "INVALID_ARGUMENT")
        if model not in self.models:
            return _google_error(
                404, f"Model {model!r} was not found or your project does not have access to it.", "NOT_FOUND"
            )
        return await self._chat(request)


def _google_error(status: int, message: str, google_status: str) -> Response:
    body = {"error": {"code": status, "message": message, "status": google_status}}
    return Response(orjson.dumps(body), status, media_type="application/json")
