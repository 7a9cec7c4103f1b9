-- KEYS as for ACQUIRE; ARGV: now_us ('' for Redis `TIME`). The slots held now.
local now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) else
  local t = redis.call('TIME'); now = tonumber(t[1]) * 1000000 + tonumber(t[2]) end
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
