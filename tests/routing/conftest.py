"""Fixtures for the router tests: fake upstreams, and a real Redis (LIMITS' fixture: the local
one at 127.0.0.1:6379 when it answers, else a private redis-server)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.support.misbehaving_upstream import Behaviour, MisbehavingUpstream
from tests.support.redis_server import redis_url

__all__ = ["redis_url"]


@pytest.fixture
def namespace() -> str:
    """A key namespace no other test (or concurrent test run) shares."""
    return f"sy-test-{uuid.uuid4().hex[:10]}:router"


@pytest.fixture
def upstream() -> Iterator[Callable[..., MisbehavingUpstream]]:
    """Start fake upstreams on demand: ``upstream("a")``; all are stopped after the test."""
    started: list[MisbehavingUpstream] = []

    def make(name: str, default: Behaviour | None = None) -> MisbehavingUpstream:
        up = MisbehavingUpstream(name, default).start()
        started.append(up)
        return up

    yield make
    for up in started:
        up.stop()
