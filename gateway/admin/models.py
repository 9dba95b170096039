"""Models in the database, on LiteLLM's paths and payloads: ``/model/new``, ``/model/update``,
``/model/delete``, ``/model/info`` (and ``/v1/model/info``), ``/model_group/info``.

Writes are the proxy admin's only. A stored model is checked by building it exactly as every
instance will (``model_sync.build_deployment``) before it is written, so a model that cannot be
served is refused with a 400 rather than stored. Its credentials are sealed before they reach the
data layer (``model_secrets``); no response, audit row or log line carries them: every secret param
reads ``********``. An update sending ``********`` back (as a form that showed it would) keeps the
stored secret. After its write, the instance applies the change at once; the others within
``model_refresh_interval_s``.

Reads (LiteLLM: "admin sees all, others the models their key may use"): proxy admins and viewers
see every deployment; every other key sees only the model names it may call, as ``/v1/models``.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.admin.access import Scope
from gateway.admin.model_schemas import DeleteModel, NewModel, UpdateModel
from gateway.admin.model_secrets import MASKED, ParamCipher, SecretsUnavailable, mask
from gateway.admin.model_sync import ModelSync, UnusableRow, build_deployment
from gateway.admin.router import _allow, _audit, _json, _parse, _read, _write
from gateway.auth import request_token
from gateway.db import model_deployments as rows_sql
from gateway.db.model_deployments import ModelRow
from gateway.errors import GatewayError, bad_request
from gateway.routing.deployment import Deployment
from gateway.routing.router import Router
from gateway.routing.wildcards import model_allowed

router = APIRouter(tags=["admin"])
log = logging.getLogger(__name__)

# ---- plumbing ---------------------------------------------------------------------------------------


def _sync(request: Request) -> ModelSync:
    sync: ModelSync | None = request.app.state.services.extras.get("model_sync")
    if sync is None:
        raise GatewayError(503, "the control plane (database) is not available", code="no_database")
    return sync


def _cipher(request: Request) -> ParamCipher:
    return _sync(request).cipher


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat()


def _model_id(body_info: dict[str, Any] | None) -> str | None:
    value = (body_info or {}).get("id")
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= 256:
        raise bad_request("model_info.id: must be a string of 1 to 256 characters", param="model_info.id")
    return value


def _checked(request: Request, row: ModelRow) -> Deployment:
    """Build ``row`` as every instance will; a 400 naming the field when it cannot be served."""
    sync = _sync(request)
    try:
        return build_deployment(row, sync.cipher, sync.router.providers, sync.default_timeout)
    except UnusableRow as exc:
        raise bad_request(str(exc), param=str(exc).split(":", 1)[0]) from None


def _seal(request: Request, params: dict[str, Any]) -> dict[str, Any]:
    try:
        return _cipher(request).seal(params)
    except SecretsUnavailable as exc:
        raise bad_request(str(exc), param=str(exc).split(":", 1)[0], code="no_encryption_key") from None


def _row_view(row: ModelRow) -> dict[str, Any]:
    """A stored model as LiteLLM's ``LiteLLM_ProxyModelTable`` row, secrets masked."""
    return {
        "model_id": row.id,
        "model_name": row.model_name,
        "litellm_params": mask(row.params),
        "model_info": _db_info(row),
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
    }


def _db_info(row: ModelRow) -> dict[str, Any]:
    return {
        **row.model_info,
        "id": row.id,
        "db_model": True,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
    }


def _now_row(model_id: str, name: str, params: dict[str, Any], info: dict[str, Any]) -> ModelRow:
    now = datetime.now(UTC)
    return ModelRow(model_id, name, params, info, now, now)


async def _apply_here(request: Request) -> None:
    """Serve the change on this instance now (the poller would within an interval anyway)."""
    try:
        await _sync(request).refresh()
    except Exception as exc:
        log.warning("stored models not refreshed after a write: %s", type(exc).__name__)


async def _visible(request: Request, scope: Scope) -> tuple[Router, Any]:
    """The router and a predicate on model names: which the caller may see."""
    services = request.app.state.services
    router_: Router = services.router
    if scope is Scope.ALL:
        return router_, lambda name: True
    principal = await services.auth.authenticate(request_token(request.headers.get))
    allowed = principal.models
    return router_, lambda name: not allowed or model_allowed(allowed, name)


def _not_found(model_id: str) -> GatewayError:
    return GatewayError(404, f"model with id {model_id!r} not found", code="not_found", param="id")


# ---- writes -----------------------------------------------------------------------------------------


@router.post("/model/new")
async def model_new(request: Request) -> Response:
    await _allow(request, "/model/new")
    body = await _parse(request, NewModel)
    info = dict(body.model_info or {})
    model_id = _model_id(info) or str(uuid.uuid4())
    info.pop("id", None)
    if model_id in _sync(request).config_ids:
        raise bad_request(
            "model_info.id: a config model has that id", param="model_info.id", code="duplicate"
        )
    params = _seal(request, body.litellm_params.model_dump())
    _checked(request, _now_row(model_id, body.model_name, params, info))
    async with _write(request) as (conn, caller):
        if await rows_sql.get(conn, model_id) is not None:
            raise bad_request("model_info.id: already exists", param="model_info.id", code="duplicate")
        row = await rows_sql.insert(conn, model_id, body.model_name, params, info)
        await _audit(conn, caller, "model.new", "model", row.id, None, _row_view(row))
    await _apply_here(request)
    return _json(_row_view(row))


