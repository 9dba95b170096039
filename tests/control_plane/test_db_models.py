"""Models in the database (``/model/new``, ``/model/update``, ``/model/delete``, ``/model/info``,
``/model_group/info``), on two real gateway processes sharing one real Postgres database.

A model added through one instance is called through the other with the official ``openai`` SDK; the
fake upstream records what reached it, so the stored (encrypted) key is seen arriving in clear. The
other instance picks changes up by polling: the tests wait for them, bounded only to end a hang.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest

from tests.control_plane.test_admin_api import sql, unique
from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_app import MASTER_KEY, gateway_config, new_key
from tests.support.gateway_process import REPO, GatewayProcess, gateway_process

SALT_KEY = "salt-for-the-db-model-tests"
ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}
T = TypeVar("T")


def _instance(fake: FakeOpenAI, database_url: str) -> Iterator[GatewayProcess]:
    config = gateway_config(fake.base_url, model_refresh_interval_s=0.2)
    env = {"DATABASE_URL": database_url, "SWITCHYARD_SALT_KEY": SALT_KEY}
    with gateway_process(config, env=env) as gw:
        yield gw


@pytest.fixture(scope="module")
def first(fake_upstream: FakeOpenAI, database_url: str) -> Iterator[GatewayProcess]:
    yield from _instance(fake_upstream, database_url)


@pytest.fixture(scope="module")
def second(fake_upstream: FakeOpenAI, database_url: str) -> Iterator[GatewayProcess]:
    yield from _instance(fake_upstream, database_url)


def post(gw: GatewayProcess, path: str, body: Any, headers: dict[str, str] = ADMIN) -> httpx.Response:
    return httpx.post(gw.base_url + path, json=body, headers=headers, timeout=30)


def get(gw: GatewayProcess, path: str, headers: dict[str, str] = ADMIN, **params: str) -> httpx.Response:
    return httpx.get(gw.base_url + path, params=params, headers=headers, timeout=30)


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def eventually(probe: Callable[[], T | None], what: str, bound_s: float = 60.0) -> T:
    """Poll ``probe`` until it returns a value. The bound only ends a hang (the poller's interval
    is 0.2 s); it is not what the test measures."""
    deadline = time.monotonic() + bound_s
    while True:
        value = probe()
        if value is not None:
            return value
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


def chat(gw: GatewayProcess, model: str) -> openai.types.chat.ChatCompletion:
    client = openai.OpenAI(base_url=gw.base_url + "/v1", api_key=MASTER_KEY, max_retries=0)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


def served(gw: GatewayProcess, model: str, fake: FakeOpenAI, upstream_key: str) -> bool | None:
    """True once ``gw`` serves ``model`` and the upstream saw ``upstream_key``; None while not yet."""
    try:
        chat(gw, model)
    except openai.NotFoundError:
        return None
    last = fake.requests[-1]
    return True if last.headers.get("authorization") == f"Bearer {upstream_key}" else None


def gone(gw: GatewayProcess, model: str) -> bool | None:
    try:
        chat(gw, model)
    except openai.NotFoundError as exc:
        assert exc.code == "model_not_found", exc.body
        return True
    return None


def info_of(gw: GatewayProcess, model_id: str, path: str = "/model/info") -> dict[str, Any] | None:
    found = [m for m in ok(get(gw, path))["data"] if m["model_info"]["id"] == model_id]
    return found[0] if found else None


def test_a_model_added_on_one_instance_is_served_by_the_other_then_updated_and_deleted(
    first: GatewayProcess, second: GatewayProcess, fake_upstream: FakeOpenAI, database_url: str
) -> None:
    name, secret = unique("db-model"), "sk-stored-secret-" + unique("k")
    body = {
        "model_name": name,
        "litellm_params": {
            "model": "openai/upstream-one",
            "api_base": fake_upstream.base_url,
            "api_key": secret,
        },
        "model_info": {"team": "search"},
    }
    created = ok(post(first, "/model/new", body))
    model_id = created["model_id"]
    assert created["model_name"] == name
    assert created["litellm_params"]["api_key"] == "********"
    assert created["model_info"]["team"] == "search" and created["model_info"]["db_model"] is True
    assert secret not in json.dumps(created)

    # The instance that stored it serves it at once; the other one within its polling interval.
    assert served(first, name, fake_upstream, secret)
    assert fake_upstream.requests[-1].body["model"] == "upstream-one"
    eventually(lambda: served(second, name, fake_upstream, secret), "the second instance serves the model")

    # Stored encrypted: the row holds no part of the key in clear.
    (row,) = sql(database_url, "SELECT params::text AS params FROM model_deployments WHERE id = $1", model_id)
    assert secret not in row["params"] and secret[-8:] not in row["params"]
    assert json.loads(row["params"])["api_key"].startswith("sy-enc:v1:")

    # Listed with the key masked, on both instances and both paths, beside the config models.
    for gw in (first, second):
        for path in ("/model/info", "/v1/model/info"):
            listed = eventually(lambda gw=gw, path=path: info_of(gw, model_id, path), "listed")
            assert listed["model_name"] == name
            assert listed["litellm_params"] == {
                "model": "openai/upstream-one",
                "api_base": fake_upstream.base_url,
                "api_key": "********",
            }
            assert listed["model_info"]["db_model"] is True
        everything = get(gw, "/model/info").text
        assert secret not in everything and "sk-upstream-fake" not in everything  # config keys too
        assert any(m["model_name"] == "gpt-4o-mini" for m in json.loads(everything)["data"])
    one = ok(get(second, "/model/info", litellm_model_id=model_id))["data"]
    assert [m["model_info"]["id"] for m in one] == [model_id]
    group = ok(get(second, "/model_group/info", model_group=name))["data"]
    assert [(g["model_group"], g["providers"], g["mode"]) for g in group] == [(name, ["openai"], "chat")]

    # Update through the second instance: a new key and upstream model reach the first instance.
    new_secret = "sk-rotated-secret-" + unique("k")
    update = {
        "model_info": {"id": model_id},
        "litellm_params": {"api_key": new_secret, "model": "openai/upstream-two"},
    }
    updated = ok(post(second, "/model/update", update))
    assert updated["litellm_params"]["api_key"] == "********" and new_secret not in json.dumps(updated)
    assert updated["litellm_params"]["api_base"] == fake_upstream.base_url  # merged, not replaced
    eventually(lambda: served(first, name, fake_upstream, new_secret), "the first instance uses the new key")
    assert fake_upstream.requests[-1].body["model"] == "upstream-two"
    # The mask sent back keeps the stored secret.
    ok(
        post(
            second, "/model/update", {"id": model_id, "litellm_params": {"api_key": "********", "rpm": 1000}}
        )
    )
    assert served(second, name, fake_upstream, new_secret)

    # Delete through the first instance: both stop serving it.
    assert ok(post(first, "/model/delete", {"id": model_id})) == {
        "message": f"Model: {model_id} deleted successfully"
    }
    assert gone(first, name)
    eventually(lambda: gone(second, name), "the second instance stops serving the model")
    assert info_of(second, model_id) is None
    assert ok(get(second, "/model_group/info", model_group=name))["data"] == []
    for gw in (first, second):
        assert secret not in gw.logs() and new_secret not in gw.logs()
    # The audit log names the change, never the secret.
    audit = sql(
        database_url, "SELECT action, after::text AS after FROM audit_logs WHERE object_id = $1", model_id
    )
    assert {r["action"] for r in audit} == {"model.new", "model.update", "model.delete"}
    assert all(secret not in (r["after"] or "") and new_secret not in (r["after"] or "") for r in audit)


def test_a_stored_model_joins_a_config_model_of_the_same_name(
    first: GatewayProcess, second: GatewayProcess, fake_upstream: FakeOpenAI
) -> None:
    body = {
        "model_name": "gpt-4o",
        "litellm_params": {
            "model": "openai/gpt-4o-extra",
            "api_base": fake_upstream.base_url,
            "api_key": "sk-x",
        },
    }
    model_id = ok(post(first, "/model/new", body))["model_id"]
    try:
        group = eventually(
            lambda: (
                [g for g in ok(get(second, "/model/info"))["data"] if g["model_name"] == "gpt-4o"] or None
            ),
            "listed",
        )
        assert {m["model_info"]["db_model"] for m in group} == {True, False}

        def both_seen() -> bool | None:
            chat(second, "gpt-4o")
            seen = {r.body["model"] for r in fake_upstream.requests[-40:]}
            return True if {"gpt-4o", "gpt-4o-extra"} <= seen else None

        eventually(both_seen, "requests for gpt-4o reach both deployments")
    finally:
        ok(post(first, "/model/delete", {"id": model_id}))


def test_keys_see_only_their_models_and_only_admins_write(first: GatewayProcess) -> None:
    limited = new_key(first, models=["gpt-4o-mini"])["key"]
    headers = {"Authorization": f"Bearer {limited}"}
    assert {m["model_name"] for m in ok(get(first, "/model/info", headers))["data"]} == {"gpt-4o-mini"}
    assert [g["model_group"] for g in ok(get(first, "/model_group/info", headers))["data"]] == ["gpt-4o-mini"]
    body = {"model_name": unique("nope"), "litellm_params": {"model": "openai/x"}}
    refused = post(first, "/model/new", body, headers)
    assert refused.status_code == 403, refused.text
    assert post(first, "/model/new", body, {}).status_code == 401


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/model/new",
            {"model_name": "x", "litellm_params": {"model": "nosuchprovider/x"}},
            "litellm_params.model",
        ),
        (
            "/model/new",
            {"model_name": "x", "litellm_params": {"api_base": "http://a"}},
            "litellm_params.model",
        ),
        (
            "/model/new",
            {"model_name": "x", "litellm_params": {"model": "openai/x", "rpm": -1}},
            "litellm_params.rpm",
        ),
        ("/model/new", {"model_name": "", "litellm_params": {"model": "openai/x"}}, "model_name"),
        ("/model/new", {"model_name": "x", "litellm_params": {"model": "openai/x"}, "oops": 1}, "oops"),
        ("/model/update", {"litellm_params": {"rpm": 5}}, "model_info.id"),
    ],
)
def test_bad_models_are_refused_with_a_400_naming_the_field(
    first: GatewayProcess, path: str, body: dict[str, Any], param: str
) -> None:
    response = post(first, path, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.text


def test_unknown_ids_config_models_and_bad_json(first: GatewayProcess) -> None:
    assert post(first, "/model/delete", {"id": "no-such-model"}).status_code == 404
    assert post(first, "/model/update", {"id": "no-such-model", "litellm_params": {}}).status_code == 404
    assert get(first, "/model/info", litellm_model_id="no-such-model").status_code == 404
    config_id = next(m["model_info"]["id"] for m in ok(get(first, "/model/info"))["data"])
    for path, body in (("/model/delete", {"id": config_id}), ("/model/update", {"id": config_id})):
        refused = post(first, path, body)
        assert refused.status_code == 400 and "config" in refused.json()["error"]["message"], refused.text
    taken = {"model_name": "x", "litellm_params": {"model": "openai/x"}, "model_info": {"id": config_id}}
    assert post(first, "/model/new", taken).status_code == 400
    raw = httpx.post(first.base_url + "/model/new", content=b"{not json", headers=ADMIN, timeout=30)
    assert raw.status_code == 400 and raw.json()["error"]["message"]


# ---- LiteLLM's own client ----------------------------------------------------------------------------

PEER_CLI = REPO / "bench" / ".peers" / "litellm" / "bin" / "litellm-proxy"


def litellm_proxy(gw: GatewayProcess, *args: str) -> str:
    with tempfile.TemporaryDirectory() as home:  # the CLI keeps its config under ~/.litellm
        env = {
            **os.environ,
            "HOME": home,
            "LITELLM_PROXY_URL": gw.base_url,
            "LITELLM_PROXY_API_KEY": MASTER_KEY,
            "COLUMNS": "300",  # rich would cut the table's cells to fit 80 columns
        }
        done = subprocess.run(
            [str(PEER_CLI), *args], env=env, capture_output=True, text=True, timeout=120, cwd=Path(home)
        )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.skipif(not PEER_CLI.exists(), reason="LiteLLM's peer install (bench/.peers/litellm) is absent")
def test_litellm_proxy_cli_adds_lists_and_deletes_models(
    first: GatewayProcess, second: GatewayProcess, fake_upstream: FakeOpenAI
) -> None:
    name = unique("cli-model")
    added = litellm_proxy(
        first,
        "models",
        "add",
        name,
        "--param",
        "model=openai/from-cli",
        "--param",
        f"api_base={fake_upstream.base_url}",
        "--param",
        "api_key=sk-cli-secret",
    )
    assert "sk-cli-secret" not in added
    listed = json.loads(litellm_proxy(second, "models", "info", "--format", "json"))
    mine = [m for m in listed if m["model_name"] == name]
    assert len(mine) == 1 and mine[0]["litellm_params"]["api_key"] == "********"
    model_id = mine[0]["model_info"]["id"]
    table = litellm_proxy(second, "models", "info", "--columns", "public_model,upstream_model,updated_at,id")
    assert name in table and "from-cli" in table
    names = json.loads(litellm_proxy(first, "models", "list", "--format", "json"))
    assert name in {m["id"] for m in names}
    groups = json.loads(litellm_proxy(first, "model-groups", "list", "--format", "json"))
    assert [g["mode"] for g in groups if g["model_group"] == name] == ["chat"]
    litellm_proxy(second, "models", "update", model_id, "--param", "api_key=sk-cli-rotated")
    eventually(lambda: served(first, name, fake_upstream, "sk-cli-rotated"), "the rotated key is used")
    litellm_proxy(first, "models", "delete", model_id)
    assert gone(first, name)


def test_a_row_sealed_under_another_salt_key_is_listed_named_in_the_log_and_not_served(
    first: GatewayProcess, fake_upstream: FakeOpenAI, database_url: str
) -> None:
    name, secret = unique("sealed"), "sk-sealed-" + unique("k")
    body = {
        "model_name": name,
        "litellm_params": {"model": "openai/x", "api_base": fake_upstream.base_url, "api_key": secret},
    }
    model_id = ok(post(first, "/model/new", body))["model_id"]
    config = gateway_config(fake_upstream.base_url, model_refresh_interval_s=0.2)
    env = {"DATABASE_URL": database_url, "SWITCHYARD_SALT_KEY": "another-salt"}
    try:
        with gateway_process(config, env=env) as other:
            assert gone(other, name)
            chat(other, "gpt-4o-mini")  # every other model is served as before
            listed = info_of(other, model_id)
            assert listed is not None and listed["litellm_params"]["api_key"] == "********"
            assert f"stored model {name!r} (id {model_id}) is not served" in other.logs()
            assert "encrypted with another key" in other.logs() and secret not in other.logs()
            # Saved again under this instance's key, it is served here.
            resealed = {"id": model_id, "litellm_params": {"api_key": "sk-resealed"}}
            ok(post(other, "/model/update", resealed))
            assert served(other, name, fake_upstream, "sk-resealed")
    finally:
        ok(post(first, "/model/delete", {"id": model_id}))


def test_without_a_salt_or_master_key_credentials_are_refused(
    fake_upstream: FakeOpenAI, database_url: str
) -> None:
    config = {"model_list": [], "general_settings": {"model_refresh_interval_s": 0.2}}
    env = {"DATABASE_URL": database_url, "SWITCHYARD_SALT_KEY": "", "LITELLM_SALT_KEY": ""}
    with gateway_process(config, env=env) as local:  # local mode: no master key
        params = {"model": "openai/x", "api_base": fake_upstream.base_url}
        refused = post(
            local, "/model/new", {"model_name": "keyed", "litellm_params": {**params, "api_key": "sk-x"}}, {}
        )
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "no_encryption_key" and "sk-x" not in refused.text
        model_id = ok(
            post(local, "/model/new", {"model_name": unique("keyless"), "litellm_params": params}, {})
        )["model_id"]
        ok(post(local, "/model/delete", {"id": model_id}, {}))
