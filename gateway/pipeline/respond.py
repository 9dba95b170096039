"""The ASGI side of an answer: JSON bodies, SSE streams, errors, and the client-disconnect watch.

Written against raw ASGI rather than FastAPI's responses: every request goes through here, and
each avoided layer is latency and CPU per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from gateway.pipeline.stages import Admission
from gateway.server.body import DISCONNECT_KEY, ClientGone

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class DisconnectWatch:
    """Cancels the current task when the client disconnects; ``gone`` tells whether it did.

    Under the gateway's own server protocol the scope carries ``DISCONNECT_KEY`` and the
    protocol calls ``client_gone`` from ``connection_lost`` (or leaves ``False`` there when the
    client left before the watch began). Under any other ASGI server a
    watcher task waits on ``receive``: the request body has been read by now, so the next ASGI
    message can only be ``http.disconnect`` (uvicorn also sends it once the response is
    complete, hence ``finish``).
    """

    __slots__ = ("_done", "_scope", "_task", "_watcher", "gone", "receive")

    def __init__(self, receive: Receive, scope: Scope) -> None:
        self.receive = receive
        self._scope = scope
        self.gone = False
        self._done = False
        self._task: asyncio.Task[Any] | None = None
        self._watcher: asyncio.Task[None] | None = None

    def __enter__(self) -> DisconnectWatch:
        self._task = asyncio.current_task()
        scope = self._scope
        if DISCONNECT_KEY in scope:
            already_gone = scope[DISCONNECT_KEY] is False
            scope[DISCONNECT_KEY] = self  # the server protocol reports the disconnect
            if already_gone:
                self.client_gone()  # cancels at the first await inside the ``with``
        else:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return self

    async def _watch(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                break
        self.client_gone()

    def client_gone(self) -> None:
        """The client's connection is gone: cancel the request unless its answer is complete."""
        if not self._done and self._task is not None:
            self.gone = True
            self._task.cancel()

    def finish(self) -> None:
        """The response is about to complete; a disconnect from now on is the normal end."""
        self._done = True

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        self._done = True
        if self._watcher is not None:
            self._watcher.cancel()
        if self.gone and exc_type is asyncio.CancelledError and self._task is not None:
            # The cancellation was ours (client gone), not the server's: swallow it.
            self._task.uncancel()
            raise ClientGone() from None
        return False


def common_headers(request_id: str, admission: Admission) -> Headers:
    out = [(b"x-request-id", request_id.encode("latin-1"))]
    for name, value in admission.headers.items():
        out.append((name.lower().encode("latin-1"), str(value).encode("latin-1")))
    return out


def routing_headers(deployment_id: str, attempts: int, overhead_s: float) -> Headers:
    return [
        (b"x-switchyard-deployment", deployment_id.encode("latin-1")),
        (b"x-switchyard-attempts", str(attempts).encode()),
        (b"x-switchyard-overhead-ms", f"{overhead_s * 1000:.3f}".encode()),
    ]


async def send_body(send: Send, status: int, body: bytes, headers: Headers) -> None:
    """A complete answer; ``headers`` must hold the content type."""
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(
    send: Send, status: int, body: bytes, request_id: str, extra: Mapping[str, str], content_type: bytes
) -> None:
    headers = [(b"content-type", content_type), (b"x-request-id", request_id.encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    try:
        await send_body(send, status, body, headers)
    except Exception:
        # The response had already started (or the client is gone): nothing more to say.
        pass
