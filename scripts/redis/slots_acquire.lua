-- KEYS: the tenant's slots (a sorted set: slot id → lapse time in µs), its void slot ids
-- (id → until when it is remembered). ARGV: limit, id, lapse_us, now_us ('' for Redis
-- `TIME`). A voided id takes nothing (2). Lapsed slots are dropped first. 1 when taken.
if redis.call('ZSCORE', KEYS[2], ARGV[2]) then return 2 end
local now
if ARGV[4] ~= '' then now = tonumber(ARGV[4]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000000 + tonumber(t[2]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
local lapse = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now + lapse, ARGV[2])
local longest = tonumber(redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2])
redis.call('PEXPIRE', KEYS[1], math.ceil((longest - now) / 1000) + 1000)
return 1
