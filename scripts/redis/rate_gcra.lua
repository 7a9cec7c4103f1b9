-- One GCRA step in Redis: the same arithmetic as the in-memory store, in microseconds (Lua
-- numbers are doubles; microseconds since 1970 stay exact, and `%d` writes them exactly).
-- State is one string `"tat:limit"` with an expiry. ARGV: limit, interval_us, now_us (''
-- for Redis `TIME`), and `1` to only look (nothing is stored). Returns `{allowed, remaining,
-- retry_after_us, reset_us}`.
local limit = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local now
if ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = t[1] * 1000000 + t[2]
end
local tolerance = interval * limit
local tat = 0
local state = redis.call('GET', KEYS[1])
if state then
  local sep = string.find(state, ':', 1, true)
  tat = tonumber(string.sub(state, 1, sep - 1))
  local old = tonumber(string.sub(state, sep + 1))
  if old ~= limit and tat > now then
    local level = math.ceil((tat - now) * interval / math.ceil(60000000 / old))
    if level > tolerance then level = tolerance end
    tat = now + level
  end
end
if ARGV[4] == '1' then
  local backlog = math.max(tat - now, 0)
  local k = math.floor((tolerance - backlog) / interval)
  if k >= 1 then return {1, k, 0, backlog} end
  return {0, 0, backlog + interval - tolerance, backlog}
end
local new_tat = math.max(tat, now) + interval
local ahead = new_tat - now
if ahead > tolerance then
  return {0, 0, ahead - tolerance, math.max(tat - now, 0)}
end
redis.call('SET', KEYS[1], string.format('%d:%d', new_tat, limit), 'PX', math.ceil(ahead / 1000) + 1000)
return {1, math.floor((tolerance - ahead) / interval), 0, ahead}
