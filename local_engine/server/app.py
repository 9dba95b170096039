"""The standalone OpenAI-compatible HTTP server for one model (``switchyard engine serve``).

Routes: ``/v1/chat/completions``, ``/v1/completions`` (both with SSE streaming), ``/v1/models``,
``/health``, and the prefix-cache summary for routers (``local_engine.server.prefix_cache``).
Errors are OpenAI-shaped. A client that disconnects aborts its request in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from local_engine.engine.async_engine import AsyncEngine
from local_engine.engine.outputs import RequestOutput
from local_engine.model_info import model_card
from local_engine.server.prefix_cache import add_prefix_cache_routes
from local_engine.server.protocol import OpenAIError
from local_engine.server.serving import OpenAIServing, Prepared

logger = logging.getLogger(__name__)

_DISCONNECT_POLL_S = 0.25


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def _error_response(exc: OpenAIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise OpenAIError(400, "request body is not valid JSON") from None


async def _unless_disconnected(request: Request, work: Awaitable[Any]) -> Any:
    """Run ``work``; cancel it (aborting the engine request) if the client goes away first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=_DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, OpenAIError):
                    await task
                raise OpenAIError(499, "client disconnected", code="client_disconnected")
    finally:
        if not task.done():
            task.cancel()


async def _primed_sse(
    stream: AsyncIterator[tuple[int, RequestOutput]], chunks: AsyncIterator[dict[str, Any]]
) -> Response:
    """Start the stream before answering, so errors found at admission still get a proper status."""
    try:
        first = await chunks.__anext__()
    except OpenAIError as exc:
        await chunks.aclose()
        await stream.aclose()  # type: ignore[attr-defined]
        return _error_response(exc)
    except StopAsyncIteration:
        first = None

    async def body() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield _sse(first)
            async for chunk in chunks:
                yield _sse(chunk)
            yield b"data: [DONE]\n\n"
        except OpenAIError as exc:
            yield _sse(exc.body())
        finally:
            # A disconnect cancels this generator; closing the chain aborts the engine request.
            await chunks.aclose()  # type: ignore[attr-defined]
            await stream.aclose()  # type: ignore[attr-defined]

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def create_app(
    engine: AsyncEngine, served_model_name: str | None = None, api_key: str | None = None
) -> FastAPI:
    """The FastAPI app serving ``engine``; the engine is started and shut down with the app."""
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        state["serving"] = OpenAIServing(engine, served_model_name)
        state["created"] = int(time.time())
        try:
            yield
        finally:
            await engine.shutdown()

    app = FastAPI(title="Switchyard local engine", lifespan=lifespan, docs_url=None, redoc_url=None)

    def serving() -> OpenAIServing:
        return state["serving"]

    @app.exception_handler(OpenAIError)
    async def _openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        return _error_response(OpenAIError(500, "internal server error", type="api_error"))

    @app.middleware("http")
    async def _auth(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if api_key and request.url.path.startswith("/v1/"):
            header = request.headers.get("authorization", "")
            given = header.removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), api_key.encode()):
                return _error_response(OpenAIError(401, "invalid API key", type="authentication_error"))
        return await call_next(request)

    def check_model(model: str | None) -> None:
        name = serving().model_name
        if model and model != name:
            raise OpenAIError(
                404, f"The model `{model}` does not exist.", param="model", code="model_not_found"
            )

    @app.get("/health")
    async def health() -> Response:
        if not engine.is_running:
            return _error_response(OpenAIError(503, "engine is not running", type="api_error"))
        return JSONResponse({"status": "ok"})

    @app.get("/engine/stats")
    async def stats() -> dict[str, Any]:
        """Live engine counters (for operators and tests: e.g. that an abandoned stream was aborted)."""
        inner = engine.engine
        return {"unfinished_requests": len(inner.requests) if inner is not None else 0}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        name = serving().model_name
        card = {
            "id": name,
            "object": "model",
            "created": state["created"],
            "owned_by": "switchyard",
            **model_card(engine.max_model_len, engine.tokenizer.chat_template),
        }
        return {"object": "list", "data": [card]}

    async def run_request(
        request: Request,
        prepare: Callable[[Any], tuple[Any, Prepared]],
        respond: Callable[[Prepared, list[RequestOutput]], dict[str, Any]],
        chunker: Callable[
            [Prepared, AsyncIterator[tuple[int, RequestOutput]]], AsyncIterator[dict[str, Any]]
        ],
    ) -> Response:
        body = await _json_body(request)
        if isinstance(body, dict):
            check_model(body.get("model"))
        req, prepared = prepare(body)
        if req.stream:
            stream = serving().stream_outputs(prepared)
            return await _primed_sse(stream, chunker(prepared, stream))
        outputs = await _unless_disconnected(request, serving().run_all(prepared))
        return JSONResponse(respond(prepared, outputs))

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        s = serving()
        return await run_request(request, s.prepare_chat, s.chat_response, s.chat_chunks)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        s = serving()
        return await run_request(request, s.prepare_completion, s.completion_response, s.completion_chunks)

    add_prefix_cache_routes(app, engine)
    return app
