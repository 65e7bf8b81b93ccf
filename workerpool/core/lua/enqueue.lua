-- KEYS: step, pending, the queue's list of the step's priority, the pool's recent index, and
-- from a server the fence.
-- ARGV: deadline, step id, message, the server's token ('' from a client, which names no fence),
-- queued time, the recent index's cap, then the record's fields.
-- Returns 1; 0 if the step exists (nothing written); -1, writing nothing, if a token is given
-- and is not the newest (another server leads).
if ARGV[4] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[4] then return -1 end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
redis.call('LPUSH', KEYS[3], ARGV[3])
-- Capped here, one step in and at most one out, so the index costs the same at any backlog.
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -(tonumber(ARGV[6]) + 1))
return 1
