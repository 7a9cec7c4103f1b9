-- wrk script: every request sends the next of the keys in KEY_FILE (one per line) in
-- X-API-Key, each wrk thread starting at its own place in the list.
local keys = {}
local i = 0

function setup(thread)
  thread:set("id", tostring(math.random(1, 1000)))
end

function init(args)
  for line in io.lines(os.getenv("KEY_FILE")) do
    keys[#keys + 1] = line
  end
  i = tonumber(id or "1") or 1
end

function request()
  i = (i % #keys) + 1
  return wrk.format("GET", "/api/v1/scans", { ["X-API-Key"] = keys[i] })
end

-- Any answer but 200 is counted, so a refusal cannot pass for throughput.
local non200 = 0
function response(status, headers, body)
  if status ~= 200 then non200 = non200 + 1 end
end
