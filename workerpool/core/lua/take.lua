-- KEYS: the fence, the deployments queue, the active set. ARGV: the server's token.
-- The oldest queued deployment, moved into the active set in the same step (so no server that
-- dies between the two loses it); nil if none is queued; -1, taking nothing, if the token is
-- not the newest (another server leads).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local id = redis.call('RPOP', KEYS[2])
if id then redis.call('SADD', KEYS[3], id) end
return id
