-- KEYS: step, running, pending. ARGV: attempt, worker name, instance, now, worker's pool, step
-- id, claim token, the pools hash (read only to a worker, so not a declared key: Redis's ACL
-- checks those for writing). A paused pool's steps are not claimed, nor one past its pool's
-- max_running (the running set counts across all its workers, so the cap is exact). The token (new for each
-- delivery) makes a retried claim safe: if the first call was applied but its reply lost with
-- the connection, the retry finds its own token.
local st = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'pool', 'claim')
if not st[1] then return {'gone', ''} end
if st[1] == 'Running' and st[4] == ARGV[7] then return {'ok', redis.call('HGETALL', KEYS[1])} end
if st[1] ~= 'Queued' or st[2] ~= ARGV[1] then return {'stale', st[1]} end
if st[3] ~= ARGV[5] then return {'wrong-pool', st[3]} end
local pool = redis.call('HGET', ARGV[8], ARGV[5])
if pool then
  pool = cjson.decode(pool)
  if pool['paused'] then return {'paused', st[1]} end
  local cap = tonumber(pool['max_running']) or 0
  if cap > 0 and redis.call('ZCARD', KEYS[2]) >= cap then return {'capped', st[1]} end
end
redis.call('HSET', KEYS[1], 'state', 'Running', 'worker', ARGV[2], 'instance', ARGV[3],
           'started_at', ARGV[4], 'claim', ARGV[7])
redis.call('HDEL', KEYS[1], 'missing_since')  -- a reaper's note that its message was missing
redis.call('ZREM', KEYS[3], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[6])
return {'ok', redis.call('HGETALL', KEYS[1])}
