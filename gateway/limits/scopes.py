"""Which limit scopes apply to one request: the caller's (from the control plane) plus config defaults."""

from __future__ import annotations

from gateway.limits.settings import LimitSettings
from gateway.pipeline import LimitScope, Principal


def _has_limit(s: LimitScope) -> bool:
    return s.rpm is not None or s.tpm is not None or s.max_parallel_requests is not None


def applicable_scopes(principal: Principal, model: str, settings: LimitSettings) -> list[LimitScope]:
    """The scopes to check for ``principal`` calling ``model``, each with at least one limit.

    Per-model scopes (``key_model``, ``team_model``, ``user_model``) carry ids
    ``"<owner>:<model>"`` and apply only to that model; the owner part never contains a colon,
    model names may.
    """
    out: list[LimitScope] = []
    key_scope: LimitScope | None = None
    for s in principal.limits:
        if s.scope.endswith("_model") and s.id.partition(":")[2] != model:
            continue
        if s.scope == "key":
            key_scope = s
            continue
        if _has_limit(s):
            out.append(s)

    # The caller's key: its own limits, with config defaults filling the gaps.
    key_id = principal.key_hash or principal.kind
    base = key_scope or LimitScope("key", key_id)
    merged = LimitScope(
        "key",
        base.id,
        rpm=base.rpm if base.rpm is not None else settings.key_rpm,
        tpm=base.tpm if base.tpm is not None else settings.key_tpm,
        max_parallel_requests=(
            base.max_parallel_requests
            if base.max_parallel_requests is not None
            else settings.key_max_parallel_requests
        ),
    )
    if _has_limit(merged):
        out.insert(0, merged)

    ml = settings.model_limits.get(model)
    if ml is not None:
        ms = LimitScope("model", model, ml.rpm, ml.tpm, ml.max_parallel_requests)
        if _has_limit(ms):
            out.append(ms)
    gs = LimitScope("global", "global", settings.rpm, settings.tpm, settings.max_parallel_requests)
    if _has_limit(gs):
        out.append(gs)
    return out
