"""The model table: LiteLLM's cost map imported, looked up per provider, and billed by a real gateway.

The importer runs as its documented command on a small sample in LiteLLM's format; lookups run
on the shipped table; a real ``switchyard serve`` against the fake OpenAI and Anthropic upstreams
writes spend rows at the table's prices (cache reads and writes at their own rates), and an
unknown model is spent at 0 with one warning and a counter.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway.config import parse_config
from gateway.pipeline import Usage
from gateway.routing.deployment import deployments_from_entries
from gateway.spend.prices import FIELDS, ModelTable, Price, bundled
from providers.registry import ProviderRegistry
from tests.support import fake_anthropic
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_app import MASTER_KEY, keyed_gateway, new_key
from tests.support.gateway_process import REPO, GatewayProcess
from tests.support.spend_rows import spend_rows

IMPORTER = REPO / "tools" / "prices" / "import_litellm.py"

# LiteLLM's format (model_prices_and_context_window.json), one entry per case the importer handles.
SAMPLE: dict[str, Any] = {
    "sample_spec": {"litellm_provider": "one of the providers", "max_tokens": "LEGACY", "mode": "chat"},
    "gpt-4o": {
        "litellm_provider": "openai",
        "mode": "chat",
        "max_input_tokens": 128000,
        "max_output_tokens": 16384,
        "input_cost_per_token": 2.5e-06,
        "output_cost_per_token": 1e-05,
        "cache_read_input_token_cost": 1.25e-06,
        "supports_vision": True,
        "input_cost_per_token_batches": 1.25e-06,
    },
    "azure/gpt-4o": {"litellm_provider": "azure", "mode": "chat", "input_cost_per_token": 2.75e-06},
    "claude-x-1": {
        "litellm_provider": "anthropic",
        "mode": "chat",
        "max_input_tokens": 200000,
        "max_output_tokens": 64000,
        "input_cost_per_token": 3e-06,
        "output_cost_per_token": 1.5e-05,
        "cache_read_input_token_cost": 3e-07,
        "cache_creation_input_token_cost": 3.75e-06,
    },
    "anthropic.claude-x-1-v1:0": {
        "litellm_provider": "bedrock_converse",
        "mode": "chat",
        "input_cost_per_token": 3e-06,
        "output_cost_per_token": 1.5e-05,
    },
    "bedrock/eu-west-1/anthropic.claude-x-1-v1:0": {
        "litellm_provider": "bedrock",
        "mode": "chat",
        "input_cost_per_token": 3.3e-06,
        "output_cost_per_token": 1.65e-05,
    },
    "gemini-9-pro": {
        "litellm_provider": "vertex_ai-language-models",
        "mode": "chat",
        "max_input_tokens": 1000,
    },
    # The same model twice for vertex_ai: the entry that knows more wins.
    "vertex_ai/gemini-9-pro": {
        "litellm_provider": "vertex_ai",
        "mode": "chat",
        "max_input_tokens": 1048576,
        "max_output_tokens": 65536,
        "input_cost_per_token": 1.25e-06,
        "output_cost_per_token": 1e-05,
    },
    "command-r9": {"litellm_provider": "cohere_chat", "mode": "chat", "input_cost_per_token": 1.5e-07},
    "text-davinci-9": {
        "litellm_provider": "text-completion-openai",
        "mode": "completion",
        "max_tokens": 4097,
    },
    "ollama/llama9": {"litellm_provider": "ollama", "mode": "chat", "max_input_tokens": 8192},
    "dall-e-9": {"litellm_provider": "openai", "mode": "image_generation", "output_cost_per_image": 0.04},
    "whisper-9": {
        "litellm_provider": "openai",
        "mode": "audio_transcription",
        "input_cost_per_second": 0.0001,
    },
    "web-search-9": {"litellm_provider": "perplexity", "mode": "search", "input_cost_per_query": 0.005},
    "broken": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": "free"},
}


def run_importer(source: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(IMPORTER), str(source), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_importer_converts_litellm_format_to_our_keys_and_fields(tmp_path: Path) -> None:
    source, out = tmp_path / "model_prices_and_context_window.json", tmp_path / "prices.json"
    source.write_text(json.dumps(SAMPLE))
    done = run_importer(source, out, "--version", "9.9.9", "--date", "2031-01-02")
    assert done.returncode == 0, done.stderr

    data = json.loads(out.read_text())
    meta = data["_meta"]
    assert meta["litellm_version"] == "9.9.9" and meta["date"] == "2031-01-02"
    assert meta["license"].startswith("MIT") and "BerriAI/litellm" in meta["source"]
    assert meta["fields"] == list(FIELDS) and meta["entries"] == len(data["models"])
    assert sorted(data["models"]) == [
        "anthropic/claude-x-1",
        "azure/gpt-4o",
        "bedrock/anthropic.claude-x-1-v1:0",
        "bedrock/eu-west-1/anthropic.claude-x-1-v1:0",
        "cohere/command-r9",
        "ollama/llama9",
        "openai/dall-e-9",
        "openai/gpt-4o",
        "openai/whisper-9",
        "vertex_ai/gemini-9-pro",
    ]
    # Positional, trailing unknowns dropped; fields we do not use (batches, vision) are gone.
    assert data["models"]["openai/gpt-4o"] == ["chat", 128000, 16384, 2.5e-06, 1e-05, 1.25e-06]
    assert data["models"]["vertex_ai/gemini-9-pro"] == ["chat", 1048576, 65536, 1.25e-06, 1e-05]

    table = ModelTable.load(out)
    claude = table.card("anthropic/claude-x-1")
    assert claude is not None and claude.price == Price(3e-06, 1.5e-05, 3e-07, 3.75e-06)
    assert (claude.max_input_tokens, claude.max_output_tokens) == (200000, 64000)
    dalle, whisper = table.card("openai/dall-e-9"), table.card("openai/whisper-9")
    assert dalle is not None and dalle.output_cost_per_image == 0.04 and dalle.price is None
    assert (
        whisper is not None
        and whisper.input_cost_per_second == 0.0001
        and whisper.mode == "audio_transcription"
    )

    # A file that is not LiteLLM's format: a clear line and a non-zero exit, nothing written.
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    refused = run_importer(bad, tmp_path / "other.json")
    assert refused.returncode == 1 and "not a JSON object of models" in refused.stderr
    assert not (tmp_path / "other.json").exists()


def test_lookup_fallbacks_for_how_deployments_name_models() -> None:
    row = ["chat", 1000, 100, 1e-06, 2e-06]
    table = ModelTable(
        {
            key: row
            for key in (
                "openai/gpt-9",
                "azure/gpt-9",
                "bedrock/anthropic.claude-9-v1:0",
                "bedrock/us-east-1/anthropic.claude-9-v1:0",
                "vertex_ai/claude-9",
                "ollama/llama9",
                "cohere/command-9",
                "groq/openai/gpt-oss-9",
            )
        }
    )

    def key(provider: str, model: str, **kw: Any) -> str | None:
        card = table.lookup(provider, model, **kw)
        return None if card is None else card.key

    assert key("openai", "gpt-9") == "openai/gpt-9"
    # Azure: the deployment's name means nothing to the table; model_info.base_model does.
    assert key("azure", "prod-east", base_model="azure/gpt-9") == "azure/gpt-9"
    assert key("azure", "prod-east", base_model="gpt-9") == "azure/gpt-9"
    assert key("azure", "prod-east") is None
    assert key("azure_ai", "gpt-9") == "openai/gpt-9"
    # Bedrock: cross-region profiles, LiteLLM's route prefixes, regional prices first.
    assert key("bedrock", "us.anthropic.claude-9-v1:0") == "bedrock/anthropic.claude-9-v1:0"
    assert key("bedrock", "converse/eu.anthropic.claude-9-v1:0") == "bedrock/anthropic.claude-9-v1:0"
    assert key("bedrock", "anthropic.claude-9-v1:0", region="us-east-1") == (
        "bedrock/us-east-1/anthropic.claude-9-v1:0"
    )
    assert key("bedrock", "anthropic.claude-9-v1:0", region="ap-south-1") == "bedrock/anthropic.claude-9-v1:0"
    assert key("vertex_ai", "claude-9@20990101") == "vertex_ai/claude-9"
    assert key("ollama_chat", "llama9:70b") == "ollama/llama9"
    assert key("cohere_chat", "command-9") == "cohere/command-9"
    assert key("groq", "openai/gpt-oss-9") == "groq/openai/gpt-oss-9"
    assert key("openai", "gpt-10") is None


def test_shipped_table_covers_every_provider_with_litellm_attribution() -> None:
    table = bundled()
    assert len(table) > 3000
    meta = table.meta
    assert meta["license"].startswith("MIT") and meta["litellm_version"] != "unknown"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", meta["date"])
    prefixes = {key.split("/", 1)[0] for key in table}
    # Every registered provider that bills per model has entries; the rest serve whatever model
    # the operator runs (no table can know it) or are aliases of a table prefix.
    generic = {"openai_compatible", "hosted_vllm", "vllm", "lm_studio", "local", "openrouter"}
    aliases = {"cohere_chat", "ollama_chat"}
    missing = set(ProviderRegistry.default().names()) - generic - aliases - prefixes
    assert not missing

    for provider, model in [
        ("openai", "gpt-4o"),
        ("anthropic", "claude-sonnet-4-5-20250929"),
        ("gemini", "gemini-2.5-pro"),
        ("vertex_ai", "gemini-2.5-pro"),
        ("vertex_ai", "claude-sonnet-4-5@20250929"),
        ("bedrock", "us.anthropic.claude-3-5-sonnet-20240620-v1:0"),
        ("bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0"),
        ("azure", "gpt-4o"),
        ("mistral", "mistral-large-latest"),
        ("cohere_chat", "command-r-plus-08-2024"),
        ("ollama", "llama3"),
    ]:
        card = table.lookup(provider, model)
        assert card is not None, f"{provider}/{model}"
        assert card.price is not None and card.max_input_tokens, card
    sonnet = table.lookup("anthropic", "claude-sonnet-4-5-20250929")
    assert sonnet is not None and sonnet.price is not None
    assert sonnet.price.cache_read_per_token and sonnet.price.cache_write_per_token


def test_deployments_take_their_own_price_else_the_table_wildcards_included() -> None:
    config = parse_config(
        "model_list:\n"
        "  - model_name: own\n"
        "    litellm_params: {model: openai/gpt-4o, api_key: x, input_cost_per_token: 1.0e-9,"
        " output_cost_per_token: 2.0e-9}\n"
        "  - model_name: azure-prod\n"
        "    litellm_params: {model: azure/prod-east-1, api_key: x, api_base: 'https://x.openai.azure.com'}\n"
        "    model_info: {base_model: azure/gpt-4o, max_input_tokens: 5000}\n"
        "  - model_name: '*'\n"
        "    litellm_params: {model: 'anthropic/*', api_key: x}\n"
    )
    own, azure, wildcard = deployments_from_entries(config.model_list)
    assert own.price == Price(1e-9, 2e-9) and own.max_input_tokens == 128000
    table_azure = bundled().card("azure/gpt-4o")
    assert table_azure is not None and azure.price == table_azure.price
    assert azure.input_cost_per_token == table_azure.price.input_per_token  # cost-based routing sees it
    assert azure.max_input_tokens == 5000  # model_info wins over the table
    assert wildcard.price is None
    # What the wildcard entry serves a requested name with is priced for that name's model.
    concrete = dataclasses.replace(wildcard, upstream_model=CLAUDE)
    table_claude = bundled().card(f"anthropic/{CLAUDE}")
    assert table_claude is not None and concrete.price == table_claude.price
    assert concrete.max_input_tokens == table_claude.max_input_tokens


def test_cache_tokens_are_billed_at_their_own_rates() -> None:
    usage = Usage(prompt_tokens=1000, completion_tokens=10, cache_read_tokens=600, cache_write_tokens=300)
    price = Price(1e-06, 5e-06, 1e-07, 1.25e-06)
    assert price.cost(usage) == pytest.approx(100 * 1e-06 + 600 * 1e-07 + 300 * 1.25e-06 + 10 * 5e-06)
    # A provider without cache prices: cached input is plain input.
    assert Price(1e-06, 5e-06).cost(usage) == pytest.approx(1000 * 1e-06 + 10 * 5e-06)


# ---- a real gateway --------------------------------------------------------------------------------

UPSTREAM_KEY = "sk-ant-price-test"
CLAUDE = "claude-sonnet-4-5-20250929"


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[FakeOpenAI, FakeAnthropic]]:
    with FakeOpenAI() as oai, FakeAnthropic(api_key=UPSTREAM_KEY) as ant:
        yield oai, ant


@pytest.fixture(scope="module")
def priced_gateway(
    upstreams: tuple[FakeOpenAI, FakeAnthropic], database_url: str
) -> Iterator[GatewayProcess]:
    oai, ant = upstreams
    openai_params = {"api_base": oai.base_url, "api_key": "sk-upstream-fake"}
    config = {
        "model_list": [
            # No price configured: the table's.
            {"model_name": "table-gpt", "litellm_params": {"model": "openai/gpt-4o", **openai_params}},
            {
                "model_name": "table-claude",
                "litellm_params": {
                    "model": f"anthropic/{CLAUDE}",
                    "api_base": ant.base_url,
                    "api_key": UPSTREAM_KEY,
                },
            },
            # Known to no one: spent at 0, warned once, counted.
            {"model_name": "mystery", "litellm_params": {"model": "openai/mystery-model-7", **openai_params}},
        ],
        "general_settings": {"master_key": MASTER_KEY, "spend_flush_interval_s": 0.1},
    }
    with keyed_gateway(config, database_url) as gw:
        yield gw


def _price(model: str) -> Price:
    card = bundled().card(model)
    assert card is not None and card.price is not None
    return card.price


def test_spend_rows_bill_the_table_price_for_models_without_one(
    priced_gateway: GatewayProcess, upstreams: tuple[FakeOpenAI, FakeAnthropic], database_url: str
) -> None:
    _, ant = upstreams
    created = new_key(priced_gateway)
    client = openai.OpenAI(base_url=priced_gateway.base_url + "/v1", api_key=created["key"], max_retries=0)
    plain = client.chat.completions.create(model="table-gpt", messages=[{"role": "user", "content": "hi"}])
    assert plain.usage is not None

    ant.set_behavior(
        fake_anthropic.Behavior(
            input_tokens=40, output_tokens=9, cache_read_input_tokens=1000, cache_creation_input_tokens=200
        ),
        model=CLAUDE,
    )
    cached = anthropic.Anthropic(base_url=priced_gateway.base_url, api_key=created["key"], max_retries=0)
    answer = cached.messages.create(
        model="table-claude", max_tokens=50, messages=[{"role": "user", "content": "hello"}]
    )
    assert answer.usage.cache_read_input_tokens == 1000 and answer.usage.cache_creation_input_tokens == 200

    rows = spend_rows(database_url, created["token"], 2)
    assert len(rows) == 2
    gpt = _price("openai/gpt-4o")
    expected_gpt = (
        plain.usage.prompt_tokens * gpt.input_per_token + plain.usage.completion_tokens * gpt.output_per_token
    )
    assert float(rows[0]["spend"]) == pytest.approx(expected_gpt, rel=1e-9)
    claude = _price(f"anthropic/{CLAUDE}")
    assert claude.cache_read_per_token is not None and claude.cache_write_per_token is not None
    expected_claude = (
        40 * claude.input_per_token
        + 9 * claude.output_per_token
        + 1000 * claude.cache_read_per_token
        + 200 * claude.cache_write_per_token
    )
    assert rows[1]["prompt_tokens"] == 1240
    assert float(rows[1]["spend"]) == pytest.approx(expected_claude, rel=1e-9)
    # Billed as plain input, the cached tokens would have cost something else.
    plain_rate = 1240 * claude.input_per_token + 9 * claude.output_per_token
    assert float(rows[1]["spend"]) != pytest.approx(plain_rate, rel=1e-6)


def test_unknown_model_is_spent_at_zero_warned_once_and_counted(
    priced_gateway: GatewayProcess, database_url: str
) -> None:
    created = new_key(priced_gateway)
    client = openai.OpenAI(base_url=priced_gateway.base_url + "/v1", api_key=created["key"], max_retries=0)
    for _ in range(3):
        client.chat.completions.create(model="mystery", messages=[{"role": "user", "content": "hi"}])
    rows = spend_rows(database_url, created["token"], 3)
    assert [row["spend"] for row in rows] == [0, 0, 0]
    assert all(row["prompt_tokens"] > 0 for row in rows)
    warnings = [line for line in priced_gateway.logs().splitlines() if "no price known" in line]
    assert len(warnings) == 1 and "openai/mystery-model-7" in warnings[0], priced_gateway.logs()
    page = httpx.get(priced_gateway.base_url + "/metrics", timeout=10).text
    counted = re.search(r'switchyard_unpriced_requests_total\{model="openai/mystery-model-7"\} (\S+)', page)
    assert counted is not None and float(counted.group(1)) == 3.0
    assert 'switchyard_unpriced_requests_total{model="openai/gpt-4o"}' not in page
