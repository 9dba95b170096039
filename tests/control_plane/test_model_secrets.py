"""Credentials of stored models: which params are secret, sealed and opened, masked in answers."""

from __future__ import annotations

import json

import pytest

from gateway.admin.model_secrets import MASKED, PREFIX, ParamCipher, SecretsUnavailable, is_secret, mask


@pytest.fixture(autouse=True)
def no_salt_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SWITCHYARD_SALT_KEY", "LITELLM_SALT_KEY"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize(
    "name",
    [
        "api_key",
        "aws_secret_access_key",
        "aws_access_key_id",
        "aws_session_token",
        "vertex_credentials",
        "client_secret",
        "Authorization",
        "azure_ad_token",
    ],
)
def test_credentials_are_secret(name: str) -> None:
    assert is_secret(name)


@pytest.mark.parametrize(
    "name", ["model", "api_base", "api_version", "rpm", "max_tokens", "input_cost_per_token", "region_name"]
)
def test_other_params_are_not(name: str) -> None:
    assert not is_secret(name)


PARAMS = {
    "model": "bedrock/claude",
    "api_key": "sk-very-secret",
    "aws_secret_access_key": "aws-very-secret",
    "vertex_credentials": {"type": "service_account", "private_key": "-----BEGIN very secret"},
    "extra_headers": {"Authorization": "Bearer header-secret", "X-Trace": "visible"},
    "rpm": 10,
}


def test_sealed_params_hold_no_secret_and_open_to_the_original() -> None:
    cipher = ParamCipher("sk-master")
    sealed = cipher.seal(PARAMS)
    text = json.dumps(sealed)
    for secret in ("sk-very-secret", "aws-very-secret", "BEGIN very secret", "header-secret"):
        assert secret not in text
    assert sealed["api_key"].startswith(PREFIX) and sealed["extra_headers"]["X-Trace"] == "visible"
    assert sealed["model"] == "bedrock/claude" and sealed["rpm"] == 10
    assert cipher.seal(sealed) == sealed  # sealing twice changes nothing
    assert cipher.open(sealed) == PARAMS
    assert ParamCipher("sk-master").open(sealed) == PARAMS  # another process, the same key


def test_the_salt_key_wins_over_litellms_and_the_master_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_SALT_KEY", "ours")
    monkeypatch.setenv("LITELLM_SALT_KEY", "litellms")
    sealed = ParamCipher("sk-master").seal({"api_key": "sk-x"})
    monkeypatch.delenv("SWITCHYARD_SALT_KEY")
    with pytest.raises(SecretsUnavailable, match="another key"):
        ParamCipher("sk-master").open(sealed)
    litellm_sealed = ParamCipher("sk-master").seal({"api_key": "sk-x"})
    monkeypatch.delenv("LITELLM_SALT_KEY")
    with pytest.raises(SecretsUnavailable, match="another key"):
        ParamCipher("sk-master").open(litellm_sealed)
    monkeypatch.setenv("LITELLM_SALT_KEY", "litellms")
    assert ParamCipher(None).open(litellm_sealed) == {"api_key": "sk-x"}


def test_without_any_key_credentials_are_refused_and_the_rest_stored() -> None:
    cipher = ParamCipher(None)
    with pytest.raises(SecretsUnavailable, match="SWITCHYARD_SALT_KEY"):
        cipher.seal({"model": "openai/x", "api_key": "sk-x"})
    assert cipher.seal({"model": "openai/x", "api_base": "http://h"}) == {
        "model": "openai/x",
        "api_base": "http://h",
    }
    with pytest.raises(SecretsUnavailable):
        cipher.open(ParamCipher("sk-master").seal({"api_key": "sk-x"}))


def test_mask_hides_every_secret_whole() -> None:
    masked = mask(PARAMS)
    assert masked["api_key"] == masked["aws_secret_access_key"] == masked["vertex_credentials"] == MASKED
    assert masked["extra_headers"] == {"Authorization": MASKED, "X-Trace": "visible"}
    assert masked["model"] == "bedrock/claude" and masked["rpm"] == 10
