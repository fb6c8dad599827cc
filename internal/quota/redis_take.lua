-- redis_take.lua: one admission decision for one key, atomically. It is
-- window.go's decide, step by step, in milliseconds on Redis's own clock
-- (see window.go for the algorithm and why it never over-admits).
--
-- KEYS[1]  the key's HASH, PREFIX:{KEY}:q. Fields:
--            "<bucket>"   slots taken in sub-bucket <bucket> (floor(ms /
--                         width), Redis TIME), used before it ends;
--            "q<start>"   slots reserved from <start> (ms) on, for
--                         requests waiting at some replica;
--            "m"          "<epoch>:<blocked_until_ms>": the epoch names
--                         this incarnation of the key (TIME in microseconds
--                         when a script created it), so a replica can tell
--                         that Redis lost what it wrote; blocked_until_ms
--                         is 0 or the end of a Block.
-- KEYS[2]  optional (never in a Redis Cluster): the instance key,
--          PREFIX:instance = "<instance epoch>:<settle_until_ms>", which
--          names this Redis's incarnation: it is gone after a restart
--          without persistence or a FLUSHALL, so a replica learns that
--          every count it holds may be lost.
-- ARGV[1]  limit
-- ARGV[2]  bucket width, ms
-- ARGV[3]  span (window + margin), ms
-- ARGV[4]  wait, ms: how long the caller can wait for a reserved slot
--          (0: now or never)
-- ARGV[5]  "" (use TIME) or a time in ms: a test hook, never set in
--          production
-- ARGV[6]  want: slots to count at once (a lease, with hold > 0)
-- ARGV[7]  hold, ms: 0 for an ordinary take; otherwise a lease, whose slots
--          may be used until now + hold, so they are counted in the bucket
--          of now + hold
-- ARGV[8]  not before, ms: the caller's smoothing turn (0: none)
-- ARGV[9]  1: peek, count nothing
-- ARGV[10] the epoch the caller holds counts of ("" : none). When the key
--          does not have it, Redis lost those counts (a restart without
--          persistence, a flush, a failover to a replica that never got
--          them): nothing is admitted, and lost = 1 tells the caller to
--          write its counts back first.
-- ARGV[11] the instance epoch the caller last saw ("" : none yet)
-- ARGV[12] settle, ms: when the instance key is missing and the caller saw
--          an earlier incarnation, Redis lost its data: no slot is placed
--          (now or reserved) before now + settle, so that every replica
--          holding counts can write them back first; takes meanwhile are
--          told to ask again then (blocked = 2).
--
-- Returns {allowed, remaining, retry_after_ms, reset_after_ms, blocked,
--          at, now_ms, epoch, granted, delay_ms, usable_ms, reserved,
--          lost, instance}: at
--          is the bucket taken in, or the start reserved from (reserved =
--          1); epoch is "" when the key does not exist; lost as above;
--          instance is the instance epoch ("" without KEYS[2]).
if redis.replicate_commands then redis.replicate_commands() end

local key = KEYS[1]
local limit = tonumber(ARGV[1])
local width = tonumber(ARGV[2])
local span = tonumber(ARGV[3])
local wait = tonumber(ARGV[4]) or 0
local want = tonumber(ARGV[6]) or 1
local hold = tonumber(ARGV[7]) or 0
local notbefore = tonumber(ARGV[8]) or 0
local peek = ARGV[9] == '1'

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[5] ~= nil and ARGV[5] ~= '' then now = tonumber(ARGV[5]) end

local function bucket(ms) return math.floor(ms / width) end
local function ends(b) return (b + 1) * width + span end
local function fmt(n) return string.format('%.0f', n) end