@router.post("/model/update")
async def model_update(request: Request) -> Response:
    await _allow(request, "/model/update")
    body = await _parse(request, UpdateModel)
    model_id = body.id or _model_id(body.model_info)
    if model_id is None:
        raise bad_request("model_info.id: the id of the model to update is required", param="model_info.id")
    if model_id in _sync(request).config_ids:
        raise bad_request(
            "this model is defined in the config file and cannot be edited here; "
            "add models to edit through /model/new",
            param="model_info.id",
        )
    # A secret sent back as the mask (or null) keeps the stored one, as LiteLLM keeps null params.
    incoming = {k: v for k, v in (body.litellm_params or {}).items() if v is not None and v != MASKED}
    sealed = _seal(request, incoming)
    async with _write(request) as (conn, caller):
        before = await rows_sql.get(conn, model_id, for_update=True)
        if before is None:
            raise _not_found(model_id)
        info = {**before.model_info, **(body.model_info or {})}
        info.pop("id", None)
        params = {**before.params, **sealed}
        name = body.model_name or before.model_name
        _checked(request, _now_row(model_id, name, params, info))
        row = await rows_sql.update(conn, model_id, name, params, info)
        assert row is not None  # locked above
        await _audit(conn, caller, "model.update", "model", row.id, _row_view(before), _row_view(row))
    await _apply_here(request)
    return _json(_row_view(row))


@router.post("/model/delete")
async def model_delete(request: Request) -> Response:
    await _allow(request, "/model/delete")
    body = await _parse(request, DeleteModel)
    if body.id in _sync(request).config_ids:
        raise bad_request("this model is defined in the config file and cannot be deleted here", param="id")
    async with _write(request) as (conn, caller):
        row = await rows_sql.delete(conn, body.id)
        if row is None:
            raise _not_found(body.id)
        await _audit(conn, caller, "model.delete", "model", row.id, _row_view(row), None)
    await _apply_here(request)
    return _json({"message": f"Model: {row.id} deleted successfully"})


# ---- reads ------------------------------------------------------------------------------------------


def _mode(router_: Router, name: str) -> str:
    if router_.serves(name, "chat"):
        return "chat"
    if router_.serves(name, "embeddings"):
        return "embedding"
    return "completion"


def _config_view(router_: Router, d: Deployment) -> dict[str, Any]:
    return {
        "model_name": d.model_name,
        "litellm_params": mask(d.params),
        "model_info": {
            "id": d.id,
            "db_model": False,
            "mode": _mode(router_, d.model_name),
            "input_cost_per_token": d.input_cost_per_token,
            "output_cost_per_token": d.output_cost_per_token,
        },
    }


def _stored_view(router_: Router, row: ModelRow, d: Deployment | None) -> dict[str, Any]:
    info = _db_info(row)
    info.setdefault("mode", _mode(router_, row.model_name))
    if d is not None:
        info.setdefault("input_cost_per_token", d.input_cost_per_token)
        info.setdefault("output_cost_per_token", d.output_cost_per_token)
    return {"model_name": row.model_name, "litellm_params": mask(row.params), "model_info": info}


async def _model_info(request: Request, litellm_model_id: str | None) -> Response:
    scope = await _allow(request, "/model/info")
    router_, visible = await _visible(request, scope)
    async with _read(request) as (conn, _caller):
        stored = {row.id: row for row in await rows_sql.list_all(conn)}
    data: list[dict[str, Any]] = []
    for d in router_.deployments:
        row = stored.pop(d.id, None)
        data.append(_config_view(router_, d) if row is None else _stored_view(router_, row, d))
    # Stored models this instance cannot serve (see model_sync) are listed too, so they can be fixed.
    data += [_stored_view(router_, row, None) for row in stored.values()]
    data = [m for m in data if visible(m["model_name"])]
    if litellm_model_id is not None:
        data = [m for m in data if m["model_info"]["id"] == litellm_model_id]
        if not data:
            raise GatewayError(
                404, f"model id {litellm_model_id!r} not found", code="not_found", param="litellm_model_id"
            )
    return _json({"data": data})


@router.get("/model/info")
async def model_info(request: Request, litellm_model_id: str | None = None) -> Response:
    return await _model_info(request, litellm_model_id)


@router.get("/v1/model/info")
async def model_info_v1(request: Request, litellm_model_id: str | None = None) -> Response:
    return await _model_info(request, litellm_model_id)


def _sum(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


@router.get("/model_group/info")
async def model_group_info(request: Request, model_group: str | None = None) -> Response:
    scope = await _allow(request, "/model_group/info")
    router_, visible = await _visible(request, scope)
    data = []
    for name in router_.model_names():
        if (model_group is not None and name != model_group) or not visible(name):
            continue
        deps = [s.deployment for s in router_.groups[name].deployments]
        data.append(
            {
                "model_group": name,
                "providers": sorted({d.provider for d in deps}),
                "max_input_tokens": None,
                "max_output_tokens": None,
                "input_cost_per_token": min(d.input_cost_per_token for d in deps),
                "output_cost_per_token": min(d.output_cost_per_token for d in deps),
                "mode": _mode(router_, name),
                "tpm": _sum([d.tpm for d in deps]),
                "rpm": _sum([d.rpm for d in deps]),
                "supports_parallel_function_calling": False,
                "supports_vision": False,
                "supports_function_calling": False,
            }
        )
    return _json({"data": data})
