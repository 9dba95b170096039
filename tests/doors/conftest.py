"""Fixtures for the doors' tests: per module, a Postgres database of its own and the fake upstream.

The gateway each module runs is built with ``tests.support.gateway_app`` from these two.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.fake_openai import FakeOpenAI
from tests.support.gateway_app import own_database


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with own_database() as url:
        yield url


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake
