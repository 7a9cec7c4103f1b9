-- The current time in microseconds: `ARGV[i]` when given, Redis's `TIME` otherwise; and
-- `ttl(expire_at_s)`, the seconds from now until then (at least a minute).
local function now_us(arg)
  if arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function ttl(expire_at_s, now)
  return math.max(60, math.floor(tonumber(expire_at_s) - now / 1000000))
end
