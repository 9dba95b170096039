"""The authentication stage: bearer token -> ``Principal``.

With no master key and no key store configured the gateway runs in local mode: every caller is
the "anonymous" principal (like a local model server); binding a non-loopback address in that
mode is refused by the CLI. Otherwise a key is required and resolved by a chain of resolvers:
the master key first (constant-time comparison), then virtual keys from the control plane.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from gateway.errors import GatewayError
from gateway.pipeline import KeyResolver, Principal

ANONYMOUS = Principal(kind="anonymous")
MASTER = Principal(kind="master", key_alias="master")


class MasterKeyResolver:
    """Recognises the configured master key."""

    def __init__(self, master_key: str) -> None:
        self._key = master_key.encode()

    async def resolve(self, token: str) -> Principal | None:
        return MASTER if hmac.compare_digest(token.encode(), self._key) else None


class ChainKeyResolver:
    """Asks each resolver in turn; the first principal found wins."""

    def __init__(self, resolvers: Sequence[KeyResolver]) -> None:
        self.resolvers = list(resolvers)

    async def resolve(self, token: str) -> Principal | None:
        for resolver in self.resolvers:
            principal = await resolver.resolve(token)
            if principal is not None:
                return principal
        return None


def token_from_headers(authorization: str | None, api_key: str | None = None) -> str | None:
    """The bearer token from ``Authorization: Bearer ...`` (or an ``api-key`` header, Azure-style)."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    if api_key:
        return api_key.strip() or None
    return None


class Authenticator:
    """Turns a request's token into a principal; ``resolver=None`` means local (anonymous) mode."""

    def __init__(self, resolver: KeyResolver | None) -> None:
        self.resolver = resolver

    @property
    def requires_key(self) -> bool:
        return self.resolver is not None

    async def authenticate(self, token: str | None) -> Principal:
        if self.resolver is None:
            return ANONYMOUS
        if not token:
            raise GatewayError(
                401,
                "Missing API key: pass it as 'Authorization: Bearer <key>'",
                "authentication_error",
                "missing_api_key",
            )
        principal = await self.resolver.resolve(token)
        if principal is None:
            raise GatewayError(401, "Invalid API key", "authentication_error", "invalid_api_key")
        return principal
