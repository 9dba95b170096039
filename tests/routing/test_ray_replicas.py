"""Engine replicas on Ray behind the gateway, end to end: a local Ray cluster on this machine,
``switchyard engine serve --ray --replicas 2`` running two CPU replicas of a tiny random Llama, and
a real gateway whose config names the Ray app (``model: ray/<app>``), driven by the ``openai`` SDK.
Requests spread over both replicas (each engine's own counters say so); killing one replica's actor
ends its engine and moves every request to the other, with no failed request (the router's retries
cover the requests that still reach the dead one before the gateway's next listing drops it)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from gateway.config import RouterSettings, parse_config
from gateway.routing.deployment import deployments_from_entries
from gateway.routing.ray_discovery import RayDiscovery
from gateway.routing.router import Router
from providers.registry import ProviderRegistry
from tests.support.engine_models import make_hf_model
from tests.support.gateway_process import REPO, GatewayProcess, gateway_process, switchyard_command

ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'switchyard[ray]'")

NAMESPACE = "switchyard-test"
APP = "tiny-app"
READY = re.compile(r"replica (\S+) ready at (http://\S+/v1)")


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A fresh local Ray cluster (never one already running here); yields its GCS address.

    A local cluster requires its token: ``ray.init`` sets ``RAY_AUTH_MODE=token`` in this process's
    environment, which the launcher and the gateways started below inherit (as operators set it;
    see deploy/ray/README.md)."""
    ray.init(
        address="local",
        num_cpus=2,  # one per replica
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,  # nothing is stored in it; the default takes 30% of RAM
        log_to_driver=False,
        namespace=NAMESPACE,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()  # stops the cluster this test started, whatever happened


@dataclass
class Launcher:
    """``switchyard engine serve --ray --replicas 2`` as started (its replicas may still be loading)."""

    process: subprocess.Popen[bytes]
    log: Path
    # Replica actor name -> its engine's /v1 URL (a test that has one restarted updates it).
    urls: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self) -> dict[str, str]:
        """``urls``, once the launcher reports both replicas up."""
        deadline = time.monotonic() + 240
        while "replica(s) of app" not in self.text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the launcher did not start both replicas:\n{self.text()}")
            time.sleep(0.3)
        if not self.urls:
            self.urls.update(READY.findall(self.text()))
        assert sorted(self.urls) == [f"{APP}/0", f"{APP}/1"]
        return self.urls


@pytest.fixture(scope="module")
def launcher(cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    root = tmp_path_factory.mktemp("ray-replicas")
    make_hf_model("llama", root / "tiny")
    command = [
        *switchyard_command(),
        *("engine", "serve", "--ray", "--replicas", "2", "--ray-address", cluster),
        *("--ray-namespace", NAMESPACE, "--ray-app", APP),
        *("--model", str(root / "tiny"), "--served-model-name", "tiny", "--dtype", "float32"),
        *("--max-model-len", "256", "--num-threads", "1", "--host", "127.0.0.1", "--log-level", "warning"),
    ]
    with (root / "launcher.log").open("wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        launcher = Launcher(process, root / "launcher.log")
        yield launcher
        # Stopping the launcher stops every engine it started (after the gateways, before the cluster).
        assert process.poll() is None, launcher.text()
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=45) == 0, launcher.text()
        for url in launcher.urls.values():
            with pytest.raises(httpx.TransportError):
                httpx.get(url + "/models", timeout=2)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the launcher stops its engines, then the actors
            try:
                process.wait(timeout=45)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope="module")
def replicas(launcher: Launcher) -> dict[str, str]:
    """The launcher's replicas, up."""
    return launcher.ready()


@pytest.fixture(scope="module")
def gateway(cluster: str, launcher: Launcher) -> Iterator[GatewayProcess]:
    """A gateway routing with ``simple-shuffle``, started while the replicas load."""
    config = {
        "model_list": [
            {
                "model_name": "tiny",
                "litellm_params": {"model": f"ray/{APP}", "ray_address": cluster, "ray_namespace": NAMESPACE},
            }
        ],
        "router_settings": {"routing_strategy": "simple-shuffle", "num_retries": 2},
    }
    with gateway_process(config, ready_timeout=60) as gw:
        launcher.ready()
        wait_routed(gw, 2)
        yield gw


