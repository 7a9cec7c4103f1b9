-- KEYS as for ACQUIRE; ARGV: id, keep_us, now_us. Frees the slot `id` and stops it from
-- being taken if its acquisition is still on its way.
local now
if ARGV[3] ~= '' then now = tonumber(ARGV[3]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000000 + tonumber(t[2]) end
local keep = tonumber(ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + keep, ARGV[1])
redis.call('PEXPIRE', KEYS[2], math.ceil(keep / 1000) + 1000)
return 1
