-- KEYS: pools, default-pool, the pool's workers, queue. ARGV: slug.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 'missing' end
if redis.call('GET', KEYS[2]) == ARGV[1] then return 'default' end
if redis.call('HLEN', KEYS[3]) > 0 then return 'has-workers' end
if redis.call('LLEN', KEYS[4]) > 0 then return 'has-steps' end
redis.call('HDEL', KEYS[1], ARGV[1])
return 'ok'
