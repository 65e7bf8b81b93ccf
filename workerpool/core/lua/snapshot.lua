-- KEYS: none. ARGV: default slug, default pool JSON, detail ('1': queue counts + leases), pool
-- queue prefix, pool space prefix ("workerpool:pool:{"), target pool prefix ("target:"), then
-- the keys: pools, default-pool, builtin-disabled, targets, built-in queue, pools' public keys
-- (returned too: a client seals to one), then the dead letters' prefix ("workerpool:dead:"),
-- then the suffix of kombu's unacked hash in a space ("kombu:unacked"), then the suffixes of
-- a queue's high and low lists (":high", ":low"). They are arguments,
-- not KEYS: Redis checks a script's KEYS for writing, and a runner's login may only read the
-- pools (each call below is checked for what it does).
local POOLS, DEFAULT, DISABLED, TARGETS, BUILTIN_QUEUE, POOL_KEYS = ARGV[7], ARGV[8], ARGV[9],
                                                                   ARGV[10], ARGV[11], ARGV[12]
-- Everything routing or status needs in one call, creating the default pool if there is none:
-- pools, and the workers (with heartbeats) and leases of every pool, of the built-in worker
-- and of every target's agent, each read from its own space.
if redis.call('EXISTS', DEFAULT) == 0 then
  redis.call('HSETNX', POOLS, ARGV[1], ARGV[2])
  redis.call('SET', DEFAULT, ARGV[1])
end
local pools = redis.call('HGETALL', POOLS)
local spaces = {}
for i = 1, #pools, 2 do spaces[#spaces + 1] = pools[i] end
spaces[#spaces + 1] = 'builtin'
for _, slug in ipairs(redis.call('HKEYS', TARGETS)) do spaces[#spaces + 1] = ARGV[6] .. slug end
local workers, beats, depths, leases, faults = {}, {}, {}, {}, {}
for _, pool in ipairs(spaces) do
  local space = ARGV[5] .. pool .. '}:'
  local found = redis.call('HGETALL', space .. 'workers')
  for i = 2, #found, 2 do
    workers[#workers + 1] = found[i]
    beats[#beats + 1] = redis.call('GET', space .. 'hb:' .. cjson.decode(found[i])['instance'])
                        or ''
  end
  if ARGV[3] == '1' then
    -- messages the pool's workers dropped as malformed, and its dead letters
    faults[#faults + 1] = {pool, tonumber(redis.call('GET', space .. 'dropped') or '0'),
                           redis.call('LLEN', ARGV[13] .. pool)}
    for _, id in ipairs(redis.call('ZRANGE', space .. 'running', 0, -1)) do
      local f = redis.call('HMGET', space .. 'step:' .. id, 'worker', 'pool', 'started_at',
                           'name')
      leases[#leases + 1] = {id, f[1] or '', f[2] or '', f[3] or '', f[4] or ''}
    end
  end
end
-- Per pool and the built-in worker: the messages in its queue, its Queued step records, and
-- the messages its workers hold (kombu's unacked hash): records beyond both lost their message.
local function counts(queue, pool)
  local space = ARGV[5] .. pool .. '}:'
  local messages = redis.call('LLEN', queue) + redis.call('LLEN', queue .. ARGV[15])
    + redis.call('LLEN', queue .. ARGV[16])
  return {messages, redis.call('ZCARD', space .. 'pending'),
          redis.call('HLEN', space .. ARGV[14])}
end
if ARGV[3] == '1' then
  for i = 1, #pools, 2 do
    depths[#depths + 1] = counts(ARGV[4] .. pools[i], pools[i])
  end
  depths[#depths + 1] = counts(BUILTIN_QUEUE, 'builtin')
end
return {pools, redis.call('GET', DEFAULT), redis.call('EXISTS', DISABLED), workers, beats,
        depths, leases, redis.call('HGETALL', POOL_KEYS), faults}