@pytest.fixture(scope="module")
def aware_gateway(cluster: str, replicas: dict[str, str]) -> Iterator[GatewayProcess]:
    """A second gateway, routing with ``prefix-cache-aware``; warmed up (a first request made it read
    both replicas' prefix-cache summaries and the tokenizer)."""
    config = {
        "model_list": [
            {
                "model_name": "tiny",
                "litellm_params": {"model": f"ray/{APP}", "ray_address": cluster, "ray_namespace": NAMESPACE},
            }
        ],
        "router_settings": {"routing_strategy": "prefix-cache-aware", "num_retries": 0},
    }
    with gateway_process(config, ready_timeout=60) as gw:
        wait_routed(gw, 2)
        ask(client_for(gw), "Warm up.")
        time.sleep(2.0)  # the engines rebuild their summaries every 0.5 s, the gateway polls every 1 s
        yield gw


def prefix_hits(url: str) -> int:
    """Prompt tokens the engine found in its prefix cache at admission."""
    return httpx.get(url + "/prefix_cache/summary", timeout=5).json()["prefix_cache"]["hits"]


def served_tokens(url: str) -> int:
    """Prompt tokens the engine looked up in its prefix cache: grows with every request it serves."""
    return httpx.get(url + "/prefix_cache/summary", timeout=5).json()["prefix_cache"]["queries"]


def ask(client: openai.OpenAI, text: str) -> str:
    """One chat request through the gateway; the deployment id that served it."""
    raw = client.chat.completions.with_raw_response.create(
        model="tiny", messages=[{"role": "user", "content": text}], max_tokens=4, temperature=0
    )
    assert raw.parse().choices[0].message.content is not None
    return raw.headers["x-switchyard-deployment"]


def ask_messages(client: openai.OpenAI, messages: list[dict[str, str]]) -> str:
    """One chat turn through the gateway; the deployment id that served it."""
    raw = client.chat.completions.with_raw_response.create(
        model="tiny",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=4,
        temperature=0,
    )
    return raw.headers["x-switchyard-deployment"]


def wait_for_line(log: Path, text: str, timeout_s: float = 60.0) -> str:
    """``log``'s text once it holds ``text`` (the launcher checks its replicas every 5 s; a loaded
    CI machine has taken longer than 15 s to show a restart)."""
    deadline = time.monotonic() + timeout_s
    while text not in (content := log.read_text(errors="replace")):
        assert time.monotonic() < deadline, content
        time.sleep(0.3)
    return content


def client_for(gateway: GatewayProcess) -> openai.OpenAI:
    # No SDK retries: every request that failed at the gateway would show.
    return openai.OpenAI(base_url=gateway.base_url + "/v1", api_key="unused", max_retries=0, timeout=60)


def deployment_of(name: str, url: str) -> str:
    """The gateway's deployment id for replica ``name`` at ``url``: ``<app>/<i>@<host>:<port>``."""
    return f"{name}@{httpx.URL(url).netloc.decode()}"


def routed_deployments(gateway: GatewayProcess) -> set[str]:
    """The deployments the gateway routes to now (its per-deployment health gauge on /metrics)."""
    text = httpx.get(gateway.base_url + "/metrics", timeout=5).text
    return set(re.findall(r'^switchyard_deployment_healthy\{deployment="([^"]+)"', text, re.MULTILINE))


def wait_routed(gateway: GatewayProcess, count: int) -> None:
    """Until the gateway routes to ``count`` replicas (it is ready before its first list when the
    cluster is slow to answer)."""
    deadline = time.monotonic() + 30
    while len(routed_deployments(gateway)) != count:
        assert time.monotonic() < deadline, gateway.logs()
        time.sleep(0.2)


