-- KEYS: pools, default-pool. ARGV: slug, JSON, make_default ('1'/'0').
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return 'exists' end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[3] == '1' then redis.call('SET', KEYS[2], ARGV[1]) end
return 'ok'
