"""Fallback tables: which other model names to try, in order, when a model cannot answer.

Accepts LiteLLM's config shape (a list of one-key dicts, ``[{"gpt-4o": ["gpt-4o-mini"]}]``)
as well as a plain mapping. A ``"*"`` entry applies to every model without its own entry.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any


class FallbackKind(enum.Enum):
    GENERAL = "fallbacks"  # the model's deployments are exhausted (errors, cooldowns)
    CONTEXT_WINDOW = "context_window_fallbacks"  # the prompt does not fit
    CONTENT_POLICY = "content_policy_fallbacks"  # the upstream refused the content


def normalize(raw: Any) -> dict[str, tuple[str, ...]]:
    """``{model: (fallback, ...)}`` from a mapping or a list of one-key mappings."""
    out: dict[str, tuple[str, ...]] = {}
    if not raw:
        return out
    items: Iterable[tuple[Any, Any]]
    if isinstance(raw, Mapping):
        items = raw.items()
    else:
        items = (kv for entry in raw for kv in dict(entry).items())
    for model, targets in items:
        if isinstance(targets, str):
            targets = [targets]
        merged = list(out.get(str(model), ()))
        merged.extend(str(t) for t in targets if str(t) not in merged)
        out[str(model)] = tuple(merged)
    return out


class FallbackTable:
    """The three fallback maps from ``router_settings``."""

    def __init__(self, general: Any = None, context_window: Any = None, content_policy: Any = None) -> None:
        self._tables = {
            FallbackKind.GENERAL: normalize(general),
            FallbackKind.CONTEXT_WINDOW: normalize(context_window),
            FallbackKind.CONTENT_POLICY: normalize(content_policy),
        }

    def targets(self, kind: FallbackKind, model: str) -> tuple[str, ...]:
        """Fallback model names for ``model`` (excluding ``model`` itself), in order."""
        table = self._tables[kind]
        chain = table.get(model)
        if chain is None:
            chain = table.get("*", ())
        return tuple(m for m in chain if m != model)

    def referenced_models(self) -> set[str]:
        """Every model name used as a fallback target (checked against the model list at startup)."""
        return {m for table in self._tables.values() for chain in table.values() for m in chain}
