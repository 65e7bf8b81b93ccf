-- KEYS: step, running, pending, the queue's list of the step's priority, log. ARGV: dead
-- instance, now, deadline, message, note, step id. Puts a lost step back in its queue once, if
-- it opted in.
local st = redis.call('HMGET', KEYS[1], 'state', 'instance', 'retry', 'attempt')
if st[1] ~= 'Running' or st[2] ~= ARGV[1] or st[3] ~= '1' or st[4] ~= '0' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'Queued', 'attempt', '1', 'deadline', ARGV[3])
redis.call('HDEL', KEYS[1], 'worker', 'instance', 'started_at')
redis.call('ZREM', KEYS[2], ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[6])
redis.call('LPUSH', KEYS[4], ARGV[4])
redis.call('XADD', KEYS[5], '*', 't', ARGV[2], 's', 'system', 'x', ARGV[5])
return 1
