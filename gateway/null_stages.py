"""The do-nothing stage implementations used when nothing is configured (local mode)."""

from __future__ import annotations

from gateway.pipeline import Principal, Usage


class NullAdmission:
    """An admission with nothing reserved."""

    __slots__ = ("headers",)

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}

    async def settle(self, usage: Usage | None) -> None:
        return None


class NullLimiter:
    """Admits everything."""

    async def admit(
        self, principal: Principal, model: str, estimated_tokens: int, *, instant: bool = False
    ) -> NullAdmission:
        return NullAdmission()