-- Counts: taken[b] and reserved[s], with their keys in tb / rs.
local flat = redis.call('HGETALL', key)
local taken, reserved, tb, rs, dead = {}, {}, {}, {}, {}
local epoch, blocked_until = nil, 0
local used, future, reset, newest = 0, false, -1, 0
for i = 1, #flat, 2 do
  local f, n = flat[i], tonumber(flat[i + 1]) or 0
  if f == 'm' then
    local e, b = string.match(flat[i + 1], '^(%d+):(%d+)$')
    epoch, blocked_until = e, tonumber(b) or 0
  elseif string.sub(f, 1, 1) == 'q' then
    local s = tonumber(string.sub(f, 2))
    if s == nil or n <= 0 or ends(bucket(s)) <= now then
      dead[#dead + 1] = f
    else
      reserved[s] = n
      rs[#rs + 1] = s
      if s > now then future = true else used = used + n end
      local e = ends(bucket(s))
      if reset < 0 or e < reset then reset = e end
      if e > newest then newest = e end
    end
  else
    local b = tonumber(f)
    if b == nil or n <= 0 or ends(b) <= now then
      dead[#dead + 1] = f
    else
      taken[b] = n
      tb[#tb + 1] = b
      used = used + n
      local e = ends(b)
      if reset < 0 or e < reset then reset = e end
      if e > newest then newest = e end
    end
  end
end
for i = 1, #dead, 500 do
  redis.call('HDEL', key, unpack(dead, i, math.min(i + 499, #dead)))
end
if reset >= 0 then reset = reset - now else reset = 0 end

-- The instance's incarnation, and the end of its settling after a loss.
local instance, settle_until = '', 0
if KEYS[2] then
  local v = redis.call('GET', KEYS[2])
  if v then
    local e, u = string.match(v, '^(%d+):(%d+)$')
    instance, settle_until = e or '', tonumber(u) or 0
  else
    instance = t[1] .. string.format('%06d', tonumber(t[2]))
    if (ARGV[11] or '') ~= '' then settle_until = now + (tonumber(ARGV[12]) or 0) end
    redis.call('SET', KEYS[2], instance .. ':' .. fmt(settle_until))
  end
end

local known = ARGV[10] or ''
if known ~= '' and not peek and epoch ~= known then
  return {0, 0, 0, 0, 0, 0, now, epoch or '', 0, 0, 0, 0, 1, instance}
end

local cur = bucket(now)
if settle_until > now then
  -- Redis lost its data moments ago and replicas are writing their counts
  -- back: until they are in, no slot can be placed safely, not even for
  -- later. The caller asks again when the settling ends (blocked = 2).
  local d = settle_until - now
  return {0, 0, d, d, 2, cur, now, epoch or '', 0, 0, 0, 0, 0, instance}
end
local gate = blocked_until
local is_blocked = gate > now
local lease = hold > 0 and not peek
local take_at = cur
if lease then take_at = bucket(now + hold) end

-- The key lives as long as its newest count (or a block) does: an idle
-- token costs nothing once its window has passed. Its TTL was set to the
-- newest live count's end (newest) or the block's, whichever is later.
local function keep(e)
  if epoch == nil then
    epoch = t[1] .. string.format('%06d', tonumber(t[2]))
    redis.call('HSET', key, 'm', epoch .. ':' .. fmt(blocked_until))
  end
  if e > newest and e > blocked_until then
    redis.call('PEXPIRE', key, e - now)
    newest = e
  end
end

local function grant(room)
  if not lease then return 1 end
  return math.max(1, math.min(math.max(want, 1), math.floor(room / 16)))
end

-- reset_with: ResetAfter once a count ending at e was placed (reset is 0
-- when nothing counted before: every live count ends after now).
local function reset_with(e)
  if reset == 0 or e - now < reset then return e - now end
  return reset
end

local function take(at, k, remaining)
  redis.call('HINCRBY', key, fmt(at), k)
  keep(ends(at))
  reset = reset_with(ends(at))
  local usable = (cur + 1) * width - now
  if lease then usable = hold end
  local granted = 0
  if lease then granted = k end
  return {1, remaining, 0, reset, 0, at, now, epoch, granted, 0, usable, 0, 0, instance}
end

if not future and not is_blocked and notbefore == 0 then
  -- Nothing is reserved for later: count only falls from now on, so what
  -- counts now is the most that ever will.
  local room = limit - used
  if peek then return {0, math.max(room, 0), 0, reset, 0, cur, now, epoch or '', 0, 0, 0, 0, 0, instance} end
  if room >= 1 then
    local k = grant(room)
    return take(take_at, k, room - k)
  end
end

-- The profile: count(t) for t >= now as steps (from[i], val[i]).
local delta, times = {}, {}
local function change(at, d)
  if delta[at] == nil then
    delta[at] = 0
    times[#times + 1] = at
  end
  delta[at] = delta[at] + d
end
for _, b in ipairs(tb) do change(ends(b), -taken[b]) end
for _, s in ipairs(rs) do
  if s > now then change(s, reserved[s]) end
  change(ends(bucket(s)), -reserved[s])
end
table.sort(times)
local from, val = {now}, {used}
for _, at in ipairs(times) do
  if at == from[#from] then
    val[#val] = val[#val] + delta[at]
  else
    from[#from + 1] = at
    val[#val + 1] = val[#val] + delta[at]
  end
end
local INF = 4e18

-- max_with: the most slots occupied in [lo, hi), with k more over [ps, pe).
local function max_with(lo, hi, ps, pe, k)
  local m = 0
  for i = 1, #from do
    local a, z = from[i], INF
    if i < #from then z = from[i + 1] end
    if a < lo then a = lo end
    if z > hi then z = hi end
    if a < z then
      local v = val[i]
      if math.max(a, ps) < math.min(z, pe) then v = v + k end
      if v > m then m = v end
    end
  end
  return m
end

-- earliest: the first moment at or after x at which one more slot can
-- start and stay below the limit until its end.
local function earliest(x)
  local s = x
  for i = 1, #from do
    if val[i] >= limit then
      local z = INF
      if i < #from then z = from[i + 1] end
      if z > s then
        if from[i] >= ends(bucket(s)) then break end
        s = z
      end
    end
  end
  return s
end

local remaining, blocked_flag, start_from = 0, 0, now
if is_blocked then
  reset, start_from = gate - now, gate
  if blocked_until > now then blocked_flag = 1 end
else
  remaining = math.max(limit - max_with(now, ends(cur), 0, 0, 0), 0)
end
if peek then
  local retry = 0
  if is_blocked then retry = reset end
  return {0, remaining, retry, reset, blocked_flag, cur, now, epoch or '', 0, 0, 0, 0, 0, instance}
end
if not is_blocked and notbefore == 0 then
  local room = limit - max_with(now, ends(take_at), 0, 0, 0)
  if room >= 1 then
    local k = grant(room)
    return take(take_at, k, math.max(limit - max_with(now, ends(cur), now, ends(take_at), k), 0))
  end
end
local start = earliest(math.max(start_from, now + notbefore))
if start - now > wait and notbefore > 0 then
  -- No slot from the smoothing turn on fits in the wait: an earlier one
  -- does better than a refusal.
  start = earliest(start_from)
end
if start - now > wait then
  return {0, remaining, earliest(start_from) - now, reset, blocked_flag, cur, now, epoch or '', 0, 0, 0, 0, 0, instance}
end
if start == now then
  -- Free now (only reached when the smoothing turn was given up).
  return take(cur, 1, math.max(limit - max_with(now, ends(cur), now, ends(cur), 1), 0))
end
local b = bucket(start)
redis.call('HINCRBY', key, 'q' .. fmt(start), 1)
keep(ends(b))
if not is_blocked then
  remaining = math.max(limit - max_with(now, ends(cur), start, ends(b), 1), 0)
  reset = reset_with(ends(b))
end
return {1, remaining, 0, reset, blocked_flag, start, now, epoch, 0, start - now, (b + 1) * width - now, 1, 0, instance}
