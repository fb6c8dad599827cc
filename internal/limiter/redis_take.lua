-- redis_take.lua: one admission for one key, atomically. It mirrors
-- MemoryStore.take exactly, in milliseconds and on Redis's own clock.
--
-- KEYS[1]  the key's HASH, PREFIX:{KEY}:q. Fields:
--            "<bucket>"  attempts counted in sub-bucket <bucket>
--                        (floor(ms / width), Redis TIME);
--            "m"         "<epoch>:<blocked_until_ms>": the epoch names this
--                        incarnation of the key (TIME in microseconds when
--                        the script created it), so a replica can tell that
--                        Redis lost what it wrote; blocked_until_ms is 0 or
--                        the end of a Block.
-- ARGV[1]  limit
-- ARGV[2]  bucket width, ms
-- ARGV[3]  span (window + margin), ms
-- ARGV[4]  ahead: requests queued before the caller (>0 never counts)
-- ARGV[5]  "" (use TIME) or a time in ms: a test hook, never set in
--          production
-- ARGV[6]  want: slots to count at once (a lease, with hold > 0)
-- ARGV[7]  hold, ms: 0 for an ordinary take; otherwise a lease, whose slots
--          may be used until now + hold, so they are counted in the bucket
--          of now + hold
--
-- A lease grants min(want, 1/16 of what is left) slots, at least one: as
-- the quota runs low, leases shrink to single slots and no replica sits
-- on slots another could use.
--
-- Returns {allowed, remaining, retry_after_ms, reset_after_ms, blocked,
--          bucket, now_ms, epoch, granted}; bucket is the one counted in,
--          epoch is "" when the key does not exist.
if redis.replicate_commands then redis.replicate_commands() end

local key = KEYS[1]
local limit = tonumber(ARGV[1])
local width = tonumber(ARGV[2])
local span = tonumber(ARGV[3])
local ahead = tonumber(ARGV[4])
local want = tonumber(ARGV[6]) or 1
local hold = tonumber(ARGV[7]) or 0

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[5] ~= nil and ARGV[5] ~= '' then now = tonumber(ARGV[5]) end

local cur = math.floor(now / width)
-- A bucket b stops counting at (b+1)*width + span: counted whole until its
-- last possible member has aged out.
local first = math.floor((now - span) / width)

local flat = redis.call('HGETALL', key)
local live = {}
local dead = {}
local epoch, blocked = nil, 0
for i = 1, #flat, 2 do
  local f = flat[i]
  if f == 'm' then
    local e, b = string.match(flat[i + 1], '^(%d+):(%d+)$')
    epoch, blocked = e, tonumber(b) or 0
  else
    local b = tonumber(f)
    if b == nil or b < first then
      dead[#dead + 1] = f
    else
      -- Buckets after cur only exist if Redis's clock stepped back (a
      -- failover to another host): they keep counting, which is safe.
      live[#live + 1] = {b, tonumber(flat[i + 1]) or 0}
    end
  end
end
for i = 1, #dead, 500 do
  redis.call('HDEL', key, unpack(dead, i, math.min(i + 499, #dead)))
end
local function by_bucket(x, y) return x[1] < y[1] end
table.sort(live, by_bucket)

local used = 0
for i = 1, #live do used = used + live[i][2] end

-- free_after returns how long until need counted slots have aged out. When
-- fewer are counted it extrapolates a whole span per limit still missing.
local function free_after(need)
  local freed, last = 0, nil
  for i = 1, #live do
    local b, c = live[i][1], live[i][2]
    if c > 0 then
      freed = freed + c
      last = b
      if freed >= need then return (b + 1) * width + span - now end
    end
  end
  if last == nil then return 0 end
  local extra = math.floor((need - freed + limit - 1) / limit)
  return (last + 1) * width + span - now + extra * span
end

if blocked > now then
  local d = blocked - now
  return {0, 0, d, d, 1, cur, now, epoch or '', 0}
end

local allowed, granted, at = 0, 0, cur
if ahead == 0 and used < limit then
  granted = 1
  if hold > 0 then
    granted = math.max(1, math.min(want, math.floor((limit - used) / 16)))
    at = math.floor((now + hold) / width)
  end
  redis.call('HINCRBY', key, string.format('%.0f', at), granted)
  local found = false
  for i = 1, #live do
    if live[i][1] == at then
      live[i][2] = live[i][2] + granted
      found = true
    end
  end
  if not found then
    live[#live + 1] = {at, granted}
    table.sort(live, by_bucket)
  end
  if epoch == nil then
    epoch = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('HSET', key, 'm', epoch .. ':' .. string.format('%.0f', blocked))
  end
  used = used + granted
  allowed = 1
  -- The key lives exactly as long as its newest bucket (or a block) counts:
  -- an idle token costs nothing once its window has passed. When the
  -- bucket already existed, the take that created it set that TTL.
  if not found then
    local ttl = (live[#live][1] + 1) * width + span - now
    if blocked - now > ttl then ttl = blocked - now end
    redis.call('PEXPIRE', key, ttl)
  end
end

local remaining = limit - used
if remaining < 0 then remaining = 0 end
local reset = free_after(1)
local retry = 0
if allowed == 0 then
  local need = used - limit + 1 + ahead
  if need > 0 then retry = free_after(need) end
end
return {allowed, remaining, retry, reset, 0, at, now, epoch or '', granted}
