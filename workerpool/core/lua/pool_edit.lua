-- KEYS: pools, default-pool, the pool's workers, old queue, its live index, its states. ARGV:
-- old slug, new slug, JSON, make_default. A rename that changes the slug needs a pool with no
-- registered worker and no queued step; the old slug's live index goes with it.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 'missing' end
if ARGV[1] ~= ARGV[2] then
  if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then return 'exists' end
  if redis.call('HLEN', KEYS[3]) > 0 then return 'has-workers' end
  if redis.call('LLEN', KEYS[4]) > 0 then return 'has-steps' end
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[5], KEYS[6])
  if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('SET', KEYS[2], ARGV[2]) end
end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
if ARGV[4] == '1' then redis.call('SET', KEYS[2], ARGV[2]) end
return 'ok'
