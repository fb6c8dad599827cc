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
-- ARGV[6..] triples tag, bucket, count. tag is the epoch of the key the
--          count was admitted through ("" for counts admitted locally). A
--          count is written unless its tag is the key's current epoch, i.e.
--          unless Redis already holds it: after a restart, a flush or an
--          eviction the key is gone or has a new epoch, and every count is
--          written back, those made before the outage included.
--
-- Dead buckets are skipped; buckets further ahead than ARGV[5] (a replica
-- whose clock estimate runs ahead) are counted in the last one allowed,
-- which is never earlier than where the take counted them. Returns
-- {epoch, written}.
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
for i = 6, #ARGV, 3 do
  local tag, b, c = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  if tag ~= epoch and b >= first and c > 0 then
    if b > cur + ahead then b = cur + ahead end
    redis.call('HINCRBY', key, string.format('%.0f', b), c)
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
