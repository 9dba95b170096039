"""The ``prefix-cache-aware`` pick on real routing states and real summaries (no servers): the
replica whose published Bloom filter holds the prompt's leading blocks wins unless its extra load
outweighs the cached tokens, a replica with nothing cached leaves the pick to
least-busy, a pick is remembered for the conversation's next turn, and a summary hashed by
another interpreter is ignored."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from gateway.routing.deployment import Deployment
from gateway.routing.model_group import ModelGroup
from gateway.routing.prefix_aware import LOAD_TOKENS, PrefixCacheAware, ReplicaView
from gateway.routing.router import Invocation
from gateway.routing.state import DeploymentState
from local_engine.loader.hf import load_tokenizer
from local_engine.prefix_summary import PromptEncoder, chain_hashes, prompt_ids, summarize
from local_engine.tokenizer import Tokenizer
from tests.support.engine_models import write_tokenizer

BODY = {
    "model": "tiny",
    "messages": [
        {"role": "system", "content": "Paged attention keeps the KV cache in fixed-size blocks. " * 3},
        {"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 3},
    ],
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    directory = tmp_path_factory.mktemp("tok")
    write_tokenizer(Path(directory))
    return load_tokenizer(Path(directory), {})


def replicas(strategy: PrefixCacheAware, tok: Tokenizer, cached: dict[str, list[int]]) -> ModelGroup:
    """Two engine replicas whose summaries hold ``cached[name]`` block hashes."""
    states = []
    for name in ("a", "b"):
        dep = Deployment(
            id=name,
            model_name="tiny",
            provider="openai",
            upstream_model="tiny",
            api_base=f"http://{name}.invalid/v1",
            model_info={"switchyard_engine": True},
        )
        states.append(DeploymentState(id=name, model_name="tiny", deployment=dep))
        view = ReplicaView(f"http://{name}.invalid/v1", {})
        view.summary = summarize(cached.get(name, []), capacity=256, block_size=16, tokenizer="t")
        view.summary_at = time.monotonic()
        strategy.directory.views[name] = view
    strategy.directory.tokenizers["t"] = PromptEncoder(tok)
    return ModelGroup("tiny", states)


def pick(strategy: PrefixCacheAware, group: ModelGroup, body: dict = BODY) -> str:
    picked = group.pick(strategy.for_request(Invocation("chat", body)), time.time())
    assert isinstance(picked, DeploymentState)
    return picked.id


def prompt_hashes(tok: Tokenizer) -> list[int]:
    hashes = chain_hashes(prompt_ids(tok, "chat", BODY) or [], 16)
    assert len(hashes) >= 4  # the test needs a prompt several blocks long
    return hashes


def test_the_replica_holding_the_prefix_wins(tokenizer: Tokenizer) -> None:
    strategy = PrefixCacheAware()
    group = replicas(strategy, tokenizer, {"b": prompt_hashes(tokenizer)[:3]})
    assert [pick(strategy, group) for _ in range(20)] == ["b"] * 20


def test_load_outweighs_a_short_prefix_but_not_a_long_one(tokenizer: Tokenizer) -> None:
    # A few cached blocks are worth less than one request in flight.
    strategy = PrefixCacheAware()
    group = replicas(strategy, tokenizer, {"b": prompt_hashes(tokenizer)[:3]})
    group.deployments[1].in_flight = 1
    assert {pick(strategy, group) for _ in range(10)} == {"a"}
    # A long conversation stays on its replica while the extra load costs less than its prefix.
    long_body = {**BODY, "messages": [*BODY["messages"], {"role": "user", "content": "Hello world! " * 300}]}
    hashes = chain_hashes(prompt_ids(tokenizer, "chat", long_body) or [], 16)
    cached_tokens = len(hashes) * 16
    assert cached_tokens > 2 * LOAD_TOKENS
    for extra, winner in ((cached_tokens // LOAD_TOKENS - 1, "b"), (cached_tokens // LOAD_TOKENS + 1, "a")):
        strategy = PrefixCacheAware()
        group = replicas(strategy, tokenizer, {"b": hashes})
        group.deployments[0].in_flight, group.deployments[1].in_flight = 2, 2 + extra
        assert pick(strategy, group, long_body) == winner, (extra, cached_tokens)


def test_with_nothing_cached_the_pick_is_least_busy_and_remembered(tokenizer: Tokenizer) -> None:
    strategy = PrefixCacheAware()
    group = replicas(strategy, tokenizer, {})
    a = group.deployments[0]
    a.in_flight = 2
    assert pick(strategy, group) == "b"
    # The next turn (same prefix, more messages) follows, before any summary shows it.
    a.in_flight = 0
    next_turn = {**BODY, "messages": [*BODY["messages"], {"role": "assistant", "content": "Hello world!"}]}
    assert [pick(strategy, group, next_turn) for _ in range(10)] == ["b"] * 10


def test_a_summary_hashed_elsewhere_is_ignored(tokenizer: Tokenizer) -> None:
    first_picks = set()
    for _ in range(40):
        strategy = PrefixCacheAware()
        group = replicas(strategy, tokenizer, {"b": prompt_hashes(tokenizer)[:3]})
        view = strategy.directory.views["b"]
        assert view is not None and view.summary is not None
        view.summary = dataclasses.replace(view.summary, hash_check=1)
        first_picks.add(pick(strategy, group))
    assert first_picks == {"a", "b"}  # a tie, broken at random: b's filter counts for nothing
