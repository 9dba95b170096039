-- Check and reserve one request against one or more limit scopes, atomically, all-or-nothing.
--
-- Algorithm: a sliding window of 1-second buckets per scope (a hash: "r<sec>" -> requests,
-- "t<sec>" -> tokens). Why not GCRA: GCRA refills continuously, so "N per minute" admits
-- N at once and then one more every 60/N s; callers (and our two-instance test) expect at
-- most N in any minute. A sliding log (one zset member per request) is exact but costs
-- O(limit) memory and cannot weigh tokens. Buckets give both RPM and TPM in O(window)
-- with 1 s resolution, and settling tokens is an HINCRBY on the bucket of the reservation.
--
-- Running sums: besides its buckets the hash keeps "R" and "T" (the sums of the live r and t
-- buckets) and "o" (the first second at or after the window's start with a non-empty bucket;
-- every older bucket is gone and subtracted). An admission reads those three fields and retires
-- only the seconds that left the window since the last one, so its cost does not grow with the
-- window. Measured with redis-benchmark on one scope: reading every bucket (HGETALL) cost 71-79 us
-- of Redis CPU per admission once a 60 s window was full, against 10-15 us for an empty one.
-- A hash without "o" (written before the sums existed, or re-created by a late settle) is summed
-- once from its buckets; so is one whose "o" fell more than a window behind.
--
-- Parallel requests: a sorted set of leases scored by their expiry, so a slot held by a
-- process that died frees itself after lease_ttl; live holders renew their leases.
--
-- The clock is Redis's (TIME), so gateways with skewed clocks agree on the window.
-- Every scope is checked first; only when all admit are the reservations written.
--
-- KEYS: per scope, its window hash and its lease zset (one hash tag per scope)
-- ARGV: estimated tokens, lease id, lease ttl ms (0: check parallel slots but take none), window s,
--       then per scope: rpm, tpm, max_parallel (0 = unlimited)
-- Returns one string (a single bulk reply is much cheaper for the client to parse than an
-- array of integers): per scope "reason,requests,tokens,parallel,reset_requests_ms,
-- reset_tokens_ms,retry_ms,bucket", scopes joined by ";".
-- reason: 0 ok, 1 rpm, 2 tpm, 3 parallel, 4 request larger than tpm
local est = tonumber(ARGV[1])
local lease = ARGV[2]
local lease_ttl = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local nscopes = #KEYS / 2

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local sec = math.floor(now / 1000)
local oldest = sec - window + 1

-- Drop the retired buckets, write the sums and the first non-empty second; returns the sums.
local function store(wkey, stale, reqs, toks, first)
  if #stale > 0 then redis.call('HDEL', wkey, unpack(stale)) end
  redis.call('HSET', wkey, 'R', reqs, 'T', toks, 'o', first or sec)
  return reqs, toks, first
end

