-- Check and reserve one request against one or more limit scopes, atomically, all-or-nothing.
--
-- Algorithm: a sliding window of 1-second buckets per scope (a hash: "r<sec>" -> requests,
-- "t<sec>" -> tokens). Why not GCRA: GCRA refills continuously, so "N per minute" admits
-- N at once and then one more every 60/N s; callers (and our two-instance test) expect at
-- most N in any minute. A sliding log (one zset member per request) is exact but costs
-- O(limit) memory and cannot weigh tokens. Buckets give both RPM and TPM in O(window)
-- with 1 s resolution, and settling tokens is an HINCRBY on the bucket of the reservation.
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

local state = {}
local refused = 0
for s = 1, nscopes do
  local wkey, pkey = KEYS[2 * s - 1], KEYS[2 * s]
  local rpm = tonumber(ARGV[4 + 3 * s - 2])
  local tpm = tonumber(ARGV[4 + 3 * s - 1])
  local maxp = tonumber(ARGV[4 + 3 * s])
  local reqs, toks = 0, 0
  local rmin, tmin = nil, nil
  local tb = {}
  if rpm > 0 or tpm > 0 then
    local h = redis.call('HGETALL', wkey)
    local stale = {}
    for i = 1, #h, 2 do
      local f = h[i]
      local b = tonumber(string.sub(f, 2))
      local v = tonumber(h[i + 1])
      if b < oldest then
        stale[#stale + 1] = f
      elseif string.byte(f, 1) == 114 then -- 'r'
        reqs = reqs + v
        if v > 0 and (rmin == nil or b < rmin) then rmin = b end
      else
        toks = toks + v
        if v > 0 then
          tb[#tb + 1] = {b, v}
          if tmin == nil or b < tmin then tmin = b end
        end
      end
    end
    if #stale > 0 then redis.call('HDEL', wkey, unpack(stale)) end
  end

  local reason, retry = 0, 0
  if rpm > 0 and reqs + 1 > rpm then
    reason = 1
    retry = (rmin + window) * 1000 - now
  elseif tpm > 0 and est > tpm then
    reason = 4
    retry = window * 1000
  elseif tpm > 0 and toks + est > tpm then
    reason = 2
    table.sort(tb, function(a, b) return a[1] < b[1] end)
    local need, freed = toks + est - tpm, 0
    retry = window * 1000
    for _, bv in ipairs(tb) do
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
  state[s] = {reason, reqs, toks, par, rmin, tmin, retry, rpm, tpm, maxp}
end

local out = {}
for s = 1, nscopes do
  local st = state[s]
  local reason, reqs, toks, par, rmin, tmin, retry = st[1], st[2], st[3], st[4], st[5], st[6], st[7]
  if refused == 0 then
    local wkey, pkey = KEYS[2 * s - 1], KEYS[2 * s]
    if st[8] > 0 or st[9] > 0 then
      redis.call('HINCRBY', wkey, 'r' .. sec, 1)
      if est > 0 then redis.call('HINCRBY', wkey, 't' .. sec, est) end
      redis.call('PEXPIRE', wkey, (window + 1) * 1000)
      reqs = reqs + 1
      toks = toks + est
      if rmin == nil then rmin = sec end
      if tmin == nil and est > 0 then tmin = sec end
    end
    if st[10] > 0 and lease_ttl > 0 then -- lease_ttl 0: an instant admission holds no slot
      redis.call('ZADD', pkey, now + lease_ttl, lease)
      redis.call('PEXPIRE', pkey, lease_ttl + 1000)
      par = par + 1
    end
  end
  local reset_r, reset_t = 0, 0
  if rmin ~= nil then reset_r = (rmin + window) * 1000 - now end
  if tmin ~= nil then reset_t = (tmin + window) * 1000 - now end
  out[s] = string.format('%d,%d,%d,%d,%d,%d,%d,%d', reason, reqs, toks, par, reset_r, reset_t, retry, sec)
end
return table.concat(out, ';')
