-- KEYS: pools, default-pool, the pool's workers, queue, its live index, its states. ARGV: slug.
-- The live index goes with the pool (no registered worker is left to be in it).
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 'missing' end
if redis.call('GET', KEYS[2]) == ARGV[1] then return 'default' end
if redis.call('HLEN', KEYS[3]) > 0 then return 'has-workers' end
if redis.call('LLEN', KEYS[4]) > 0 then return 'has-steps' end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[5], KEYS[6])
return 'ok'
