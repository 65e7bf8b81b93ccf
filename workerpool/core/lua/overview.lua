-- KEYS: none. ARGV: default slug, default pool JSON, only ('' for every pool, or one slug: that
-- pool alone, 'builtin' the built-in worker alone), pool queue prefix, pool space prefix
-- ("workerpool:pool:{"), target pool prefix ("target:"), then the keys: pools, default-pool,
-- builtin-disabled, targets, built-in queue, then the dead letters' prefix, the suffix of
-- kombu's unacked hash in a space, and the suffixes of a queue's high and low lists. They are
-- arguments, not KEYS, as in snapshot.lua: a runner's login may only read the pools.
--
-- What `status` and `pool list` show, in one call whose cost grows with the pools and the
-- running steps, never with the workers: per pool (and the built-in worker, and each target's
-- agent) its registered workers (HLEN), its live ones counted by state (the pool's live
-- index), its waiting work and its running steps; with one pool asked for, also its dropped
-- messages and dead letters (with every pool, those of pools with waiting or running steps)
-- and its workers one by one.
local POOLS, DEFAULT, DISABLED, TARGETS, BUILTIN_QUEUE = ARGV[7], ARGV[8], ARGV[9], ARGV[10],
                                                         ARGV[11]
if redis.call('EXISTS', DEFAULT) == 0 then
  redis.call('HSETNX', POOLS, ARGV[1], ARGV[2])
  redis.call('SET', DEFAULT, ARGV[1])
end
local pools
if ARGV[3] == '' then
  pools = redis.call('HGETALL', POOLS)
elseif ARGV[3] == 'builtin' then
  pools = {}
else
  local record = redis.call('HGET', POOLS, ARGV[3])
  pools = record and {ARGV[3], record} or {}
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)

local function section(pool, queue)
  local space = ARGV[5] .. pool .. '}:'
  -- The index's two keys hold the same instances (register, beat, deregister and the
  -- reaper write both in one call), so with no lapsed entry the states hash is the live
  -- workers' states: read whole, without listing the live members.
  local states
  if redis.call('ZCOUNT', space .. 'live', '-inf', string.format('(%d', now_ms)) == 0 then
    states = redis.call('HVALS', space .. 'states')
  else
    local live = redis.call('ZRANGEBYSCORE', space .. 'live', now_ms, '+inf')
    states = #live > 0 and redis.call('HMGET', space .. 'states', unpack(live)) or {}
  end
  local tally, counted = {}, {}  -- state -> live workers in it, returned as flat pairs
  for _, state in ipairs(states) do
    if state then tally[state] = (tally[state] or 0) + 1 end
  end
  for state, n in pairs(tally) do
    counted[#counted + 1] = state
    counted[#counted + 1] = n
  end
  -- With every pool read, a pool with neither Queued nor running steps (most are) costs one
  -- EXISTS: it has no waiting work to count, and what only one pool's view shows (messages
  -- without a record, dropped ones, dead letters) is read for the one pool asked for.
  local busy = ARGV[3] ~= '' or redis.call('EXISTS', space .. 'pending', space .. 'running') > 0
  local messages, held, pending, dropped, dead = 0, 0, 0, 0, 0
  local leases = {}
  if busy then
    if queue then
      messages = redis.call('LLEN', queue) + redis.call('LLEN', queue .. ARGV[14])
        + redis.call('LLEN', queue .. ARGV[15])
      held = redis.call('HLEN', space .. ARGV[13])
    end
    pending = redis.call('ZCARD', space .. 'pending')
    dropped = tonumber(redis.call('GET', space .. 'dropped') or '0')
    dead = redis.call('LLEN', ARGV[12] .. pool)
    for _, id in ipairs(redis.call('ZRANGE', space .. 'running', 0, -1)) do
      local f = redis.call('HMGET', space .. 'step:' .. id, 'worker', 'pool', 'started_at',
                           'name')
      leases[#leases + 1] = {id, f[1] or '', f[2] or '', f[3] or '', f[4] or ''}
    end
  end
  local members = {}  -- with one pool asked for: its workers' records and heartbeats
  if ARGV[3] ~= '' then
    local found = redis.call('HGETALL', space .. 'workers')
    for i = 2, #found, 2 do
      members[#members + 1] = {found[i], redis.call('GET', space .. 'hb:'
                               .. cjson.decode(found[i])['instance']) or ''}
    end
  end
  return {pool, redis.call('HLEN', space .. 'workers'), counted, messages, pending, held,
          dropped, dead, leases, members}
end

local sections = {}
for i = 1, #pools, 2 do sections[#sections + 1] = section(pools[i], ARGV[4] .. pools[i]) end
if ARGV[3] == '' or ARGV[3] == 'builtin' then
  sections[#sections + 1] = section('builtin', BUILTIN_QUEUE)
end
if ARGV[3] == '' then
  for _, slug in ipairs(redis.call('HKEYS', TARGETS)) do
    sections[#sections + 1] = section(ARGV[6] .. slug, false)
  end
end
return {pools, redis.call('GET', DEFAULT), redis.call('EXISTS', DISABLED), sections}
