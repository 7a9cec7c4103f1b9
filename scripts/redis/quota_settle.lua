-- KEYS as for RESERVE; ARGV: id, expire_at_s, what (`1`: charge, `0`: release, `v`: void,
-- a release that also stops a reservation still on its way from being made), now_us,
-- lifetime_us. A reservation that already lapsed is not charged; settling twice changes
-- nothing.
local now = now_us(ARGV[4])
local f = redis.call('ZREM', KEYS[2], ARGV[1])
local s = redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[3] == '1' then
  if f > 0 then redis.call('HINCRBY', KEYS[1], 'f', 1) end
  if s > 0 then redis.call('HINCRBY', KEYS[1], 's', 1) end
  redis.call('EXPIRE', KEYS[1], ttl(ARGV[2], now))
elseif ARGV[3] == 'v' then
  local lifetime = tonumber(ARGV[5])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  redis.call('ZADD', KEYS[4], now + lifetime, ARGV[1])
  redis.call('PEXPIRE', KEYS[4], math.ceil(lifetime / 1000) + 1000)
end
return f + s
