"""Generic HTTP webhook logging (LiteLLM's ``generic_api`` callback style): every request's record
(``request_log.record``) POSTed as a JSON array to ``general_settings.webhook_url`` in batches.

Records are queued when their spend batch commits (off the request path) in a bounded queue (the
oldest dropped, counted, when the receiver has been away long); a failed POST (an error or a non-2xx
answer) is retried with backoff, then the batch goes back to the front of the queue for the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

import httpx

log = logging.getLogger(__name__)


class WebhookLogger:
    def __init__(
        self,
        url: str,
        *,
        batch_size: int = 100,
        interval_s: float = 1.0,
        max_queue: int = 10_000,
        attempts: int = 3,
    ) -> None:
        self._url = url
        self._batch_size = batch_size
        self._interval = interval_s
        self._max_queue = max_queue
        self._attempts = attempts
        self._queue: deque[dict[str, object]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self.dropped = 0

    def submit(self, records: list[dict[str, object]]) -> None:
        """Queue records (never awaits); beyond ``max_queue`` the oldest go."""
        self._queue.extend(records)
        while len(self._queue) > self._max_queue:
            self._queue.popleft()
            self.dropped += 1

    def start(self) -> None:
        if self._task is None:
            self._client = httpx.AsyncClient(timeout=10.0)
            self._task = asyncio.get_running_loop().create_task(self._run(), name="webhook-logger")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> None:
        """Send what is queued, a batch at a time; stops at a batch that failed every attempt."""
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
            if not await self._post(batch):
                self._queue.extendleft(reversed(batch))
                return

    async def _post(self, batch: list[dict[str, object]]) -> bool:
        assert self._client is not None
        for attempt in range(self._attempts):
            try:
                resp = await self._client.post(self._url, json=batch)
                if resp.is_success:
                    return True
                why = f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                why = type(exc).__name__
            if attempt + 1 < self._attempts:
                await asyncio.sleep(0.2 * 2**attempt)
        log.warning("webhook logger: %d records not delivered (%s); kept for the next try", len(batch), why)
        return False

    async def close(self) -> None:
        """Stop the timer and send what is left (one round of attempts)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._client is not None:
            await self.flush()
            await self._client.aclose()
            self._client = None
