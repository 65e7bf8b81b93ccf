-- KEYS: none. ARGV: mode ('pool': the step names a pool, 'default': it names none, 'server':
-- it runs on the server), the named pool's slug (mode 'pool'), the default pool's slug and
-- JSON (made if there is no default pool), pool space prefix ("workerpool:pool:{"), then the
-- keys: pools, default-pool, builtin-disabled, pools' public keys. Arguments, not KEYS, as in
-- snapshot.lua: a runner's login may only read the pools.
--
-- What routing one step needs, and nothing of any other pool: the step's pool's record, the
-- default pool's, the built-in worker's switch, the live workers of the step's pool (and of
-- the built-in worker when the step may go to it: --server, or no pool named and the default
-- pool has no live worker), and the public keys of those two. A worker is live while its
-- instance's score in its pool's live index (when its last heartbeat expires) is not past.
local MODE, POOLS, DEFAULT, DISABLED, POOL_KEYS = ARGV[1], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
if redis.call('EXISTS', DEFAULT) == 0 then
  redis.call('HSETNX', POOLS, ARGV[3], ARGV[4])
  redis.call('SET', DEFAULT, ARGV[3])
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)

-- The records of a pool's live workers, each with its heartbeat ('' if it expired just now).
local function live(pool)
  local space = ARGV[5] .. pool .. '}:'
  local instances = redis.call('ZRANGEBYSCORE', space .. 'live', string.format('%d', now_ms),
                               '+inf')
  if #instances == 0 then return {} end
  local is_live = {}
  for _, instance in ipairs(instances) do is_live[instance] = true end
  local found = {}
  for _, raw in ipairs(redis.call('HVALS', space .. 'workers')) do
    local ok, record = pcall(cjson.decode, raw)
    local instance = ok and type(record) == 'table' and record['instance']
    if type(instance) == 'string' and is_live[instance] then
      found[#found + 1] = {raw, redis.call('GET', space .. 'hb:' .. instance) or ''}
    end
  end
  return found
end

local default = redis.call('GET', DEFAULT)
local chosen = MODE == 'pool' and ARGV[2] or MODE == 'default' and default or ''
local record = chosen ~= '' and redis.call('HGET', POOLS, chosen) or false
local workers = record and live(chosen) or {}
local builtin = {}
if MODE == 'server' or (MODE == 'default' and #workers == 0) then builtin = live('builtin') end
local public = redis.call('HMGET', POOL_KEYS, chosen ~= '' and chosen or 'builtin', 'builtin')
return {default, redis.call('HGET', POOLS, default), chosen, record, redis.call('EXISTS', DISABLED),
        workers, builtin, public}
