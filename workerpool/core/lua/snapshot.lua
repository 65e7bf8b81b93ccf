-- KEYS: pools, default-pool, builtin-disabled, workers, running, built-in queue.
-- ARGV: default slug, default pool JSON, heartbeat key prefix, detail ('1': queue depths + leases),
-- pool queue prefix, step key prefix.
-- Everything routing or status needs in one call, creating the default pool if there is none.
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
  redis.call('SET', KEYS[2], ARGV[1])
end
local pools = redis.call('HGETALL', KEYS[1])
local workers = redis.call('HGETALL', KEYS[4])
local beats = {}
for i = 2, #workers, 2 do
  beats[#beats + 1] = redis.call('GET', ARGV[3] .. cjson.decode(workers[i])['instance']) or ''
end
local depths, leases = {}, {}
if ARGV[4] == '1' then
  for i = 1, #pools, 2 do
    depths[#depths + 1] = redis.call('LLEN', ARGV[5] .. pools[i])
  end
  depths[#depths + 1] = redis.call('LLEN', KEYS[6])
  for _, id in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do
    local f = redis.call('HMGET', ARGV[6] .. id, 'worker', 'pool', 'started_at', 'name')
    leases[#leases + 1] = {id, f[1] or '', f[2] or '', f[3] or '', f[4] or ''}
  end
end
return {pools, redis.call('GET', KEYS[2]), redis.call('EXISTS', KEYS[3]), workers, beats,
        depths, leases}
