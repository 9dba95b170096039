"""What a request costs: a bundled per-token price table, overridable per deployment."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

from gateway.pipeline import Usage


@dataclass(frozen=True, slots=True)
class Price:
    input_per_token: float
    output_per_token: float

    def cost(self, usage: Usage) -> float:
        return usage.prompt_tokens * self.input_per_token + usage.completion_tokens * self.output_per_token


def _bundled() -> dict[str, Price]:
    raw = json.loads(resources.files("gateway.spend").joinpath("prices.json").read_text())
    return {name: Price(*pair) for name, pair in raw.items() if not name.startswith("_")}


class PriceTable:
    """Per-token prices: deployment overrides first, then the bundled table; unknown models are free."""

    def __init__(self, deployment_prices: dict[str, Price] | None = None) -> None:
        self._models = _bundled()
        self._deployments = dict(deployment_prices or {})

    def price(self, *, deployment_id: str | None, provider_model: str | None, model: str) -> Price | None:
        for override in (deployment_id, provider_model):
            if override is not None and override in self._deployments:
                return self._deployments[override]
        for name in (provider_model, model):
            if not name:
                continue
            found = self._models.get(name) or self._models.get(name.split("/", 1)[-1])
            if found is not None:
                return found
        return None

    def cost(
        self, *, deployment_id: str | None, provider_model: str | None, model: str, usage: Usage
    ) -> float:
        found = self.price(deployment_id=deployment_id, provider_model=provider_model, model=model)
        return 0.0 if found is None else found.cost(usage)

    @classmethod
    def from_config(cls, config: object) -> PriceTable:
        """Deployment overrides from a ``GatewayConfig``'s ``model_list`` (keyed by ``model_info.id``)."""
        overrides: dict[str, Price] = {}
        for entry in getattr(config, "model_list", []) or []:
            params = entry.params
            if params.input_cost_per_token is None and params.output_cost_per_token is None:
                continue
            deployment_id = entry.model_info.id if entry.model_info and entry.model_info.id else None
            price = Price(params.input_cost_per_token or 0.0, params.output_cost_per_token or 0.0)
            # Keyed by id when there is one; by the upstream model name as well so either lookup works.
            if deployment_id:
                overrides[deployment_id] = price
            overrides.setdefault(params.model, price)
        return cls(overrides)
