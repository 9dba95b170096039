"""``Router.replace_model``: a model's deployments changed while the router runs (models stored in the
database, ``gateway.admin.model_sync``), against real fake upstreams over loopback HTTP."""

from __future__ import annotations

import time

import pytest

from gateway.config import ModelEntry
from gateway.errors import GatewayError
from gateway.routing.deployment import Deployment
from tests.routing.router_harness import BODY, ctx, entry, router_for
from tests.support import misbehaving_upstream as mu


def deployment(model_name: str, up: mu.MisbehavingUpstream, **params: object) -> Deployment:
    return Deployment.from_entry(ModelEntry.model_validate(entry(model_name, up, **params)))


async def test_a_new_model_is_served_and_a_removed_one_is_not(upstream) -> None:
    a, b = upstream("a"), upstream("b")
    async with router_for([entry("m", a)]) as router:
        router.replace_model("fresh", [deployment("fresh", b)])
        assert router.model_names() == ["m", "fresh"]
        assert router.serves("fresh", "chat") and router.serves("fresh", "embeddings")
        await router.chat("fresh", BODY, stream=False, ctx=ctx())
        assert b.chat_hits == 1

        router.replace_model("fresh", [])
        assert router.model_names() == ["m"] and not router.has_model("fresh")
        assert not router.serves("fresh", "chat")
        with pytest.raises(GatewayError) as info:
            await router.chat("fresh", BODY, stream=False, ctx=ctx())
        assert info.value.status == 404
        assert [d.id for d in router.deployments] == ["a"] and [s.id for s in router.states] == ["a"]


async def test_an_unchanged_deployment_keeps_its_cooldown_and_a_changed_one_starts_afresh(upstream) -> None:
    a, b, c = upstream("a"), upstream("b"), upstream("c")
    async with router_for([entry("m", a), entry("m", b)]) as router:
        kept = router.groups["m"].by_id["a"]
        await router.cooldowns.cool_down(kept, 60)
        router.replace_model("m", [deployment("m", a), deployment("m", b, rpm=5), deployment("m", c)])
        group = router.groups["m"]
        assert group.by_id["a"] is kept and kept.cooldown_until > time.time()
        assert group.by_id["b"].rpm == 5 and group.by_id["b"].cooldown_until == 0
        # Traffic goes to the deployments that are not cooling down, the new one included.
        for _ in range(20):
            await router.chat("m", BODY, stream=False, ctx=ctx())
        assert a.chat_hits == 0 and b.chat_hits > 0 and c.chat_hits > 0


async def test_a_group_shrunk_to_one_deployment_gets_the_lone_deployment_rule(upstream) -> None:
    a, b = upstream("a", mu.server_error("down")), upstream("b")
    async with router_for([entry("m", a), entry("m", b)], num_retries=0) as router:
        router.replace_model("m", [deployment("m", a)])
        # Alone, a failing deployment is not cooled down after allowed_fails (3) failures: callers
        # keep getting the upstream's own error rather than a 503 for everyone.
        for _ in range(5):
            with pytest.raises(Exception) as info:
                await router.chat("m", BODY, stream=False, ctx=ctx())
            assert getattr(info.value, "status_code", None) == 500
        assert router.groups["m"].by_id["a"].cooldown_until == 0
