-- redis_block.lua: refuse every take for a key until TIME + d.
--
-- KEYS[1]  the key's HASH (see redis_take.lua)
-- ARGV[1]  d, ms (> 0)
-- ARGV[2]  "" (use TIME) or a time in ms (test hook)
--
-- Sets blocked_until = max(existing, now + d), keeps the key alive at least
-- that long, and returns the key's epoch.
if redis.replicate_commands then redis.replicate_commands() end

local key = KEYS[1]
local d = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] ~= nil and ARGV[2] ~= '' then now = tonumber(ARGV[2]) end

local epoch, blocked = nil, 0
local m = redis.call('HGET', key, 'm')
if m then
  local e, b = string.match(m, '^(%d+):(%d+)$')
  epoch, blocked = e, tonumber(b) or 0
end
if epoch == nil then epoch = t[1] .. string.format('%06d', tonumber(t[2])) end
if now + d > blocked then blocked = now + d end
redis.call('HSET', key, 'm', epoch .. ':' .. string.format('%.0f', blocked))
local pttl = redis.call('PTTL', key)
if pttl < blocked - now then redis.call('PEXPIRE', key, blocked - now) end
return epoch
