-- The wrk comparison's requests (bench/harness/wrk.go): GET PATH with a
-- Bearer token taken in turn from TOKENS distinct ones (64 characters
-- each, as an OAuth2 access token may be), and a sequence number in the
-- query, so that no two reads are the same and none is coalesced.
local tokens = tonumber(os.getenv("TOKENS") or "1")
local path = os.getenv("REQ_PATH") or "/v3/records/apps/app1?limit=20"
local headers = {}
for i = 1, tokens do
  local t = string.format("bench-wrk-token-%08d-", i)
  headers[i] = {["Authorization"] = "Bearer " .. t .. string.rep("x", 64 - #t), ["Accept"] = "application/json"}
end
local n, seq = 0, 0
local sep = path:find("?", 1, true) and "&" or "?"
request = function()
  n = n % tokens + 1
  seq = seq + 1
  return wrk.format("GET", path .. sep .. "seq=" .. seq, headers[n])
end
-- done prints what the driver parses: one line, after wrk's own report.
done = function(summary, latency, requests)
  local s = summary
  io.write(string.format("WRK requests=%d duration_us=%d errors=%d status=%d p50_us=%d p99_us=%d\n",
    s.requests, s.duration, s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout,
    s.errors.status, latency:percentile(50), latency:percentile(99)))
end
