-- KEYS: workers, heartbeat key. ARGV: name, instance. Removes the record only if still ours.
redis.call('DEL', KEYS[2])
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw and cjson.decode(raw)['instance'] == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