def test_requests_spread_over_both_replicas(gateway: GatewayProcess, replicas: dict[str, str]) -> None:
    client = client_for(gateway)
    before = {name: served_tokens(url) for name, url in replicas.items()}
    served = [ask(client, f"Hello world! Request {i}.") for i in range(16)]
    after = {name: served_tokens(url) for name, url in replicas.items()}
    ids = {deployment_of(name, url): name for name, url in replicas.items()}
    assert set(served) == set(ids), (served, gateway.logs())
    for name in replicas:
        assert after[name] > before[name], f"{name} served nothing by its own count"


def test_prefix_cache_aware_keeps_a_conversation_on_its_replica(
    aware_gateway: GatewayProcess, replicas: dict[str, str]
) -> None:
    """Ray replicas take part in ``prefix-cache-aware`` routing (they are marked as engines)."""
    client = client_for(aware_gateway)
    ids = {deployment_of(name, url): name for name, url in replicas.items()}
    for conversation in range(3):
        messages = [
            {
                "role": "system",
                "content": f"Conversation {conversation}. Paged attention keeps the KV cache.",
            },
            {"role": "user", "content": "The quick brown fox jumps over the lazy dog."},
        ]
        first = client.chat.completions.with_raw_response.create(
            model="tiny", messages=messages, max_tokens=4, temperature=0
        )
        owner = ids[first.headers["x-switchyard-deployment"]]
        messages += [
            {"role": "assistant", "content": first.parse().choices[0].message.content or ""},
            {"role": "user", "content": "Hello world! Continuous batching mixes prefill and decode tokens."},
        ]
        before = prefix_hits(replicas[owner])
        assert ask_messages(client, messages) == deployment_of(owner, replicas[owner]), aware_gateway.logs()
        assert prefix_hits(replicas[owner]) - before >= 16  # at least one block of the last turn reused


def test_crashed_engine_is_restarted_by_ray_and_learned_again(
    gateway: GatewayProcess, replicas: dict[str, str], launcher: Launcher
) -> None:
    """An engine that crashes takes its actor down, which Ray restarts (max_restarts) with a new
    engine on a new port: the gateway drops the old deployment and routes to the new one."""
    name = f"{APP}/1"
    old = deployment_of(name, replicas[name])
    engine_pid = ray.get(ray.get_actor(name, namespace=NAMESPACE).endpoint.remote(), timeout=10)["pid"]
    os.kill(engine_pid, signal.SIGKILL)
    client = client_for(gateway)
    for i in range(6):  # none fails: the router retries those that reach the dying engine
        ask(client, f"Request {i} while a replica restarts.")
    deadline = time.monotonic() + 120
    while True:
        routed = routed_deployments(gateway)
        new = {d for d in routed if d.startswith(name + "@")} - {old}
        if new and old not in routed:
            break
        assert time.monotonic() < deadline, f"routed: {routed}\n{gateway.logs()}"
        time.sleep(0.5)
    replicas[name] = "http://" + new.pop().split("@", 1)[1] + "/v1"
    assert set(ask(client, f"Request {i} after the restart.") for i in range(16)) == routed
    assert f"replica {name} restarted at {replicas[name]}" in wait_for_line(launcher.log, "restarted at")


def test_killed_replica_moves_traffic_to_the_other(gateway: GatewayProcess, replicas: dict[str, str]) -> None:
    victim, survivor = f"{APP}/0", f"{APP}/1"
    ray.kill(ray.get_actor(victim, namespace=NAMESPACE), no_restart=True)
    # The engine goes with its actor (its port refuses within a second)...
    wait_refused(replicas[victim])
    # ...and the requests sent at once, before the gateway's next list drops the replica, never
    # fail: those that pick the dead one are retried on the other.
    client = client_for(gateway)
    served = [ask(client, f"The quick brown fox, request {i}.") for i in range(12)]
    assert set(served) == {deployment_of(survivor, replicas[survivor])}, gateway.logs()
    deadline = time.monotonic() + 10
    while (routed := routed_deployments(gateway)) != {deployment_of(survivor, replicas[survivor])}:
        assert time.monotonic() < deadline, f"routed: {routed}\n{gateway.logs()}"
        time.sleep(0.3)


