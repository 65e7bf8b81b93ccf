-- KEYS: step, pending, the queue's list of the step's priority. ARGV: deadline, step id, message,
-- then the record's fields.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[3])
return 1
