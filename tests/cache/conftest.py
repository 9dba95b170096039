"""Real Redis (shared at 127.0.0.1:6379 when present, else a private redis-server) and real gateways."""

from tests.support.limits_cache_gateways import gateway_pair
from tests.support.redis_server import own_redis, redis_prefix, redis_url

__all__ = ["gateway_pair", "own_redis", "redis_prefix", "redis_url"]
