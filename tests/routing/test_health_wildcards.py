"""``GET /health`` with wildcard deployments: a real gateway in front of a fake Anthropic API (whose
probe is a 1-token message, so it needs a concrete model) and a fake OpenAI API (probed with
``GET /models``, which needs none).

A wildcard's model (``anthropic/*``) is no model to send upstream: the full probe skips such a
deployment, saying so, and never sends ``*``; ``/health?model=<a name the wildcard serves>`` probes
it with that name as its upstream model.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.fake_anthropic import FakeAnthropic
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_app import MASTER_KEY
from tests.support.gateway_process import GatewayProcess, gateway_process


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeAnthropic, FakeOpenAI]]:
    with FakeAnthropic() as anthropic_fake, FakeOpenAI() as openai_fake:
        yield anthropic_fake, openai_fake


@pytest.fixture(scope="module")
def gw(fakes: tuple[FakeAnthropic, FakeOpenAI]) -> Iterator[GatewayProcess]:
    anthropic_fake, openai_fake = fakes
    config = {
        "model_list": [
            {
                "model_name": "anthropic/*",
                "litellm_params": {
                    "model": "anthropic/*",
                    "api_base": anthropic_fake.base_url,
                    "api_key": anthropic_fake.api_key,
                },
                "model_info": {"id": "anthropic-any"},
            },
            {
                "model_name": "*",
                "litellm_params": {"model": "openai/*", "api_base": openai_fake.base_url, "api_key": "sk-up"},
                "model_info": {"id": "openai-any"},
            },
        ],
        "general_settings": {"master_key": MASTER_KEY},
    }
    with gateway_process(config) as g:
        yield g


@pytest.fixture(autouse=True)
def _fresh(fakes: tuple[FakeAnthropic, FakeOpenAI]) -> None:
    fakes[0].reset()


def health(gw: GatewayProcess, **params: str) -> dict[str, Any]:
    r = httpx.get(
        gw.base_url + "/health",
        params=params,
        headers={"authorization": f"Bearer {MASTER_KEY}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_the_full_probe_skips_a_wildcard_that_needs_a_model(
    gw: GatewayProcess, fakes: tuple[FakeAnthropic, FakeOpenAI]
) -> None:
    report = health(gw)
    assert [e["id"] for e in report["healthy_endpoints"]] == ["openai-any"]  # GET /models: no model
    assert report["unhealthy_endpoints"] == []
    skipped = report["skipped_endpoints"]
    assert [(e["id"], e["model"]) for e in skipped] == [("anthropic-any", "anthropic/*")]
    assert "/health?model=" in skipped[0]["reason"]
    assert fakes[0].requests == []  # "*" was never sent upstream as a model


def test_a_name_a_wildcard_serves_probes_that_wildcard_with_the_name(
    gw: GatewayProcess, fakes: tuple[FakeAnthropic, FakeOpenAI]
) -> None:
    report = health(gw, model="anthropic/claude-3-5-haiku-20241022")
    assert [e["id"] for e in report["healthy_endpoints"]] == ["anthropic-any"]
    endpoint = report["healthy_endpoints"][0]
    assert endpoint["model_name"] == "anthropic/*"
    assert endpoint["model"] == "anthropic/claude-3-5-haiku-20241022"
    assert "skipped_endpoints" not in report
    assert [r.body["model"] for r in fakes[0].requests] == ["claude-3-5-haiku-20241022"]


def test_the_catch_all_serves_any_other_name(gw: GatewayProcess) -> None:
    report = health(gw, model="gpt-4o-mini")
    assert [(e["id"], e["model"]) for e in report["healthy_endpoints"]] == [
        ("openai-any", "openai/gpt-4o-mini")
    ]


def test_a_name_nothing_serves_is_still_a_404() -> None:
    # Every name matches the catch-all above, so this needs a gateway without one.
    config = {
        "model_list": [
            {
                "model_name": "vendor/*",
                "litellm_params": {"model": "openai/*", "api_base": "http://127.0.0.1:9"},
            }
        ],
        "general_settings": {"master_key": MASTER_KEY},
    }
    with gateway_process(config) as g:
        r = httpx.get(
            g.base_url + "/health",
            params={"model": "other/x"},
            headers={"authorization": f"Bearer {MASTER_KEY}"},
            timeout=30,
        )
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
