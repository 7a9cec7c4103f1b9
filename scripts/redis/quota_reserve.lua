-- KEYS: used (hash f, s), functional reservations (zset), security reservations (zset),
-- void reservation ids (zset: id → until when it is remembered). ARGV: limit_f, limit_s
-- (-1: unlimited), need_f, need_s, id, lifetime_us, expire_at_s, now_us ('' for Redis TIME).
-- A voided id (its request was answered with an error before this script ran) reserves
-- nothing: `{2}`. Expired reservations (an instance that died mid-request) are dropped
-- first. Returns `{1, functional ahead, security ahead}` when granted (used and reserved
-- before this reservation), `{0, functional used, security used}` otherwise.
if redis.call('ZSCORE', KEYS[4], ARGV[5]) then return {2} end
local now = now_us(ARGV[8])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
local used = redis.call('HMGET', KEYS[1], 'f', 's')
local uf = tonumber(used[1]) or 0
local us = tonumber(used[2]) or 0
local lf = tonumber(ARGV[1])
local ls = tonumber(ARGV[2])
local nf = tonumber(ARGV[3])
local ns = tonumber(ARGV[4])
local af = uf + redis.call('ZCARD', KEYS[2])
local as = us + redis.call('ZCARD', KEYS[3])
if (nf > 0 and lf >= 0 and af + nf > lf) or (ns > 0 and ls >= 0 and as + ns > ls) then
  return {0, uf, us}
end
local expires = now + tonumber(ARGV[6])
if nf > 0 then redis.call('ZADD', KEYS[2], expires, ARGV[5]) end
if ns > 0 then redis.call('ZADD', KEYS[3], expires, ARGV[5]) end
for i = 2, 3 do redis.call('EXPIRE', KEYS[i], ttl(ARGV[7], now)) end
return {1, af, as}
