-- Settle one admitted request in one or more scopes: correct the token reservation with the
-- real usage, optionally take the request back (a rollback when another scope refused), and
-- free the parallel-request lease. Keeps the window's running sums ("R", "T"; admit.lua) in step.
--
-- KEYS: per scope, its window hash and its lease zset
-- ARGV: request delta, estimated tokens, actual tokens, lease id, window s,
--       then per scope: bucket (the second its reservation went into), holds lease (0/1)
local rdelta = tonumber(ARGV[1])
local est = tonumber(ARGV[2])
local actual = tonumber(ARGV[3])
local lease = ARGV[4]
local window = tonumber(ARGV[5])

local t = redis.call('TIME')
local sec = tonumber(t[1])
for s = 1, #KEYS / 2 do
  local wkey, pkey = KEYS[2 * s - 1], KEYS[2 * s]
  local b = tonumber(ARGV[5 + 2 * s - 1])
  if b >= sec - window + 1 then
    if redis.call('EXISTS', wkey) == 1 then
      -- The reservation is still in the window: swap the estimate for the real count.
      -- The bucket is at or after "o" (it holds this request), so it is in the running sums.
      if rdelta ~= 0 then
        redis.call('HINCRBY', wkey, 'r' .. b, rdelta)
        redis.call('HINCRBY', wkey, 'R', rdelta)
      end
      if actual ~= est then
        redis.call('HINCRBY', wkey, 't' .. b, actual - est)
        redis.call('HINCRBY', wkey, 'T', actual - est)
      end
    end
  elseif actual > 0 then
    -- A long stream outlived the window its estimate sat in: count its tokens now.
    redis.call('HINCRBY', wkey, 't' .. sec, actual)
    if redis.call('HEXISTS', wkey, 'o') == 1 then
      redis.call('HINCRBY', wkey, 'T', actual)
    end -- else admit.lua sums the re-created hash from its buckets
    redis.call('PEXPIRE', wkey, (window + 1) * 1000)
  end
  if ARGV[5 + 2 * s] == '1' then redis.call('ZREM', pkey, lease) end
end
return 1
