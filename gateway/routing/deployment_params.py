"""A deployment's request defaults and dropped parameters (``litellm_params``), applied per call.

LiteLLM merges a deployment's ``litellm_params`` under the request's own arguments
(``completion(**{**deployment_params, **request_kwargs})``): ``temperature: 0.2`` on a deployment
is used when the caller sends no ``temperature``, and the caller's value wins when it does. Then
``additional_drop_params`` removes the named top-level fields before the request goes upstream
(e.g. ``[temperature]`` for a model that refuses it). Only the OpenAI request fields below count
as defaults, per operation (an embeddings call gets no ``temperature``); other params (``api_key``,
``region_name``, ...) are the adapter's business and never enter the body.

Raw path (OpenAI-format doors): a shallow copy of the caller's body with the defaults under it and
the dropped fields removed; the caller's body is never changed, since a retry on another
deployment reuses it. Typed path (``/v1/messages``, ``/v1/responses``): the ``GenerationRequest``
slots the caller left empty are filled (``max_tokens``, ``temperature``, ``top_p``, ``seed``,
``stop``, ``user``, ``reasoning`` from ``reasoning_effort``); fields without a slot cannot be
expressed there and are not added. Dropped names clear the slot or the ``extra`` field.

Built once at config load; a deployment with neither defaults nor drops has no ``RequestShaper``
and its requests are not touched (no copy).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from providers.contract import Operation
from providers.schema import GenerationRequest

if TYPE_CHECKING:
    from gateway.routing.router import Invocation

# The OpenAI request fields a deployment may default, per operation
# (https://platform.openai.com/docs/api-reference/chat/create, .../completions/create,
# .../embeddings/create). ``tools``/``tool_choice``/``parallel_tool_calls`` are left out: OpenAI
# refuses a tool setting on a request without tools.
DEFAULT_FIELDS: dict[Operation, frozenset[str]] = {
    "chat": frozenset(
        {
            "temperature",
            "top_p",
            "n",
            "stop",
            "max_tokens",
            "max_completion_tokens",
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
            "logprobs",
            "top_logprobs",
            "user",
            "response_format",
            "seed",
            "reasoning_effort",
            "service_tier",
        }
    ),
    "completions": frozenset(
        {
            "temperature",
            "top_p",
            "n",
            "stop",
            "max_tokens",
            "presence_penalty",
            "frequency_penalty",
            "logit_bias",
            "user",
            "seed",
            "best_of",
            "echo",
            "suffix",
        }
    ),
    "embeddings": frozenset({"dimensions", "encoding_format", "user"}),
}

# GenerationRequest slots a dropped name clears, and the value meaning "not set".
_SLOT_EMPTY: dict[str, Any] = {
    "temperature": None,
    "top_p": None,
    "max_tokens": None,
    "seed": None,
    "user": None,
    "stop": [],
    "tool_choice": None,
    "parallel_tool_calls": None,
    "response_format": None,
    "reasoning": None,
}
_DROP_ALIASES = {"max_completion_tokens": "max_tokens", "reasoning_effort": "reasoning"}


def _typed_defaults(chat: Mapping[str, Any]) -> dict[str, Any]:
    """The chat defaults that have a ``GenerationRequest`` slot, in the slot's own shape."""
    out: dict[str, Any] = {}
    for slot in ("temperature", "top_p", "seed", "user"):
        if slot in chat:
            out[slot] = chat[slot]
    tokens = chat.get("max_tokens", chat.get("max_completion_tokens"))
    if tokens is not None:
        out["max_tokens"] = tokens
    stop = chat.get("stop")
    if stop:
        out["stop"] = [stop] if isinstance(stop, str) else list(stop)
    effort = chat.get("reasoning_effort")
    if effort is not None:
        out["reasoning"] = {"effort": effort}
    return out


@dataclass(slots=True, frozen=True)
class RequestShaper:
    """What one deployment adds to and removes from every request sent to it."""

    defaults: dict[Operation, dict[str, Any]]
    drop: tuple[str, ...]
    typed_defaults: dict[str, Any]
    typed_drop_slots: tuple[str, ...]

    @classmethod
    def build(cls, params: Mapping[str, Any], drop: Sequence[str] = ()) -> RequestShaper | None:
        """From a deployment's params; None when they set no default and drop nothing."""
        defaults: dict[Operation, dict[str, Any]] = {}
        for op, names in DEFAULT_FIELDS.items():
            values = {k: v for k, v in params.items() if k in names and v is not None}
            if values:
                defaults[op] = values
        if not defaults and not drop:
            return None
        slots = {_DROP_ALIASES.get(name, name) for name in drop}
        return cls(
            defaults=defaults,
            drop=tuple(drop),
            typed_defaults=_typed_defaults(defaults.get("chat", {})),
            typed_drop_slots=tuple(s for s in _SLOT_EMPTY if s in slots),
        )

    def shape(self, inv: Invocation) -> Invocation:
        """``inv`` for this deployment (a new one; ``inv`` and its body/request are left as they are)."""
        if inv.request is not None:
            return dataclasses.replace(inv, request=self.shape_request(inv.request))
        if inv.body is None:
            return inv
        return dataclasses.replace(inv, body=self.shape_body(inv.operation, inv.body))

    def shape_body(self, operation: Operation, body: Mapping[str, Any]) -> dict[str, Any]:
        defaults = self.defaults.get(operation)
        out = {**defaults, **body} if defaults else dict(body)
        for name in self.drop:
            out.pop(name, None)
        return out

    def shape_request(self, request: GenerationRequest) -> GenerationRequest:
        changes: dict[str, Any] = {}
        for slot, value in self.typed_defaults.items():
            current = getattr(request, slot)
            if current is None or current == []:
                # A copy: a list or dict shared by every request must not be changed through one.
                changes[slot] = type(value)(value) if isinstance(value, (list, dict)) else value
        for slot in self.typed_drop_slots:
            changes[slot] = _SLOT_EMPTY[slot]
        dropped = [name for name in self.drop if name in request.extra]
        if dropped:
            changes["extra"] = {k: v for k, v in request.extra.items() if k not in dropped}
        return dataclasses.replace(request, **changes) if changes else request
