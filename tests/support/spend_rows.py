"""A key's spend rows as the doors' tests compare them with what clients received."""

from __future__ import annotations

import asyncio
import time

import asyncpg


def spend_rows(database_url: str, key_hash: str, count: int) -> list[asyncpg.Record]:
    """The key's spend rows, oldest first, once ``count`` of them are written (spend is written in
    the background), or whatever is there after 30 s."""

    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            deadline = time.monotonic() + 30
            while True:
                rows = await conn.fetch(
                    "SELECT operation, prompt_tokens, completion_tokens, spend, cache_hit, status, stream"
                    " FROM spend_logs WHERE key_hash = $1 ORDER BY start_time",
                    key_hash,
                )
                if len(rows) >= count or time.monotonic() > deadline:
                    return rows
                await asyncio.sleep(0.1)
        finally:
            await conn.close()

    return asyncio.run(fetch())
