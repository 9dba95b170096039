"""The OpenAI-shaped errors a key can be refused with (LiteLLM's statuses and codes)."""

from __future__ import annotations

from gateway.errors import GatewayError


def key_blocked() -> GatewayError:
    return GatewayError(401, "This key is blocked; ask an admin to unblock it", code="key_blocked")


def key_expired() -> GatewayError:
    return GatewayError(401, "This key has expired", code="key_expired")


def budget_exceeded(kind: str, spend: float, max_budget: float) -> GatewayError:
    # LiteLLM answers an exhausted budget with 400 and type/code budget_exceeded.
    return GatewayError(
        400,
        f"Budget has been exceeded! {kind.capitalize()} spend: {spend:.6f}, max budget: {max_budget:.6f}",
        type="budget_exceeded",
        code="budget_exceeded",
    )


def model_not_allowed(model: str, allowed: tuple[str, ...]) -> GatewayError:
    shown = ", ".join(m for m in allowed if m != "__no_models__") or "none"
    return GatewayError(
        403,
        f"This key may not use model {model!r}; allowed: {shown}",
        code="model_not_allowed",
        param="model",
    )
