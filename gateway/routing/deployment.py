"""One configured upstream deployment: a model name callers use, backed by a provider model."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.pipeline import Usage
from providers.contract import ProviderCall
from providers.registry import DEFAULT_API_BASES, split_provider

if TYPE_CHECKING:
    from gateway.config import ModelEntry


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
    order: int = 0
    input_cost_per_token: float = 0.0
    output_cost_per_token: float = 0.0

    @property
    def provider_model(self) -> str:
        """``"<provider>/<upstream model>"`` as written in the config."""
        return f"{self.provider}/{self.upstream_model}"

    def cost(self, usage: Usage | None) -> float:
        if usage is None:
            return 0.0
        return (
            usage.prompt_tokens * self.input_cost_per_token
            + usage.completion_tokens * self.output_cost_per_token
        )

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
        dep_id = entry.model_info.id if entry.model_info and entry.model_info.id else None
        if dep_id is None:
            digest = hashlib.sha256(f"{entry.model_name}\0{p.model}\0{api_base or ''}".encode()).hexdigest()
            dep_id = digest[:16]
        return cls(
            id=dep_id,
            model_name=entry.model_name,
            provider=provider,
            upstream_model=upstream,
            params=p.model_dump(exclude_none=True),
            api_base=api_base,
            api_key=p.api_key,
            timeout=p.timeout if p.timeout is not None else default_timeout,
            stream_timeout=p.stream_timeout,
            weight=p.weight if p.weight is not None else 1.0,
            rpm=p.rpm,
            tpm=p.tpm,
            max_parallel_requests=p.max_parallel_requests,
            order=p.order if p.order is not None else 0,
            input_cost_per_token=p.input_cost_per_token or 0.0,
            output_cost_per_token=p.output_cost_per_token or 0.0,
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
