-- redis_release.lua: give back one slot a take counted and nobody used
-- (the client left while waiting for it).
--
-- KEYS[1]  the key's HASH (see redis_take.lua)
-- ARGV[1]  the field the slot was counted in: "<bucket>" or "q<start>"
-- ARGV[2]  the epoch of the key that counted it
--
-- Only a slot of this incarnation of the key is given back: after Redis
-- lost the key, the field may hold another replica's counts, which must
-- not be lowered. Returns 1 when a slot was given back, else 0.
if redis.replicate_commands then redis.replicate_commands() end

local key = KEYS[1]
local m = redis.call('HGET', key, 'm')
if not m or string.match(m, '^(%d+):') ~= ARGV[2] then return 0 end
local n = tonumber(redis.call('HGET', key, ARGV[1]) or '0') or 0
if n < 1 then return 0 end
if n == 1 then
  redis.call('HDEL', key, ARGV[1])
else
  redis.call('HINCRBY', key, ARGV[1], -1)
end
return 1
