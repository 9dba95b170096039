"""One configured upstream deployment: a model name callers use, backed by a provider model.

Of a deployment's params, the router itself uses the routing fields (``weight``, ``rpm``, ``tpm``,
``order``, ``timeout``, ``stream_timeout``, ...); request defaults and ``additional_drop_params``
become its ``RequestShaper`` (``deployment_params``); ``organization`` becomes an
``OpenAI-Organization`` header (in ``params["extra_headers"]``) on OpenAI-compatible providers.
Every param (``drop_params``, ``extra_headers``, ``api_version``, ``region_name``, ...) reaches the
adapter in ``ProviderCall.params``. ``max_retries`` is the router's: a retryable failure is retried
on the same deployment that many times (as LiteLLM's client would) before the router moves on.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.pipeline import Usage
from gateway.routing.context_window import NO_LIMIT, context_limit
from gateway.routing.deployment_params import RequestShaper
from gateway.spend.prices import Price, count_unpriced, deployment_card, own_price
from providers.contract import ProviderCall
from providers.registry import DEFAULT_API_BASES, OPENAI_COMPATIBLE_PROVIDERS, split_provider

if TYPE_CHECKING:
    from gateway.config import ModelEntry

log = logging.getLogger("switchyard.routing")


@dataclass(slots=True)
class Deployment:
    """A ``model_list`` entry, flattened for the hot path.

    ``id`` is the config's ``model_info.id`` or a stable hash of (model_name, model, api_base),
    never of the key. ``params`` holds every field of the entry's params (provider-specific
    extras included) for adapters that need them.
    """

    id: str
    model_name: str
    provider: str  # registry prefix, e.g. "openai", "hosted_vllm", "local"
    upstream_model: str  # model name sent upstream
    params: dict[str, Any] = field(default_factory=dict, repr=False)
    api_base: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 600.0
    stream_timeout: float | None = None
    weight: float = 1.0
    rpm: int | None = None
    tpm: int | None = None
    max_parallel_requests: int | None = None
    # Retries of a retryable failure on this deployment before the router moves on (LiteLLM's
    # per-deployment ``max_retries``, its client's retries); the router's own retries come after.
    max_retries: int = 0
    order: int = 0
    # Per token, as the deployment sets them, else the price table's (cost-based routing reads them).
    input_cost_per_token: float = 0.0
    output_cost_per_token: float = 0.0
    # What spend bills (cache rates included): the deployment's own prices when its params set them,
    # else the price table's for its model; None when neither knows it (spend 0, warned, counted).
    price: Price | None = field(default=None, repr=False)
    # The model's input limit, and the request estimate past which a request certainly cannot fit
    # (gateway.routing.context_window; NO_LIMIT when unknown): the router's pre-call check.
    max_input_tokens: int | None = None
    context_limit: int = NO_LIMIT
    # model_info, for the table lookup (``base_model``) and window overrides (``max_input_tokens``).
    model_info: dict[str, Any] = field(default_factory=dict, repr=False)
    # None when the params set no request default and drop nothing: requests go as they came.
    shaper: RequestShaper | None = field(default=None, repr=False)

    @property
    def provider_model(self) -> str:
        """``"<provider>/<upstream model>"`` as written in the config."""
        return f"{self.provider}/{self.upstream_model}"

    def __post_init__(self) -> None:
        # Here rather than in ``from_entry`` so that the deployments a wildcard entry makes for each
        # requested name (``dataclasses.replace`` with that upstream model) find their own model.
        if "*" in self.upstream_model or (self.price is not None and self.max_input_tokens):
            return
        card = deployment_card(self.provider, self.upstream_model, self.params, self.model_info)
        if self.price is None and card is not None and card.price is not None:
            self.price = card.price
            self.input_cost_per_token = card.price.input_per_token
            self.output_cost_per_token = card.price.output_per_token
        if not self.max_input_tokens:
            info = self.model_info
            self.max_input_tokens = info.get("max_input_tokens") or (card.max_input_tokens if card else None)
            max_output = info.get("max_output_tokens") or (card.max_output_tokens if card else None)
            self.context_limit = context_limit(self.max_input_tokens, max_output)

    def cost(self, usage: Usage | None) -> float:
        if usage is None:
            return 0.0
        price = self.price
        if price is None:
            if usage.prompt_tokens or usage.completion_tokens:
                count_unpriced(self.provider_model)
            return 0.0
        return price.cost(usage)

    def provider_call(self, body: dict[str, Any], request_id: str = "") -> ProviderCall:
        """The adapter call for this deployment."""
        return ProviderCall(
            upstream_model=self.upstream_model,
            body=body,
            api_base=self.api_base,
            api_key=self.api_key,
            timeout=self.timeout,
            stream_timeout=self.stream_timeout,
            request_id=request_id,
            params=self.params,
        )

    @classmethod
    def from_entry(cls, entry: ModelEntry, default_timeout: float = 600.0) -> Deployment:
        p = entry.params
        provider, upstream = split_provider(p.model)
        api_base = p.api_base or DEFAULT_API_BASES.get(provider)
        params = p.model_dump(exclude_none=True)
        if p.organization and provider in OPENAI_COMPATIBLE_PROVIDERS:
            # OpenAI's header for the organization a request is billed to; the adapter sends
            # params["extra_headers"] already, and an explicit one of the same name wins.
            params["extra_headers"] = {"OpenAI-Organization": p.organization, **(p.extra_headers or {})}
        dep_id = entry.model_info.id if entry.model_info and entry.model_info.id else None
        price = own_price(params)
        if dep_id is None:
            digest = hashlib.sha256(f"{entry.model_name}\0{p.model}\0{api_base or ''}".encode()).hexdigest()
            dep_id = digest[:16]
        return cls(
            id=dep_id,
            model_name=entry.model_name,
            provider=provider,
            upstream_model=upstream,
            params=params,
            api_base=api_base,
            api_key=p.api_key,
            timeout=p.timeout if p.timeout is not None else default_timeout,
            stream_timeout=p.stream_timeout,
            weight=p.weight if p.weight is not None else 1.0,
            rpm=p.rpm,
            tpm=p.tpm,
            max_parallel_requests=p.max_parallel_requests,
            max_retries=p.max_retries or 0,
            order=p.order if p.order is not None else 0,
            input_cost_per_token=price.input_per_token if price else 0.0,
            output_cost_per_token=price.output_per_token if price else 0.0,
            price=price,
            model_info=entry.model_info.model_dump(exclude_none=True) if entry.model_info else {},
            shaper=RequestShaper.build(params, p.additional_drop_params or ()),
        )


def deployments_from_entries(entries: list[ModelEntry], default_timeout: float = 600.0) -> list[Deployment]:
    """All deployments of a ``model_list``; identical generated ids get a ``-2``, ``-3``... suffix."""
    seen: dict[str, int] = {}
    out: list[Deployment] = []
    for entry in entries:
        dep = Deployment.from_entry(entry, default_timeout)
        n = seen.get(dep.id, 0) + 1
        seen[dep.id] = n
        if n > 1:
            dep.id = f"{dep.id}-{n}"
        out.append(dep)
    return out
