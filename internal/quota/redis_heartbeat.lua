-- redis_heartbeat.lua: a replica says it is alive and counting through
-- Redis, and learns how many replicas have gone silent (see the quota
-- bound in fallback.go).
--
-- KEYS[1]  PREFIX:replicas, a ZSET: member = replica id, score = the Redis
--          time (ms) of its last heartbeat
-- ARGV[1]  the replica's id
-- ARGV[2]  valid until, Redis ms (the replica's estimate): a heartbeat that
--          reaches Redis later (it sat in a stalled socket) is not counted,
--          so a replica knows the latest moment it may have been seen alive
-- ARGV[3]  alive, ms: a replica not heard from for longer is silent (it
--          may be counting locally)
-- ARGV[4]  forget, ms: a replica silent for longer is dropped
-- ARGV[5]  "" (use TIME) or a time in ms (test hook)
--
-- Returns {silent, members, now}, silent = -1 when the heartbeat was
-- stale (members then counts the ZSET as it is).
if redis.replicate_commands then redis.replicate_commands() end

local key = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[5] ~= nil and ARGV[5] ~= '' then now = tonumber(ARGV[5]) end
local alive, forget = tonumber(ARGV[3]), tonumber(ARGV[4])
local fmt = function(n) return string.format('%.0f', n) end

if tonumber(ARGV[2]) < now then
  return {-1, redis.call('ZCARD', key), now}
end
redis.call('ZADD', key, fmt(now), ARGV[1])
redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. fmt(now - forget))
local silent = redis.call('ZCOUNT', key, fmt(now - forget), '(' .. fmt(now - alive))
redis.call('PEXPIRE', key, forget)
return {silent, redis.call('ZCARD', key), now}
