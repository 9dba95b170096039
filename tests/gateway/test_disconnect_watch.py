"""``DisconnectWatch`` as the server protocol drives it (``DISCONNECT_KEY`` in the scope).

The real-server tests in test_gateway_api.py cover a client leaving mid-answer; these cover the
two edges the protocol's report has: a client that left before the watch began, and a report
arriving after the answer was complete (the normal end of every request).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.pipeline.respond import DisconnectWatch
from gateway.server.body import DISCONNECT_KEY, ClientGone


async def _never() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def test_a_client_gone_before_the_watch_began_cancels_the_request() -> None:
    scope: dict[str, Any] = {DISCONNECT_KEY: False}  # what connection_lost leaves behind
    with pytest.raises(ClientGone):
        with DisconnectWatch(_never, scope):
            await asyncio.sleep(5)


async def test_the_protocol_report_cancels_a_waiting_request() -> None:
    scope: dict[str, Any] = {DISCONNECT_KEY: None}

    async def request() -> None:
        with DisconnectWatch(_never, scope):
            await asyncio.sleep(5)

    task = asyncio.ensure_future(request())
    await asyncio.sleep(0)
    watch = scope[DISCONNECT_KEY]
    assert isinstance(watch, DisconnectWatch)
    watch.client_gone()
    with pytest.raises(ClientGone):
        await task


async def test_a_report_after_the_answer_is_the_normal_end() -> None:
    scope: dict[str, Any] = {DISCONNECT_KEY: None}
    with DisconnectWatch(_never, scope) as watch:
        watch.finish()
        watch.client_gone()
        await asyncio.sleep(0)  # not cancelled
    assert not watch.gone
