-- KEYS: step, its queue's list of its priority. ARGV: attempt, message. Puts a message back at
-- the head of that list (consumers BRPOP from the right) while the step still waits for it; a
-- stale one is dropped.
local st = redis.call('HMGET', KEYS[1], 'state', 'attempt')
if st[1] ~= 'Queued' or st[2] ~= ARGV[1] then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
