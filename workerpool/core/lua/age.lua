-- KEYS: a queue's high, normal and low lists. ARGV: now, aging seconds, step key prefix.
-- Moves each step that has waited (since its record's queued_at) aging seconds or more from
-- the consuming end of the normal and low lists to the far end of the high list: behind the
-- high steps waiting now, ahead of any enqueued later. A list's consuming end holds its oldest
-- steps, so the scan of a list stops at its first step that has not waited that long, or at
-- an entry it cannot read (a worker's guard drops that one when it takes it).
local now, aging, moved = tonumber(ARGV[1]), tonumber(ARGV[2]), 0
for i = 2, 3 do
  for _ = 1, 1000 do
    local entry = redis.call('LINDEX', KEYS[i], -1)
    if not entry then break end
    local ok, message = pcall(cjson.decode, entry)
    local id = ok and type(message) == 'table' and type(message.headers) == 'table'
      and message.headers.id
    if type(id) ~= 'string' then break end
    local step = string.match(id, '^(.+)%-r%d+$') or id
    local queued = tonumber(redis.call('HGET', ARGV[3] .. step, 'queued_at'))
    if not queued or now - queued < aging then break end
    redis.call('LMOVE', KEYS[i], KEYS[1], 'RIGHT', 'LEFT')
    moved = moved + 1
  end
end
return moved
