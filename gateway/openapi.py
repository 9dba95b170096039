"""The gateway's OpenAPI document, served at ``/openapi.json``.

FastAPI documents only its own ``APIRoute``s, and infers request bodies from handler signatures.
Neither covers this gateway: the hot routes (chat, models, health, metrics) are plain Starlette
routes, and the admin handlers read their bodies themselves (authenticate first, then parse a
bounded body) so FastAPI sees no body. This module completes FastAPI's document: the hot routes
by hand, each admin body from its pydantic model (``ADMIN_BODIES``), the OpenAI error shape as
every error response, and which routes need a key.

Served without a key, as LiteLLM does: it describes request shapes that are public anyway (this
repository, LiteLLM's docs) and names no model, key, team or user.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.admin import budget_schemas, customer_schemas, model_schemas, organization_schemas, schemas

# Every admin POST route and the model its body is validated against. A POST route missing here
# gets no body schema, which tests/gateway/test_schemathesis.py refuses.
ADMIN_BODIES: dict[str, type[BaseModel]] = {
    "/key/generate": schemas.GenerateKeyRequest,
    "/key/update": schemas.UpdateKeyRequest,
    "/key/delete": schemas.DeleteKeysRequest,
    "/key/regenerate": schemas.RegenerateKeyRequest,
    "/key/{key}/regenerate": schemas.RegenerateKeyRequest,
    "/key/block": schemas.KeyRef,
    "/key/unblock": schemas.KeyRef,
    "/team/new": schemas.NewTeamRequest,
    "/team/update": schemas.UpdateTeamRequest,
    "/team/delete": schemas.DeleteTeamsRequest,
    "/team/block": schemas.TeamRef,
    "/team/unblock": schemas.TeamRef,
    "/team/member_add": schemas.TeamMemberAddRequest,
    "/team/member_delete": schemas.TeamMemberDeleteRequest,
    "/user/new": schemas.NewUserRequest,
    "/user/update": schemas.UpdateUserRequest,
    "/user/delete": schemas.DeleteUsersRequest,
    "/model/new": model_schemas.NewModel,
    "/model/update": model_schemas.UpdateModel,
    "/model/delete": model_schemas.DeleteModel,
    "/budget/new": budget_schemas.BudgetNewRequest,
    "/budget/update": budget_schemas.BudgetNewRequest,
    "/budget/delete": budget_schemas.BudgetDeleteRequest,
    "/budget/info": budget_schemas.BudgetRequest,
    **{
        f"{prefix}/{action}": body
        for prefix in ("/customer", "/end_user")
        for action, body in (
            ("new", customer_schemas.CustomerNewRequest),
            ("update", customer_schemas.CustomerUpdateRequest),
            ("delete", customer_schemas.CustomerDeleteRequest),
            ("block", customer_schemas.CustomerBlockRequest),
            ("unblock", customer_schemas.CustomerBlockRequest),
        )
    },
    # Also served as PATCH (update, member_update) and DELETE (delete, member_delete), LiteLLM's methods.
    "/organization/new": organization_schemas.OrganizationNewRequest,
    "/organization/update": organization_schemas.OrganizationUpdateRequest,
    "/organization/delete": organization_schemas.OrganizationDeleteRequest,
    "/organization/info": organization_schemas.OrganizationInfoRequest,
    "/organization/member_add": organization_schemas.OrganizationMemberAddRequest,
    "/organization/member_update": organization_schemas.OrganizationMemberUpdateRequest,
    "/organization/member_delete": organization_schemas.OrganizationMemberRef,
}
# The path variant takes the key from the path; its body (the other fields) is optional.
_OPTIONAL_BODY = {"/key/{key}/regenerate"}

_ERROR = {"$ref": "#/components/schemas/Error"}
_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

# The chat body, described minimally: what the gateway itself reads. Everything else OpenAI
# accepts is passed through to the provider, so other properties are allowed.
_CHAT_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string"},
        "messages": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {
                    "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
                    "content": {"type": ["string", "null"]},
                },
            },
        },
        "stream": {"type": "boolean"},
        "max_tokens": {"type": "integer"},
        "max_completion_tokens": {"type": "integer"},
        "temperature": {"type": "number"},
        "user": {"type": "string"},
    },
}


# Embeddings and legacy completions, minimally (the rest passes through to the provider).
_TOKENS_OR_TEXT: dict[str, Any] = {
    "oneOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}},
        {"type": "array", "items": {"type": "integer"}},
        {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
    ]
}
_EMBEDDINGS_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string"},
        "input": _TOKENS_OR_TEXT,
        "dimensions": {"type": "integer", "minimum": 1},
        "encoding_format": {"type": "string", "enum": ["float", "base64"]},
        "user": {"type": "string"},
    },
}
_COMPLETIONS_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {
        "model": {"type": "string"},
        "prompt": _TOKENS_OR_TEXT,
        "stream": {"type": "boolean"},
        "max_tokens": {"type": "integer"},
        "temperature": {"type": "number"},
        "user": {"type": "string"},
    },
}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(
    summary: str, *, keyed: bool, body: dict[str, Any] | None = None, ok: str = "application/json"
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "content": {ok: {"schema": {}}}},
            "default": {"description": "An OpenAI-shaped error", "content": _json_content(_ERROR)},
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json_content(body)}
    op["security"] = [{"bearer": []}] if keyed else []
    return op


def _hot_paths() -> dict[str, dict[str, Any]]:
    chat = {"post": _operation("Create a chat completion (OpenAI's API)", keyed=True, body=_CHAT_BODY)}
    models = {"get": _operation("List the models this key may use", keyed=True)}
    model = {
        "get": _operation("Retrieve a model this key may use", keyed=True),
        "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
    }
    embeddings = {"post": _operation("Create embeddings (OpenAI's API)", keyed=True, body=_EMBEDDINGS_BODY)}
    completions = {
        "post": _operation("Create a text completion (legacy)", keyed=True, body=_COMPLETIONS_BODY)
    }
    return {
        "/v1/chat/completions": chat,
        "/chat/completions": chat,
        "/v1/embeddings": embeddings,
        "/embeddings": embeddings,
        "/v1/completions": completions,
        "/completions": completions,
        "/v1/models": models,
        "/models": models,
        "/v1/models/{model}": model,
        "/models/{model}": model,
        "/health": {"get": _operation("Probe every deployment (master key)", keyed=True)},
        "/health/liveliness": {"get": _operation("The process answers", keyed=False)},
        "/health/readiness": {"get": _operation("Ready for traffic", keyed=False)},
        "/metrics": {"get": _operation("Prometheus metrics", keyed=False, ok="text/plain")},
    }


# The Responses body, minimally (gateway/doors/responses.py reads the rest; unknown fields pass on).
_RESPONSES_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string"},
        "input": {"type": ["string", "array"], "items": {"type": "object"}},
        "instructions": {"type": "string"},
        "stream": {"type": "boolean"},
        "store": {"type": "boolean"},
        "previous_response_id": {"type": "string"},
        "max_output_tokens": {"type": "integer"},
        "temperature": {"type": "number"},
        "metadata": {"type": "object"},
    },
}


def _responses_paths() -> dict[str, dict[str, Any]]:
    """``/v1/responses`` (and ``/responses``) and the stored responses' routes."""
    create = {
        "post": _operation("Create a response (OpenAI's Responses API)", keyed=True, body=_RESPONSES_BODY)
    }
    response_id = {"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"}}
    one = {
        "get": _operation("Retrieve a stored response", keyed=True),
        "delete": _operation("Delete a stored response", keyed=True),
        "parameters": [response_id],
    }
    listing = _operation("List a stored response's input items", keyed=True)
    listing["parameters"] = [
        {"name": "order", "in": "query", "schema": {"type": "string", "enum": ["asc", "desc"]}},
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
        {"name": "after", "in": "query", "schema": {"type": "string"}},
    ]
    items = {"get": listing, "parameters": [response_id]}
    paths: dict[str, dict[str, Any]] = {}
    for prefix in ("/v1", ""):
        paths[f"{prefix}/responses"] = create
        paths[f"{prefix}/responses/{{response_id}}"] = one
        paths[f"{prefix}/responses/{{response_id}}/input_items"] = items
    return paths


