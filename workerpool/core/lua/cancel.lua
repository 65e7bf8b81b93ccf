-- KEYS: step. Marks a running step for cancellation; reports where it is.
local st = redis.call('HMGET', KEYS[1], 'state', 'instance')
if not st[1] then return {'gone', ''} end
if st[1] == 'Running' then redis.call('HSET', KEYS[1], 'cancel', '1') end
return {st[1], st[2] or ''}
