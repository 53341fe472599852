-- wrk script of bench/harness.py: every request sends a random one of the seeded session cookies.
--
--   wrk -t1 -cN -dSs --latency -s harness_wrk.lua http://127.0.0.1:PORT/ -- COOKIES PATH MIN
--
-- COOKIES: a file with one "name=value" cookie per line (the seeded sessions); no lines
--          means no Cookie header (bare Tornado).
-- PATH:    the request path ("/").
-- MIN:     the smallest counter a 2xx body may hold (the seeded value); a smaller or
--          non-numeric body counts as "lost" (a session that was not found). -1: no check.
--
-- done() prints one line "GSBENCH {json}" with the totals; latencies are in microseconds.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local requests = {}
local check_min = -1
non2xx = 0
lost = 0

function init(args)
  local cookies, path = args[1], args[2] or "/"
  check_min = tonumber(args[3] or "-1")
  if cookies and cookies ~= "" then
    local f = assert(io.open(cookies, "r"))
    for line in f:lines() do
      if #line > 0 then
        requests[#requests + 1] = wrk.format("GET", path, { ["Cookie"] = line })
      end
    end
    f:close()
  end
  if #requests == 0 then
    requests[1] = wrk.format("GET", path)
  end
  math.randomseed(os.time() + #requests)
end

function request()
  return requests[math.random(#requests)]
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
  elseif check_min >= 0 then
    local n = tonumber(body)
    if n == nil or n < check_min then
      lost = lost + 1
    end
  end
end

function done(summary, latency, requests)
  local bad, missing = 0, 0
  for _, thread in ipairs(threads) do
    bad = bad + (thread:get("non2xx") or 0)
    missing = missing + (thread:get("lost") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'GSBENCH {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "timeout": %d, "status": %d, "non2xx": %d, "lost": %d, "p50_us": %d, ' ..
    '"p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.timeout,
    e.status, bad, missing, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean))
end
