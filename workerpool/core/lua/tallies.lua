-- KEYS: none. ARGV: how many Queued steps to look at for the oldest, then per pool its ended
-- tally, its durations histogram, its pending set and its step key prefix. They are arguments,
-- not KEYS: the script only reads, and Redis checks a script's KEYS for writing.
-- Redis's clock, then per pool: its ended tally and durations (flat), and the queued_at of its
-- oldest Queued step ('' if none) among those with the nearest lease deadlines.
local found = {redis.call('TIME')}
local scan = tonumber(ARGV[1])
for i = 2, #ARGV, 4 do
  local oldest = nil
  for _, id in ipairs(redis.call('ZRANGE', ARGV[i + 2], 0, scan - 1)) do
    local at = tonumber(redis.call('HGET', ARGV[i + 3] .. id, 'queued_at'))
    if at and (oldest == nil or at < oldest) then oldest = at end
  end
  found[#found + 1] = {redis.call('HGETALL', ARGV[i]), redis.call('HGETALL', ARGV[i + 1]),
                       oldest and string.format('%.6f', oldest) or ''}
end
return found