-- Sum the live buckets from scratch, drop the stale ones; returns requests, tokens, first second.
local function rescan(wkey)
  local h = redis.call('HGETALL', wkey)
  if #h == 0 then return 0, 0, nil end
  local reqs, toks, first = 0, 0, nil
  local stale = {}
  for i = 1, #h, 2 do
    local f = h[i]
    local c = string.byte(f, 1)
    if c == 114 or c == 116 then -- 'r' or 't': a bucket
      local b = tonumber(string.sub(f, 2))
      local v = tonumber(h[i + 1])
      if b < oldest then
        stale[#stale + 1] = f
      else
        if c == 114 then reqs = reqs + v else toks = toks + v end
        if v ~= 0 and (first == nil or b < first) then first = b end
      end
    end
  end
  return store(wkey, stale, reqs, toks, first)
end

-- The window's totals now: retire the seconds that left it since "o", then move "o" to the
-- first non-empty second (each second is looked at once, in chunks of a few seconds).
local function totals(wkey)
  local h = redis.call('HMGET', wkey, 'R', 'T', 'o')
  local o = tonumber(h[3])
  if o == nil or o < oldest - window then return rescan(wkey) end
  local reqs, toks = tonumber(h[1]) or 0, tonumber(h[2]) or 0
  if o >= oldest then
    if reqs == 0 and toks == 0 then return 0, 0, nil end -- "o" may name an empty second
    return reqs, toks, o
  end
  -- Many seconds to retire (sparse traffic): reading the few buckets there are is cheaper.
  if oldest - o > 8 and redis.call('HLEN', wkey) < 2 * (oldest - o) then return rescan(wkey) end
  local stale = {}
  local first = nil
  local b = o
  while first == nil and b <= sec do
    local last = math.min(sec, b + 7)
    local fields = {}
    for s = b, last do
      fields[#fields + 1] = 'r' .. s
      fields[#fields + 1] = 't' .. s
    end
    local v = redis.call('HMGET', wkey, unpack(fields))
    for i = 1, #fields, 2 do
      local s = b + (i - 1) / 2
      local r, k = tonumber(v[i]) or 0, tonumber(v[i + 1]) or 0
      if s < oldest then
        reqs, toks = reqs - r, toks - k
        if v[i] then stale[#stale + 1] = fields[i] end
        if v[i + 1] then stale[#stale + 1] = fields[i + 1] end
      elseif r ~= 0 or k ~= 0 then
        first = s
        break
      end
    end
    b = last + 1
  end
  return store(wkey, stale, reqs, toks, first)
end

-- Buckets of tokens in the window, oldest first (only for a TPM refusal's retry time).
local function token_buckets(wkey)
  local h = redis.call('HGETALL', wkey)
  local tb = {}
  for i = 1, #h, 2 do
    local f = h[i]
    if string.byte(f, 1) == 116 then
      local b, v = tonumber(string.sub(f, 2)), tonumber(h[i + 1])
      if b >= oldest and v > 0 then tb[#tb + 1] = {b, v} end
    end
  end
  table.sort(tb, function(a, b) return a[1] < b[1] end)
  return tb
end

local state = {}
local refused = 0
for s = 1, nscopes do
  local wkey, pkey = KEYS[2 * s - 1], KEYS[2 * s]
  local rpm = tonumber(ARGV[4 + 3 * s - 2])
  local tpm = tonumber(ARGV[4 + 3 * s - 1])
  local maxp = tonumber(ARGV[4 + 3 * s])
  local reqs, toks, first = 0, 0, nil
  if rpm > 0 or tpm > 0 then reqs, toks, first = totals(wkey) end

  local reason, retry = 0, 0
  if rpm > 0 and reqs + 1 > rpm then
    reason = 1
    retry = ((first or sec) + window) * 1000 - now
  elseif tpm > 0 and est > tpm then
    reason = 4
    retry = window * 1000
  elseif tpm > 0 and toks + est > tpm then
    reason = 2
    local need, freed = toks + est - tpm, 0
    retry = window * 1000
    for _, bv in ipairs(token_buckets(wkey)) do
      freed = freed + bv[2]
      if freed >= need then
        retry = (bv[1] + window) * 1000 - now
        break
      end
    end
  end

  local par = 0
  if maxp > 0 then
    redis.call('ZREMRANGEBYSCORE', pkey, '-inf', now)
    par = redis.call('ZCARD', pkey)
    if reason == 0 and par >= maxp then
      reason = 3
      retry = 1000
    end
  end
  if reason ~= 0 and refused == 0 then refused = s end
  state[s] = {reason, reqs, toks, par, first, retry, rpm, tpm, maxp}
end

local out = {}
for s = 1, nscopes do
  local st = state[s]
  local reason, reqs, toks, par, first, retry = st[1], st[2], st[3], st[4], st[5], st[6]
  if refused == 0 then
    local wkey, pkey = KEYS[2 * s - 1], KEYS[2 * s]
    if st[7] > 0 or st[8] > 0 then
      redis.call('HINCRBY', wkey, 'r' .. sec, 1)
      if est > 0 then redis.call('HINCRBY', wkey, 't' .. sec, est) end
      reqs = reqs + 1
      toks = toks + est
      if first == nil then first = sec end
      redis.call('HSET', wkey, 'R', reqs, 'T', toks, 'o', first)
      redis.call('PEXPIRE', wkey, (window + 1) * 1000)
    end
    if st[9] > 0 and lease_ttl > 0 then -- lease_ttl 0: an instant admission holds no slot
      redis.call('ZADD', pkey, now + lease_ttl, lease)
      redis.call('PEXPIRE', pkey, lease_ttl + 1000)
      par = par + 1
    end
  end
  -- Both resets run from the first non-empty second: the window's oldest counted request.
  local reset_r, reset_t = 0, 0
  if first ~= nil and reqs > 0 then reset_r = (first + window) * 1000 - now end
  if first ~= nil and toks > 0 then reset_t = (first + window) * 1000 - now end
  out[s] = string.format('%d,%d,%d,%d,%d,%d,%d,%d', reason, reqs, toks, par, reset_r, reset_t, retry, sec)
end
return table.concat(out, ';')
