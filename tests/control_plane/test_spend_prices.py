"""The bundled price table and per-deployment overrides from the config."""

from __future__ import annotations

import pytest

from gateway.config import parse_config
from gateway.pipeline import Usage
from gateway.spend.prices import PriceTable


def test_price_table_bundled_prices_and_deployment_overrides() -> None:
    usage = Usage(prompt_tokens=1000, completion_tokens=100)
    bundled = PriceTable()
    assert bundled.cost(deployment_id=None, provider_model="openai/gpt-4o", model="alias", usage=usage) == (
        pytest.approx(1000 * 2.5e-6 + 100 * 1e-5)
    )
    assert (
        bundled.cost(deployment_id=None, provider_model="openai/unknown", model="unknown", usage=usage) == 0
    )
    config = parse_config(
        "model_list:\n"
        "  - model_name: cheap\n"
        "    litellm_params: {model: openai/gpt-4o, api_key: x, input_cost_per_token: 1.0e-9,"
        " output_cost_per_token: 2.0e-9}\n"
        "    model_info: {id: dep-cheap}\n"
    )
    table = PriceTable.from_config(config)
    assert table.cost(
        deployment_id="dep-cheap", provider_model="openai/gpt-4o", model="cheap", usage=usage
    ) == (pytest.approx(1000 * 1e-9 + 100 * 2e-9))
