-- KEYS: workers, heartbeat key, live, states. ARGV: name, instance. Removes the heartbeat and
-- the instance's entry in the live index, and the record only if still ours.
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw and cjson.decode(raw)['instance'] == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
