-- redis_writeback.lua: reconciliation. Adds to a key's buckets what one
-- replica admitted and Redis does not hold, in one atomic call.
--
-- KEYS[1]  the key's HASH (see redis_take.lua)
-- ARGV[1]  bucket width, ms
-- ARGV[2]  span, ms
-- ARGV[3]  blocked until, Redis ms (0: none): a Block made while Redis was away
-- ARGV[4]  "" (use TIME) or a time in ms (test hook)
-- ARGV[5]  how many buckets after the current one a count may be in (leased
--          slots are counted ahead, see redis_take.lua)
-- ARGV[6..] quadruples tag, kind, at, count. tag is the epoch of the key
--          the count was admitted through ("" for counts admitted locally);
--          kind 0 is a take in bucket at, kind 1 a reservation from at (ms).
--          A count is written unless its tag is the key's current epoch,
--          i.e. unless Redis already holds it: after a restart, a flush or
--          an eviction the key is gone or has a new epoch, and every count
--          is written back, those made before the outage included.
--
-- Dead counts are skipped; taken buckets further ahead than ARGV[5] (a
-- replica whose clock estimate runs ahead) are counted in the last one
-- allowed, which is never earlier than where the take counted them.
-- Reservations are written where they start. Returns {epoch, written}.
if redis.replicate_commands then redis.replicate_commands() end

local key = KEYS[1]
local width = tonumber(ARGV[1])
local span = tonumber(ARGV[2])
local block = tonumber(ARGV[3])
local ahead = tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[4] ~= nil and ARGV[4] ~= '' then now = tonumber(ARGV[4]) end
local cur = math.floor(now / width)
local first = math.floor((now - span) / width)

local epoch, blocked = nil, 0
local m = redis.call('HGET', key, 'm')
if m then
  local e, b = string.match(m, '^(%d+):(%d+)$')
  epoch, blocked = e, tonumber(b) or 0
end

local written, newest = 0, nil
for i = 6, #ARGV, 4 do
  local tag, kind, at, c = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  local field, b = nil, at
  if kind == '1' then
    b = math.floor(at / width)
    field = 'q' .. string.format('%.0f', at)
  elseif b > cur + ahead then
    b = cur + ahead
  end
  if field == nil then field = string.format('%.0f', b) end
  if tag ~= epoch and b >= first and c > 0 then
    redis.call('HINCRBY', key, field, c)
    written = written + c
    if newest == nil or b > newest then newest = b end
  end
end

if written == 0 and block <= now then
  return {epoch or '', 0}
end
if epoch == nil then epoch = t[1] .. string.format('%06d', tonumber(t[2])) end
if block > blocked then blocked = block end
redis.call('HSET', key, 'm', epoch .. ':' .. string.format('%.0f', blocked))
local ttl = 0
if newest ~= nil then ttl = (newest + 1) * width + span - now end
if blocked - now > ttl then ttl = blocked - now end
local pttl = redis.call('PTTL', key)
if pttl < ttl then redis.call('PEXPIRE', key, ttl) end
return {epoch, written}
