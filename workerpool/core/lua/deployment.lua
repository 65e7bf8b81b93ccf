-- KEYS: the fence, the deployment's record, the active set, then keys to delete.
-- ARGV: the server's token, the deployment id, '+', '-' or '' (add it to the active set, remove
-- it, or neither), then the record's fields to set, name and value.
-- Returns 1; or -1, writing nothing, if the token is not the newest (another server leads).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if #ARGV > 3 then redis.call('HSET', KEYS[2], unpack(ARGV, 4)) end
if ARGV[3] == '+' then
  redis.call('SADD', KEYS[3], ARGV[2])
elseif ARGV[3] == '-' then
  redis.call('SREM', KEYS[3], ARGV[2])
end
for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
