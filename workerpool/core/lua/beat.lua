-- KEYS: heartbeat, live, states. ARGV: heartbeat JSON, ttl ms, instance.
-- A worker's heartbeat and its entry in the pool's live index, in one call: the heartbeat
-- expires after the ttl, and the index scores the instance with that same moment on Redis's
-- clock, with the state the heartbeat gives beside it.
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local now = redis.call('TIME')
local expires = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], string.format('%d', expires), ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], cjson.decode(ARGV[1])['state'])
return 1