def wait_refused(url: str, timeout_s: float = 10.0) -> None:
    """Until nothing answers at ``url``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(url + "/models", timeout=1)
        except httpx.TransportError:
            return
        assert time.monotonic() < deadline, f"{url} still answers"
        time.sleep(0.1)


def test_ray_entries_are_set_apart_from_the_deployments() -> None:
    config = parse_config(
        "model_list:\n"
        "  - model_name: smol\n"
        "    litellm_params: {model: ray/smol-app, ray_address: '10.0.0.5:6379'}\n"
        "  - model_name: other\n"
        "    litellm_params: {model: nosuchprovider/x}\n"
    )
    assert [e.model_name for e in config.ray_engines] == ["smol"]
    assert config.model_list == []
    assert [d.model_name for d in config.disabled] == ["other"]
    # The warning names the entry's own place in the file, not the ray entry's before it.
    assert any(w.startswith("<config>:5: model_list[1].") for w in config.warnings), config.warnings


def test_the_gateway_never_imports_ray() -> None:
    """Ray runs in the launcher and the directory child process only."""
    code = (
        "import sys, gateway.app, gateway.services, gateway.routing.ray_discovery, "
        "gateway.engines.ray_launcher; assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_gateway_starts_without_its_ray_cluster() -> None:
    """A cluster that does not answer delays the start by seconds, not minutes; its model is unknown
    meanwhile."""
    config = {
        "model_list": [
            {"model_name": "tiny", "litellm_params": {"model": f"ray/{APP}", "ray_address": "127.0.0.1:9"}},
        ]
    }
    started = time.monotonic()
    with gateway_process(config, ready_timeout=60) as gw:
        assert time.monotonic() - started < 30, gw.logs()
        client = client_for(gw)
        with pytest.raises(openai.NotFoundError):
            ask(client, "Hello?")
        assert "no answer from the Ray cluster at 127.0.0.1:9" in gw.logs()


def test_a_list_changes_only_the_replicas() -> None:
    """What a directory list does to the router: a config deployment of the same model name stays,
    a replica still listed keeps its routing state, one no longer listed leaves."""
    config = parse_config(
        "model_list:\n"
        "  - model_name: tiny\n"
        "    litellm_params: {model: ray/tiny-app, ray_address: 'head:6379', timeout: 7}\n"
        "  - model_name: tiny\n"
        "    litellm_params: {model: hosted_vllm/tiny, api_base: 'http://spare:8000/v1'}\n"
        "    model_info: {id: spare}\n"
    )
    router = Router(deployments_from_entries(config.model_list), RouterSettings(), ProviderRegistry.default())
    discovery = RayDiscovery(config.ray_engines, router, 600.0)

    def replica(index: int, port: int) -> dict[str, object]:
        url = f"http://10.0.0.{index}:{port}/v1"
        return {"namespace": "switchyard", "app": APP, "index": index, "url": url, "model": "tiny"}

    discovery._apply("head:6379", [replica(0, 8001), replica(1, 8002)])
    group = router.groups["tiny"]
    assert sorted(group.by_id) == ["spare", f"{APP}/0@10.0.0.0:8001", f"{APP}/1@10.0.0.1:8002"]
    kept = group.by_id[f"{APP}/1@10.0.0.1:8002"]
    assert kept.deployment.timeout == 7 and kept.deployment.model_info["switchyard_engine"] is True
    kept.cooldown_until = time.time() + 60
    discovery._apply("head:6379", [replica(1, 8002)])
    group = router.groups["tiny"]
    assert sorted(group.by_id) == ["spare", f"{APP}/1@10.0.0.1:8002"]
    assert group.by_id[f"{APP}/1@10.0.0.1:8002"] is kept  # its cooldown with it
    discovery._apply("other:6379", [])  # another cluster's list says nothing about this one
    discovery._apply("head:6379", [])
    assert sorted(router.groups["tiny"].by_id) == ["spare"]
