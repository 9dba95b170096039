"""The ASGI application: routes, error handlers and the lifespan that builds ``Services``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import metrics, tracing
from gateway.config import GatewayConfig
from gateway.doors.chat import ChatDoor
from gateway.doors.completions import CompletionsDoor
from gateway.doors.embeddings import EmbeddingsDoor
from gateway.doors.messages import CountTokens, MessagesDoor
from gateway.doors.models import list_models, retrieve_model
from gateway.doors.responses import ResponsesDoor, delete_response, list_input_items, retrieve_response
from gateway.errors import install_error_handlers
from gateway.openapi import install_openapi
from gateway.pipeline.conductor import Endpoint
from gateway.routes.health import liveliness, prometheus, readiness
from gateway.services import Services, build_services

ServicesBuilder = Callable[[GatewayConfig], Awaitable[Services]]


class GatewayApp(FastAPI):
    """FastAPI, with the doors' POST routes dispatched before its middleware stack.

    The doors are plain ASGI endpoints that answer every error themselves, so FastAPI's and
    Starlette's layers (server-error and exception middleware, the exit stack, body limit,
    telemetry, route matching) do nothing for them but cost time: in a py-spy profile at
    concurrency 16 they held about 5% of the gateway's CPU samples, a third as many as the whole
    pipeline below them. One dict lookup sends a door's request straight to its endpoint;
    everything else (admin API, health, a wrong method on a door's path) goes through FastAPI
    as before, and the routes stay registered there for the OpenAPI document.
    """

    hot_posts: dict[str, ASGIApp]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.hot_posts.get(scope["path"])
            if endpoint is not None:
                scope["app"] = self  # what Starlette sets: the endpoints read app.state
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    config: GatewayConfig | None = None, *, builder: ServicesBuilder = build_services
) -> GatewayApp:
    """The gateway app for ``config`` (embedded defaults when None).

    Services are built in the lifespan (so connections open inside the server's event loop)
    and closed on shutdown. Other teams add their routers with ``app.include_router`` in
    ``include_extra_routes`` below.
    """
    config = config or GatewayConfig()
    metrics.label_models(entry.model_name for entry in config.model_list)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tracing.configure(config.general_settings)  # before the services: the router's adapters are traced
        services = await builder(config)
        app.state.services = services
        try:
            yield
        finally:
            app.state.services = None
            await services.aclose()
            await asyncio.to_thread(tracing.shutdown)  # flushes the spans not yet exported

    app = GatewayApp(
        title="Switchyard",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # Served without a key, as LiteLLM does (see gateway.openapi for why that is safe).
        openapi_url="/openapi.json",
    )
    app.state.config = config
    app.state.services = None
    install_error_handlers(app)

    chat = Endpoint(ChatDoor())
    # The hot path first, as plain ASGI routes (no dependency injection, no Request objects).
    hot = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/chat/completions", chat, methods=["POST"]),
    ]
    # Every other door goes through the same pipeline (gateway.pipeline.conductor).
    for door in (EmbeddingsDoor(), CompletionsDoor()):
        endpoint = Endpoint(door)
        for prefix in ("/v1", ""):
            hot.append(Route(f"{prefix}/{door.operation}", endpoint, methods=["POST"]))
    messages = Endpoint(MessagesDoor())  # Anthropic's Messages API (the SDK posts to /v1/messages)
    count = CountTokens()
    for prefix in ("/v1", ""):
        hot.append(Route(f"{prefix}/messages", messages, methods=["POST"]))
        hot.append(Route(f"{prefix}/messages/count_tokens", count, methods=["POST"]))
    for path in ("/v1/models", "/models"):
        hot.append(Route(path, list_models, methods=["GET"]))
        hot.append(Route(path + "/{model:path}", retrieve_model, methods=["GET"]))  # ids hold "/"
    responses = Endpoint(ResponsesDoor())
    for prefix in ("/v1", ""):  # the Responses API (gateway/doors/responses.py)
        hot.append(Route(f"{prefix}/responses", responses, methods=["POST"]))
        one = f"{prefix}/responses/{{response_id}}"
        hot.append(Route(one, retrieve_response, methods=["GET"]))
        hot.append(Route(one, delete_response, methods=["DELETE"]))
        hot.append(Route(f"{one}/input_items", list_input_items, methods=["GET"]))
    hot += [
        Route("/health/liveliness", liveliness, methods=["GET"]),
        Route("/health/readiness", readiness, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    app.router.routes[:0] = hot
    app.hot_posts = {
        route.path: route.endpoint for route in hot if route.methods == {"POST"} and "{" not in route.path
    }
    include_extra_routes(app)
    install_openapi(app)
    return app


def include_extra_routes(app: FastAPI) -> None:
    """Routes owned by other components (the admin API...), mounted when they are installed."""
    from gateway.routing.health_probe import health  # ROUTER: probes every deployment

    app.router.routes.append(Route("/health", health, methods=["GET"]))

    from gateway.admin import router as admin_router  # CONTROL PLANE: LiteLLM-compatible admin API

    app.include_router(admin_router)
    from gateway.admin.models import router as models_router  # CONTROL PLANE: models in the database

    app.include_router(models_router)
    from gateway.admin.budgets import router as budgets_router  # CONTROL PLANE: budgets

    app.include_router(budgets_router)
    from gateway.admin.customers import router as customers_router  # CONTROL PLANE: customers (end users)

    app.include_router(customers_router)
    from gateway.admin.organizations import router as organizations_router  # CONTROL PLANE: organizations

    app.include_router(organizations_router)
    from gateway.admin.team_pages import router as team_pages_router  # CONTROL PLANE: /v2/team/list

    app.include_router(team_pages_router)
    from gateway.admin.global_spend import router as global_spend_router  # CONTROL PLANE: spend reports

    app.include_router(global_spend_router)
