"""Wildcard model names, as LiteLLM routes them: ``model_name: "*"`` or ``"anthropic/*"``.

A ``model_list`` entry whose ``model_name`` contains ``*`` serves every requested name it matches
(each ``*`` matches any text, ``/`` included) that no entry names exactly. The text each ``*``
matched replaces, in order, the ``*`` of the deployment's own model, so ``model_name: "anthropic/*"``
with ``model: anthropic/*`` sends a caller's ``anthropic/claude-x`` upstream as ``claude-x``, and
``model_name: "*"`` with ``model: openai/*`` sends any name as it is. With more ``*`` in the name
than in the deployment's model, the requested name goes upstream whole (LiteLLM does the same).
The provider is the deployment's own: a ``*`` only ever fills the upstream model.

Exact names win; among patterns the longer wins (then the one with more ``*``, then config order),
as LiteLLM's ``PatternMatchRouter`` orders them
(https://docs.litellm.ai/docs/wildcard_routing). A key whose ``models`` list holds a pattern may
use every name it matches (``model_allowed``).

Names are resolved once and remembered (a bounded table: callers choose the names), so a
wildcard request pays one dict lookup after the first; exact names never come here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from gateway.routing.deployment import Deployment
from gateway.routing.model_group import ModelGroup
from providers.contract import Operation

WILDCARD = "*"
# Resolved names remembered at most; the table starts over when full (it is only a cache).
MAX_RESOLVED = 4096


def is_pattern(name: str) -> bool:
    return WILDCARD in name


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """``"anthropic/*"`` -> a regex matching the whole name, one group per ``*``."""
    return re.compile(re.escape(pattern).replace(r"\*", "(.*)"), re.DOTALL)


def upstream_for(template: str, segments: tuple[str, ...], requested: str) -> str:
    """The upstream model: ``template``'s ``*`` replaced, in order, by what the name's ``*`` matched."""
    if WILDCARD not in template:
        return template
    if len(segments) > template.count(WILDCARD):
        return requested
    for segment in segments:
        template = template.replace(WILDCARD, segment, 1)
    return template


def model_allowed(allowed: Collection[str], model: str) -> bool:
    """Whether a key whose ``models`` are ``allowed`` may use ``model`` (patterns included)."""
    if model in allowed:
        return True
    return any(is_pattern(a) and compile_pattern(a).fullmatch(model) is not None for a in allowed)


@dataclass(slots=True, frozen=True)
class _Pattern:
    name: str
    regex: re.Pattern[str]


@dataclass(slots=True)
class _Resolved:
    """A requested name and the concrete deployments serving it (upstream model filled in)."""

    pattern: str
    deployments: dict[str, Deployment]
    groups: dict[Operation, ModelGroup | None]


class WildcardRoutes:
    """The wildcard entries of a router, and the names resolved through them so far."""

    def __init__(self, patterns: list[str], serving: Mapping[Operation, Mapping[str, ModelGroup]]) -> None:
        # Longest first, then most wildcards; sorted() is stable, so config order breaks ties.
        ordered = sorted(patterns, key=lambda p: (len(p), p.count(WILDCARD)), reverse=True)
        self.patterns = [_Pattern(p, compile_pattern(p)) for p in ordered]
        self.serving = serving
        self._resolved: dict[str, _Resolved | None] = {}

    @classmethod
    def build(
        cls, names: Collection[str], serving: Mapping[Operation, Mapping[str, ModelGroup]]
    ) -> WildcardRoutes | None:
        """The routes for the pattern names among ``names``; None when there are none."""
        patterns = [n for n in names if is_pattern(n)]
        return cls(patterns, serving) if patterns else None

    def match(self, name: str) -> str | None:
        """The pattern serving ``name`` (the caller has checked exact names first), or None."""
        resolved = self._resolve(name)
        return resolved.pattern if resolved is not None else None

    def group(self, name: str, operation: Operation) -> ModelGroup | None:
        """The deployments serving ``name`` for ``operation``, with ``name``'s upstream model."""
        resolved = self._resolve(name)
        if resolved is None:
            return None
        groups = resolved.groups
        if operation in groups:
            return groups[operation]
        base = self.serving[operation].get(resolved.pattern)
        view = None
        if base is not None:
            view = base.view(name, {d.id: resolved.deployments[d.id] for d in base.deployments})
        groups[operation] = view
        return view

    def _resolve(self, name: str) -> _Resolved | None:
        if name in self._resolved:
            return self._resolved[name]
        resolved = None
        for pattern in self.patterns:
            m = pattern.regex.fullmatch(name)
            if m is None:
                continue
            segments = m.groups()
            deployments: dict[str, Deployment] = {}
            for op_groups in self.serving.values():
                base = op_groups.get(pattern.name)
                for state in base.deployments if base is not None else ():
                    if state.id not in deployments:
                        dep: Deployment = state.deployment
                        upstream = upstream_for(dep.upstream_model, segments, name)
                        deployments[state.id] = dataclasses.replace(dep, upstream_model=upstream)
            resolved = _Resolved(pattern.name, deployments, {})
            break
        if len(self._resolved) >= MAX_RESOLVED:
            self._resolved.clear()
        self._resolved[name] = resolved
        return resolved
