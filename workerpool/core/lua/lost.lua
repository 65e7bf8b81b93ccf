-- KEYS: running. ARGV: heartbeat key prefix, step key prefix.
-- Running steps whose worker instance no longer heartbeats.
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
