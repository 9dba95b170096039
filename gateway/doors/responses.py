"""The OpenAI Responses API door: ``POST /v1/responses`` and the stored responses' routes.

``POST`` declares (``gateway.doors.base``); the pipeline conducts the stages. Requests take the
typed path: the body (after the stored conversation of ``previous_response_id``) becomes a
``GenerationRequest`` for any chat-capable deployment, and the answer is written back as a
``response`` object or its event stream (``providers.formats.openai_responses``).

``store`` (default true, as OpenAI) keeps the response and its input items in Postgres
(``gateway.responses_store``), owned by the caller's team (else its key), for
``GET /v1/responses/{id}``, ``DELETE /v1/responses/{id}``, ``GET /v1/responses/{id}/input_items``
and later ``previous_response_id`` (another team's id is a 404, as an unknown one).

The response cache serves only ``store: false`` requests without ``previous_response_id``: a
stored response must be a new object with its own id, and a chained one depends on stored state.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import request_token
from gateway.doors.base import Door, DoorCall, DoorOperation, DoorRequest, EventWriter
from gateway.doors.messages import estimate_input_tokens
from gateway.errors import GatewayError, bad_request
from gateway.responses_store import ResponseStore, scope_of
from gateway.server.body import check_json_depth
from gateway.services import Services
from providers.formats import openai_responses as rsp
from providers.formats.errors import FormatError
from providers.schema import GenerationResponse

log = logging.getLogger(__name__)

_STORE_KEY = "responses_store"


def store_of(services: Services) -> ResponseStore:
    """The services' one ``ResponseStore`` (made on first use, over the control plane's pool)."""
    store = services.extras.get(_STORE_KEY)
    if store is None:
        pool = services.extras["control_plane"].db.pool
        store = ResponseStore(pool, services.config.general_settings.responses_retention_days)
        services.extras[_STORE_KEY] = store
    return store


def not_found(response_id: str, param: str | None = None) -> GatewayError:
    return GatewayError(
        404, f"Response with id '{response_id}' not found.", "invalid_request_error", "not_found", param
    )


@dataclass(slots=True)
class _Turn:
    """This request's own state, from ``read`` to ``completed``."""

    response_id: str
    created_at: int
    echoed: dict[str, Any]
    input_items: list[dict[str, Any]]
    store: bool
    scope: str
    # What the client received: the plain body, or the stream writer (its final response).
    body: dict[str, Any] | None = None
    writer: rsp.StreamWriter | None = None


def _parse(raw: bytes) -> dict[str, Any]:
    check_json_depth(raw)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    return body


class ResponsesDoor(Door):
    operation: ClassVar[DoorOperation] = "responses"

    async def read(self, raw: bytes, call: DoorCall) -> DoorRequest:
        body = _parse(raw)
        store_flag = body.get("store", True)
        if not isinstance(store_flag, bool):
            raise bad_request("'store' must be a boolean", "store")
        previous = body.get("previous_response_id")
        if previous is not None and not isinstance(previous, str):
            raise bad_request("'previous_response_id' must be a string", "previous_response_id")
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise bad_request("'metadata' must be an object", "metadata")
        scope = scope_of(call.principal)
        try:
            items = rsp.parse_input_items(body)
            history = []
            if previous is not None:
                stored = await store_of(call.services).conversation(scope, previous)
                if stored is None:
                    raise not_found(previous, "previous_response_id")
                history = rsp.items_to_messages(stored, "previous_response_id")
            req = rsp.parse_request(body, history)
        except FormatError as exc:
            raise bad_request(exc.message, exc.param) from None
        turn = _Turn(
            response_id=f"resp_{uuid.uuid4().hex}",
            created_at=int(time.time()),
            echoed=rsp.echo(body),
            input_items=items,
            store=store_flag,
            scope=scope,
        )
        cacheable = not store_flag and previous is None
        material = {k: v for k, v in body.items() if k != "stream"} if cacheable else None
        return DoorRequest(
            model=req.model,
            stream=req.stream,
            request=req,
            cache_material=material,
            estimated_tokens=estimate_input_tokens(req) + (req.max_tokens or 0),
            state=turn,
        )

    def write(self, response: GenerationResponse, req: DoorRequest) -> bytes:
        turn: _Turn = req.state
        turn.body = rsp.build_response(
            response, response_id=turn.response_id, created_at=turn.created_at, echoed=turn.echoed
        )
        return orjson.dumps(turn.body)

    def stream_writer(self, req: DoorRequest) -> EventWriter:
        turn: _Turn = req.state
        turn.writer = rsp.StreamWriter(
            response_id=turn.response_id, created_at=turn.created_at, model=req.model, echoed=turn.echoed
        )
        return turn.writer

    def stream_error(self, err: GatewayError) -> bytes:
        # OpenAI's stream error event (https://platform.openai.com/docs/api-reference/responses-streaming/error).
        event = {
            "type": "error",
            "code": err.code,
            "message": err.message,
            "param": err.param,
            "sequence_number": 0,
        }
        return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"

    async def completed(self, req: DoorRequest, response: GenerationResponse, call: DoorCall) -> None:
        """Store what the client received (``store``), so it can be read back and chained."""
        turn: _Turn = req.state
        if not turn.store:
            return
        sent = turn.writer.response if turn.writer is not None else turn.body
        if sent is None:
            sent = rsp.build_response(
                response, response_id=turn.response_id, created_at=turn.created_at, echoed=turn.echoed
            )
        items = rsp.listed_input_items(turn.input_items, turn.response_id)
        await store_of(call.services).save(turn.scope, items, sent)


# ---- GET / DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items ----------------------


async def _caller_scope(request: Request) -> tuple[ResponseStore, str]:
    services: Services = request.app.state.services
    token = request_token(request.headers.get)
    principal = await services.auth.authenticate(token)
    return store_of(services), scope_of(principal)


def _json(obj: Any) -> Response:
    return Response(orjson.dumps(obj), media_type="application/json")


async def retrieve_response(request: Request) -> Response:
    store, scope = await _caller_scope(request)
    response_id = request.path_params["response_id"]
    stored = await store.get(scope, response_id)
    if stored is None:
        raise not_found(response_id)
    return _json(stored.response)


async def delete_response(request: Request) -> Response:
    store, scope = await _caller_scope(request)
    response_id = request.path_params["response_id"]
    if not await store.delete(scope, response_id):
        raise not_found(response_id)
    return _json({"id": response_id, "object": "response", "deleted": True})


async def list_input_items(request: Request) -> Response:
    """OpenAI's cursor list: ``order`` (desc by default), ``limit`` 1-100 (20), ``after`` an item id."""
    store, scope = await _caller_scope(request)
    response_id = request.path_params["response_id"]
    query = request.query_params
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise bad_request("'order' must be asc or desc", "order")
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise bad_request("'limit' must be an integer", "limit") from None
    if not 1 <= limit <= 100:
        raise bad_request("'limit' must be between 1 and 100", "limit")
    stored = await store.get(scope, response_id)
    if stored is None:
        raise not_found(response_id)
    items = stored.input_items if order == "asc" else stored.input_items[::-1]
    after = query.get("after")
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise bad_request(f"no input item with id '{after}'", "after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return _json(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )
