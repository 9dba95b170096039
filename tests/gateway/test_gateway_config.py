"""Config parsing: LiteLLM compatibility, environment references, errors with file lines."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, GatewayConfig, parse_config
from gateway.errors import GatewayError, as_gateway_error
from gateway.routing.deployment import deployments_from_entries
from providers.errors import ProviderError


def test_embedded_defaults() -> None:
    config = GatewayConfig()
    assert config.model_list == []
    assert config.general_settings.max_request_body_mb == 10
    assert config.general_settings.data_dir == ".switchyard"
    assert config.router_settings.routing_strategy == "simple-shuffle"


def test_litellm_file_works_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_KEY", "sk-from-env")
    config = parse_config(
        """
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/UPSTREAM_KEY
      rpm: 100
      custom_llm_thing: kept
    model_info:
      id: dep-a
  - model_name: gpt-4o
    litellm_params:
      model: azure_like/gpt-4o
      api_base: http://127.0.0.1:9/v1
router_settings:
  routing_strategy: least-busy
litellm_settings:
  num_retries: 4
  drop_params: true
  cache: true
  cache_params:
    type: redis
    ttl: 30
""".replace("azure_like", "hosted_vllm")
    )
    deps = deployments_from_entries(config.model_list)
    assert deps[0].id == "dep-a"
    assert deps[0].api_key == "sk-from-env"
    assert deps[0].rpm == 100
    assert deps[0].params["custom_llm_thing"] == "kept"
    assert deps[1].provider == "hosted_vllm" and deps[1].upstream_model == "gpt-4o"
    assert config.router_settings.num_retries == 4
    assert config.cache_settings.enabled is True
    assert config.cache_settings.ttl == 30


def test_missing_env_var_names_field_and_line() -> None:
    text = (
        "model_list:\n  - model_name: a\n    params:\n      model: openai/x\n"
        "      api_key: os.environ/SY_NOPE_1\n"
    )
    with pytest.raises(ConfigError, match=r"c.yaml:5: model_list\[0\].params.api_key: .*SY_NOPE_1"):
        parse_config(text, "c.yaml")


def test_unknown_provider_and_typo_at_top_level() -> None:
    # An unknown provider disables its deployment with a warning; --strict refuses it.
    text = "model_list:\n  - model_name: a\n    params:\n      model: nope/x\n"
    config = parse_config(text, "c.yaml")
    assert config.model_list == [] and [d.model for d in config.disabled] == ["nope/x"]
    assert config.warnings[0].startswith(
        "c.yaml:4: model_list[0].params.model: provider 'nope' is not available"
    )
    with pytest.raises(ConfigError, match=r"c.yaml:4: model_list\[0\].params.model: provider 'nope'"):
        parse_config(text, "c.yaml", strict=True)
    with pytest.raises(ConfigError, match=r"c.yaml:2: modle_list: unknown field"):
        parse_config("general_settings: {}\nmodle_list: []\n", "c.yaml")
    with pytest.raises(ConfigError, match=r"c.yaml:2: cache_settings.ttl"):
        parse_config("cache_settings:\n  ttl: -1\n", "c.yaml")


def test_errors_are_openai_shaped_without_internals() -> None:
    err = as_gateway_error(RuntimeError("secret internals at /srv/x.py line 3"))
    assert err.status == 500
    assert b"secret" not in err.body()
    upstream = as_gateway_error(ProviderError(429, "slow down", "rate_limit_error", retry_after=2.0))
    assert (upstream.status, upstream.message, upstream.headers["retry-after"]) == (429, "slow down", "2")
    assert isinstance(as_gateway_error(GatewayError(404, "x")), GatewayError)


def test_config_example_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from gateway.config import load_config

    monkeypatch.setenv("SWITCHYARD_MASTER_KEY", "sk-example")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    config = load_config(Path(__file__).resolve().parents[2] / "config.example.yaml")
    assert [e.model_name for e in config.model_list] == ["gpt-4o-mini", "gpt-4o-mini"]
    assert config.general_settings.master_key == "sk-example"
    # A section with every field commented out is empty, not an error.
    assert parse_config("limit_settings:\ncache_settings:\n").cache_settings.enabled is False
