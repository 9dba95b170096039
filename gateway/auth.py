"""The authentication stage: bearer token -> ``Principal``.

With no master key and no key store configured the gateway runs in local mode: every caller is
the "anonymous" principal (like a local model server); binding a non-loopback address in that
mode is refused by the CLI. Otherwise a key is required and resolved by a chain of resolvers:
the master key first (constant-time comparison), then virtual keys from the control plane.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence

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


# Where a caller's key may be, in LiteLLM's order (litellm/proxy/auth/user_api_key_auth.py,
# ``get_api_key``): LiteLLM's own header, OpenAI's ``Authorization: Bearer``, Azure's ``api-key``,
# Anthropic's ``x-api-key``. The first one present decides; a wrong key there is a 401 even when a
# later header holds a good one.
KEY_HEADERS = ("x-litellm-api-key", "authorization", "api-key", "x-api-key")


def _strip_bearer(value: str) -> str:
    scheme, _, rest = value.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" else value


def request_token(get: Callable[[str], str | None]) -> str | None:
    """The caller's key from request headers (``get`` looks one up by lower-case name).

    ``x-litellm-api-key`` may hold the key bare or as ``Bearer <key>`` (Claude Code sends it that
    way through ``ANTHROPIC_CUSTOM_HEADERS``). ``Authorization`` must use the Bearer scheme: any
    other scheme is no key at all, rather than a fall-through to the next header.
    """
    for name in KEY_HEADERS:
        value = get(name)
        if value is None:
            continue
        value = value.strip()
        if not value:
            continue  # an empty header is no header
        if name == "authorization":
            scheme, _, rest = value.partition(" ")
            return (rest.strip() or None) if scheme.lower() == "bearer" else None
        if name == "x-litellm-api-key":
            value = _strip_bearer(value)
        return value or None
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
                "Missing API key: pass it as 'Authorization: Bearer <key>' (or in x-litellm-api-key, "
                "api-key or x-api-key)",
                "authentication_error",
                "missing_api_key",
            )
        principal = await self.resolver.resolve(token)
        if principal is None:
            raise GatewayError(401, "Invalid API key", "authentication_error", "invalid_api_key")
        return principal
