-- One gateway instance says it is alive, and learns how many are.
--
-- A sorted set of instance ids scored by the time (Redis's clock, ms) of their last heartbeat.
-- Entries older than the liveness TTL are dropped, so a crashed instance stops counting after
-- at most that long; the set itself expires when every instance is gone.
--
-- KEYS[1]: the instance set
-- ARGV: instance id, liveness ttl ms
-- Returns the number of live instances (this one included).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return redis.call('ZCARD', KEYS[1])
