-- Each request a distinct 1 KB token: prefix .. n, n counting up to limit,
-- then starting again (no new token beyond limit).
local n = 0
local prefix = os.getenv("PREFIX") or "tok-"
local limit = tonumber(os.getenv("LIMIT") or "100000")
local pad = string.rep("x", 1000)
request = function()
  n = n + 1
  if n > limit then n = 1 end
  return wrk.format("GET", "/v3/apps", {["Authorization"] = "Bearer " .. prefix .. n .. pad})
end
