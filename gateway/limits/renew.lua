-- Extend live parallel-request leases (only those that still exist) by lease ttl from Redis's now.
-- KEYS: lease zsets; ARGV: lease ttl ms, then one lease id per key
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], 'XX', now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', KEYS[i], ttl + 1000)
end
return 1
