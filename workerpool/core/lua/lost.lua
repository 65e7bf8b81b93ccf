-- KEYS: running, live, states. ARGV: heartbeat key prefix, step key prefix.
-- Running steps whose worker instance no longer heartbeats. First, the pool's live index drops
-- the instances whose last heartbeat has expired (score before now, on Redis's clock), and
-- their states: they are Offline, and a worker that beats again is put back by its beat.
local now = redis.call('TIME')
local before = string.format('(%d', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', before)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', before)
  for i = 1, #expired, 1000 do  -- unpack's stack is bounded
    redis.call('HDEL', KEYS[3], unpack(expired, i, math.min(i + 999, #expired)))
  end
end
local lost = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local f = redis.call('HMGET', ARGV[2] .. id, 'instance', 'worker', 'retry', 'attempt', 'queue',
                       'name', 'pool_name', 'lease_timeout', 'target', 'priority')
  if f[1] and redis.call('EXISTS', ARGV[1] .. f[1]) == 0 then
    lost[#lost + 1] = {id, f[1], f[2] or '', f[3] or '0', f[4] or '0', f[5] or '', f[6] or '',
                       f[7] or '', f[8] or '0', f[9] or '', f[10] or 'normal'}
  elseif not f[1] then
    redis.call('ZREM', KEYS[1], id)
  end
end
return lost
