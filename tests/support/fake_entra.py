"""A fake Microsoft identity platform token endpoint (Microsoft Entra ID): real HTTP on loopback.

Wire format followed:
- https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow
  (``POST /{tenant}/oauth2/v2.0/token``, an ``application/x-www-form-urlencoded`` body with
  ``client_id``, ``client_secret``, ``scope`` and ``grant_type=client_credentials``; the scope of a
  client-credentials request must be a resource's ``/.default``; the answer
  ``{"token_type": "Bearer", "expires_in", "ext_expires_in", "access_token"}``).
- https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth-ropc (``grant_type=password``
  with ``username`` and ``password``, no secret for a public client, tenant ``organizations``).
- https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes and
  .../v2-oauth2-auth-code-flow#error-response-example: errors are ``{"error", "error_description":
  "AADSTS<n>: ...\\r\\nTrace ID: ...", "error_codes": [n], "timestamp", "trace_id",
  "correlation_id"}``: an unknown tenant 400 ``invalid_request`` (AADSTS90002), a missing
  parameter 400 ``invalid_request`` (AADSTS900144), an unknown application 400
  ``unauthorized_client`` (AADSTS700016), a wrong secret 401 ``invalid_client`` (AADSTS7000215), a
  scope without ``/.default`` 400 ``invalid_scope`` (AADSTS1002012), a wrong user or password 400
  ``invalid_grant`` (AADSTS50126).

Tokens are random, and ``accepts`` says whether one was issued and has not expired, so the fake
Azure service (``tests.support.fake_azure``) refuses a token the gateway kept too long::

    with FakeEntra(tenant="contoso-tenant", expires_in=3599) as entra:
        entra.authority                  # "http://127.0.0.1:PORT" (AZURE_AUTHORITY_HOST)
        entra.token_requests             # the form bodies received, in order
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.loopback_server import LoopbackServer

TENANT = "0b9f4c2e-tenant-contoso"
CLIENT_ID = "4d5e6f70-app-switchyard"
CLIENT_SECRET = "entra-client-secret-0123456789"
USERNAME = "ops@contoso.example"
PASSWORD = "entra-user-password-0123456789"
SCOPE = "https://cognitiveservices.azure.com/.default"


class FakeEntra:
    """The token endpoint for one tenant, one confidential client and one user."""

    def __init__(self, tenant: str = TENANT, expires_in: int = 3599) -> None:
        self.tenant = tenant
        self.expires_in = expires_in
        self.delay = 0.0  # seconds each token answer waits (to see concurrent requests pile up)
        self.fail_with: list[int] = []  # statuses to answer next, one per request
        self.token_requests: list[dict[str, str]] = []
        self._issued: dict[str, tuple[float, str]] = {}  # token -> (expires at, scope)
        self._lock = threading.Lock()
        self._loopback: LoopbackServer | None = None
        self.port = 0

    @property
    def authority(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def accepts(self, token: str, scope: str = SCOPE) -> bool:
        """Whether ``token`` was issued for ``scope`` and has not expired."""
        with self._lock:
            issued = self._issued.get(token)
        return issued is not None and issued[0] > time.monotonic() and issued[1] == scope

    def reset(self, expires_in: int = 3599) -> None:
        with self._lock:
            self.expires_in = expires_in
            self.delay = 0.0
            self.fail_with.clear()
            self.token_requests.clear()
            self._issued.clear()

    def start(self) -> FakeEntra:
        app = Starlette(routes=[Route("/{tenant}/oauth2/v2.0/token", self._token, methods=["POST"])])
        self._loopback = LoopbackServer(
            app, log_level="warning", access_log=False, lifespan="off", loop="asyncio", name="fake-entra"
        )
        self.port = self._loopback.start()
        return self

    def stop(self) -> None:
        if self._loopback is not None:
            self._loopback.stop()

    def __enter__(self) -> FakeEntra:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _token(self, request: Request) -> Response:
        raw = await request.body()
        form_type = request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
        form = dict(parse_qsl(raw.decode("utf-8", "replace"))) if form_type else {}
        with self._lock:
            self.token_requests.append(form)
            failure = self.fail_with.pop(0) if self.fail_with else None
        if self.delay:
            await asyncio.sleep(self.delay)
        if failure is not None:
            return _error(failure, "temporarily_unavailable", 50196, "The server is temporarily unavailable.")
        tenant = request.path_params["tenant"]
        grant = form.get("grant_type")
        if not grant:
            return _missing("grant_type")
        if tenant != self.tenant and not (grant == "password" and tenant == "organizations"):
            return _error(
                400,
                "invalid_request",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
                "signing into the correct cloud.",
            )
        for name in ("client_id", "scope"):
            if not form.get(name):
                return _missing(name)
        if form["client_id"] != CLIENT_ID:
            return _error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{form['client_id']}' was not found in the directory "
                f"'{tenant}'.",
            )
        if grant == "client_credentials":
            refused = _check_client_credentials(form)
        elif grant == "password":
            refused = _check_password(form)
        else:
            refused = _error(
                400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
            )
        if refused is not None:
            return refused
        token = f"eyJ0eXAiOiJKV1Qi.{secrets.token_urlsafe(24)}"
        with self._lock:
            self._issued[token] = (time.monotonic() + self.expires_in, form["scope"])
            lifetime = self.expires_in
        return _json(
            {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": token,
            }
        )


def _check_client_credentials(form: dict[str, str]) -> Response | None:
    if not form.get("client_secret"):
        return _error(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )
    if form["client_secret"] != CLIENT_SECRET:
        return _error(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client "
            "secret value, not the client secret ID, for a secret added to app "
            f"'{form['client_id']}'.",
        )
    if not form["scope"].endswith("/.default"):
        return _error(
            400,
            "invalid_scope",
            1002012,
            f"The provided value for scope {form['scope']} is not valid. Client credential flows must "
            "have a scope value with /.default suffixed to the resource identifier (application ID URI).",
        )
    return None


def _check_password(form: dict[str, str]) -> Response | None:
    for name in ("username", "password"):
        if not form.get(name):
            return _missing(name)
    if (form["username"], form["password"]) != (USERNAME, PASSWORD):
        return _error(
            400, "invalid_grant", 50126, "Error validating credentials due to invalid username or password."
        )
    return None


def _missing(name: str) -> Response:
    return _error(
        400, "invalid_request", 900144, f"The request body must contain the following parameter: '{name}'."
    )


def _error(status: int, error: str, code: int, message: str) -> Response:
    trace, correlation = uuid.uuid4(), uuid.uuid4()
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    return _json(
        {
            "error": error,
            "error_description": f"AADSTS{code}: {message}\r\nTrace ID: {trace}\r\n"
            f"Correlation ID: {correlation}\r\nTimestamp: {stamp}",
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": str(trace),
            "correlation_id": str(correlation),
        },
        status,
    )


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status, media_type="application/json")
