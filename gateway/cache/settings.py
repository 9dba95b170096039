"""``cache_settings`` in the gateway config."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CacheSettings(BaseModel):
    """The response cache.

    Entries live in Redis when ``general_settings.redis_url`` is set (shared by every gateway
    process), else in process; a small LRU sits in front either way. ``shared: false`` (the
    default) keeps an entry visible only to the team (or key, without a team) that created
    it; ``shared: true`` lets every caller hit every entry.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    ttl: float = Field(default=600.0, gt=0)
    shared: bool = False
    # Sampling at temperature > 0 (OpenAI's default is 1) gives a different answer each time;
    # caching it freezes one sample, so it is opt-in.
    cache_nonzero_temperature: bool = False
    local_lru_size: int = Field(default=4096, ge=0)
    local_lru_bytes: int = Field(default=64 * 1024 * 1024, ge=0)
    # Larger responses are not cached (they would evict many small ones).
    max_entry_bytes: int = Field(default=4 * 1024 * 1024, ge=1)
    key_prefix: str = "sy"
