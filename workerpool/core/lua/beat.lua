-- KEYS: heartbeat, live, states, and for a heartbeat turn the pool's reaper lock. ARGV:
-- heartbeat JSON, ttl ms, instance, state, the reaper lock's expiry in ms ('' for no try),
-- then the records of the steps the worker runs (only read: arguments, not KEYS, as a
-- worker's login may only read them).
-- A worker's heartbeat and its entry in the pool's live index, in one call: the heartbeat
-- expires after the ttl, and the index scores the instance with that same moment on Redis's
-- clock, with the state the heartbeat gives beside it. A heartbeat turn also tries the pool's
-- reaper lock and reads the state, holder and cancel flag of each step the worker runs, so
-- the worker's whole turn is this one call: {1 if the lock was taken, else 0, those rows}.
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local now = redis.call('TIME')
local expires = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], string.format('%d', expires), ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[4])
local locked = 0
if ARGV[5] ~= '' and redis.call('SET', KEYS[4], '1', 'NX', 'PX', ARGV[5]) then locked = 1 end
local rows = {}
for i = 6, #ARGV do
  local f = redis.call('HMGET', ARGV[i], 'state', 'instance', 'cancel')
  rows[#rows + 1] = {f[1] or '', f[2] or '', f[3] or ''}
end
return {locked, rows}
