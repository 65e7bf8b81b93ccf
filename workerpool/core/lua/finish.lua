-- KEYS: step, log, running, pending, the pool's ended tally, its durations histogram. ARGV:
-- instance ('' = any holder), expected states (",A,B,"), new state, exit code or '', outputs
-- JSON or '', now, message, ttl seconds, step id, the pools hash, the pool's slug and control
-- channel, the histogram's bucket bounds ("0.1,0.5,..."), then the script's last log lines as
-- (time, stream, text) triples.
-- The one way a step reaches a terminal state: stored, logged, lease released, end marked,
-- counted. The last lines are stored whatever the state (as a separate flush would), so they
-- are never lost.
local st = redis.call('HMGET', KEYS[1], 'state', 'instance', 'notify', 'started_at')
if not st[1] then return 0 end
if st[1] == ARGV[3] and ARGV[1] ~= '' and st[2] == ARGV[1] then return 1 end  -- a retry of ours
for i = 14, #ARGV, 3 do
  redis.call('XADD', KEYS[2], '*', 't', ARGV[i], 's', ARGV[i + 1], 'x', ARGV[i + 2])
end
if not string.find(ARGV[2], ',' .. st[1] .. ',', 1, true) then return 0 end
if ARGV[1] ~= '' and st[2] ~= ARGV[1] then return 0 end
local fields = {'state', ARGV[3], 'finished_at', ARGV[6], 'message', ARGV[7]}
if ARGV[4] ~= '' then fields[#fields + 1] = 'exit_code'; fields[#fields + 1] = ARGV[4] end
if ARGV[5] ~= '' then fields[#fields + 1] = 'outputs'; fields[#fields + 1] = ARGV[5] end
redis.call('HSET', KEYS[1], unpack(fields))
if ARGV[7] ~= '' then
  redis.call('XADD', KEYS[2], '*', 't', ARGV[6], 's', 'system', 'x', ARGV[7])
end
redis.call('XADD', KEYS[2], '*', 'end', ARGV[3])
-- Prometheus's counter and histogram live here, not in a process: any server reads the same.
redis.call('HINCRBY', KEYS[5], ARGV[3], 1)
if st[4] then  -- it ran: its running time, in the first bucket that holds it
  local took = math.max(0, tonumber(ARGV[6]) - (tonumber(st[4]) or tonumber(ARGV[6])))
  local bucket = '+Inf'
  for bound in string.gmatch(ARGV[13], '[^,]+') do
    if took <= tonumber(bound) then bucket = bound; break end
  end
  redis.call('HINCRBY', KEYS[6], 'le:' .. bucket, 1)
  redis.call('HINCRBYFLOAT', KEYS[6], 'sum', took)
  redis.call('HINCRBY', KEYS[6], 'count', 1)
end
local notify = st[3]
if notify then
  redis.call('LPUSH', notify, ARGV[9])
  redis.call('EXPIRE', notify, ARGV[8])
end
local was_running = redis.call('ZREM', KEYS[3], ARGV[9])
redis.call('ZREM', KEYS[4], ARGV[9])
if was_running == 1 then
  -- A capped pool's workers hear that a slot under its cap is free, when this end takes the
  -- pool from its cap to below it: only then can a worker be waiting for one.
  local pool = redis.call('HGET', ARGV[10], ARGV[11])
  local cap = pool and (tonumber(cjson.decode(pool)['max_running']) or 0) or 0
  if cap > 0 and redis.call('ZCARD', KEYS[3]) == cap - 1 then
    redis.call('PUBLISH', ARGV[12], 'freed')
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[8])
redis.call('EXPIRE', KEYS[2], ARGV[8])
return 1