# Anthropic's Messages API (gateway/doors/messages.py): the body minimally (the codec reads the
# rest: content blocks, tools, tool_choice, thinking), and errors in Anthropic's shape.
_ANTHROPIC_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"type": "string", "enum": ["error"]},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}
_ANTHROPIC_MESSAGE: dict[str, Any] = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["user", "assistant"]},
        "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
    },
}
_MESSAGES_FIELDS: dict[str, Any] = {
    "model": {"type": "string"},
    "messages": {"type": "array", "items": _ANTHROPIC_MESSAGE},
    "system": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}]},
    "tools": {"type": "array", "items": {"type": "object"}},
    "tool_choice": {"type": "object"},
}
_MESSAGES_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages", "max_tokens"],
    "properties": {
        **_MESSAGES_FIELDS,
        "max_tokens": {"type": "integer", "minimum": 1},
        "stream": {"type": "boolean"},
        "stop_sequences": {"type": "array", "items": {"type": "string"}},
        "temperature": {"type": "number"},
        "top_p": {"type": "number"},
        "metadata": {"type": "object"},
    },
}
_COUNT_TOKENS_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": _MESSAGES_FIELDS,
}


def _messages_paths() -> dict[str, dict[str, Any]]:
    """``/v1/messages`` and ``/v1/messages/count_tokens`` (and without ``/v1``): x-api-key or bearer."""
    create = _operation("Create a message (Anthropic's Messages API)", keyed=True, body=_MESSAGES_BODY)
    count = _operation("Count a message's input tokens (an estimate)", keyed=True, body=_COUNT_TOKENS_BODY)
    for op in (create, count):
        op["responses"]["default"] = {
            "description": "An Anthropic-shaped error",
            "content": _json_content(_ANTHROPIC_ERROR),
        }
        op["security"] = [{"bearer": []}, {"x-api-key": []}]
    paths: dict[str, dict[str, Any]] = {}
    for prefix in ("/v1", ""):
        paths[f"{prefix}/messages"] = {"post": create}
        paths[f"{prefix}/messages/count_tokens"] = {"post": count}
    return paths


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The whole document for ``app`` (FastAPI's, completed as the module docstring says)."""
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
    components = doc.setdefault("components", {})
    defs = components.setdefault("schemas", {})
    # FastAPI's 422 schemas describe an answer this gateway never gives (it answers 400).
    for name in ("HTTPValidationError", "ValidationError"):
        defs.pop(name, None)
    defs["Error"] = _ERROR_SCHEMA
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer"},
        "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"},  # Anthropic's SDK
    }
    doc["security"] = [{"bearer": []}]

    models = sorted(set(ADMIN_BODIES.values()), key=lambda m: m.__name__)
    refs, extra = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    defs.update(extra.get("$defs", {}))
    paths: dict[str, dict[str, Any]] = doc.setdefault("paths", {})
    for path, item in paths.items():
        for method, op in item.items():
            op["responses"] = {
                "200": {"description": "OK", "content": _json_content({})},
                "default": {"description": "An OpenAI-shaped error", "content": _json_content(_ERROR)},
            }
            model = ADMIN_BODIES.get(path) if method in ("post", "patch", "delete") else None
            if model is not None:
                op["requestBody"] = {
                    "required": path not in _OPTIONAL_BODY,
                    "content": _json_content(refs[(model, "validation")]),
                }
    paths.update(_hot_paths())
    paths.update(_responses_paths())
    paths.update(_messages_paths())
    return doc


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and so ``/openapi.json``) return ``build_openapi(app)``, built once."""
    cached: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not cached:
            cached.update(build_openapi(app))
        return cached

    app.openapi = openapi  # type: ignore[method-assign]
