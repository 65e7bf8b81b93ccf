-- KEYS: pending. ARGV: seconds. Moves every waiting step's lease deadline on by that long (a
-- pool resumed after a pause: its steps do not run out their lease timeout while it was).
local delta = tonumber(ARGV[1])
if delta <= 0 then return 0 end
local ids = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #ids, 2 do
  redis.call('ZADD', KEYS[1], tonumber(ids[i + 1]) + delta, ids[i])
end
return #ids / 2
