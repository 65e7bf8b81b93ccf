-- KEYS: step, pending, the queue's list of the step's priority, and from a server the fence.
-- ARGV: deadline, step id, message, the server's token ('' from a client, which names no fence),
-- then the record's fields.
-- Returns 1; 0 if the step exists (nothing written); -1, writing nothing, if a token is given
-- and is not the newest (another server leads).
if ARGV[4] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[4] then return -1 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[3])
return 1
